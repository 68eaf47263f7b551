"""Find Duplicates as an asset: `<catalogue>/dedupe`, scheduled or chained like the other catalogue operations."""

import dagster as dg

from claro_dagster.catalogue.duplicates import Duplicates
from claro_dagster.resources.catalogue import CatalogueResource


class DedupeConfig(dg.Config):
    filter: str | None = None  # compare only the records matching this record filter


def build_dedupe(catalogue: str, after: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(key=[catalogue, "dedupe"], group_name=catalogue, deps=after, kinds={"python"},
              description="Find Duplicates: block, score and cluster similar records; each pair becomes a merge "
                          "proposal in the review queue (`claro duplicates list`).")
    def dedupe(context: dg.AssetExecutionContext, config: DedupeConfig,
               claro: CatalogueResource) -> dg.MaterializeResult:
        duplicates = Duplicates(claro.store)
        result = duplicates.find(catalogue, run_id=context.run_id, filter=config.filter)
        context.log.info(result.summary())
        waiting = duplicates.list(catalogue)
        table = "\n".join(
            ["| proposal | survivor | duplicate | score |", "|---:|---|---|---:|",
             *(f"| {p.id} | {p.survivor} | {p.duplicate} | {p.score:g} |" for p in waiting[:20])])
        return dg.MaterializeResult(metadata={
            "records_compared": result.records, "new_proposals": result.proposed,
            "open_proposals": len(waiting), "filter": config.filter or "",
            "proposals": dg.MetadataValue.md(table if waiting else "no open merge proposals")})

    return dedupe
