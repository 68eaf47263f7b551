"""Bulk Enrichment as an asset per catalogue (`<catalogue>/enrich`), beside Analyse, Export and Validate."""

import dagster as dg

from claro_dagster.catalogue.enrichment import EnrichReport, rejected_lines, run_enrichment
from claro_dagster.operations.enrich import ModelUnavailable
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.resources.model_endpoint import ChatCompletionsClient


class EnrichConfig(dg.Config):
    filter: str | None = None
    attributes: list[str] | None = None  # default: every attribute with `enrich` methods
    dry_run: bool = False


def enrich_metadata(report: EnrichReport) -> dict:
    """Per-attribute counts (filled, queued, rejected) as asset metadata, one numeric entry each so the UI plots
    them across runs, plus the rejections' reasons."""
    totals = report.totals()
    metadata: dict = {
        "filled": totals.get("filled", 0), "queued": totals.get("queued", 0), "rejected": totals.get("rejected", 0),
        "wanted": totals.get("wanted", 0), "dry_run": report.dry_run,
        "change_sets": dg.MetadataValue.json(report.change_sets),
        "per_attribute": dg.MetadataValue.json(report.counts),
        "rejections": dg.MetadataValue.md("\n".join(f"- {line}" for line in rejected_lines(report)) or "none"),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes) or "none"),
        # the key the run-status sensor's review alert reads (as for `records`)
        "queued_for_review": 0 if report.dry_run else totals.get("queued", 0),
    }
    for attribute, counts in report.counts.items():
        for kind in ("filled", "queued", "rejected"):
            metadata[f"{kind}/{attribute}"] = counts.get(kind, 0)
    return metadata


def run_enrich(claro: CatalogueResource, catalogue: str, *, run_id: str, filter: str | None = None,
               attributes: list[str] | None = None, dry_run: bool = False, on_progress=None) -> EnrichReport:
    """Enrich a catalogue (the asset and `claro enrich` both come here)."""
    client = ChatCompletionsClient()
    try:
        return run_enrichment(claro.store, catalogue, run_id=run_id, filter=filter, attributes=attributes,
                              dry_run=dry_run, model=client, on_progress=on_progress)
    finally:
        client.close()


def build_enrich(catalogue: str, after: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(key=[catalogue, "enrich"], group_name=catalogue, deps=after, kinds={"python"},
              description="Bulk Enrichment: fill missing or weak values from each attribute's `enrich` methods "
                          "(rules, lookup, similar records, a model endpoint), with confidence and citations; "
                          "the gate applies, queues or rejects each value.")
    def enrich(context: dg.AssetExecutionContext, config: EnrichConfig,
               claro: CatalogueResource) -> dg.MaterializeResult:
        try:
            report = run_enrich(claro, catalogue, run_id=context.run_id, filter=config.filter,
                                attributes=config.attributes, dry_run=config.dry_run)
        except ModelUnavailable as exc:
            raise dg.Failure(description=f"{catalogue}/enrich: {exc}", allow_retries=False) from exc
        for note in report.notes:
            context.log.info(note)
        context.log.info(report.summary())
        return dg.MaterializeResult(metadata={**enrich_metadata(report), "filter": config.filter or ""})

    return enrich
