"""Monitors as assets: `<catalogue>/<monitor>` per entry of the spec's `monitors:` (job `<catalogue>_<monitor>`).

Schedules and chained pipelines (`after:`) target them like any catalogue operation. Each materialization's
numeric metadata (detections per rule, mean observed price per source; for drift the quality score and fill
rates) is what the Dagster UI plots across runs.
"""


import dagster as dg

from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.spec.models import MonitorSpec


class MonitorConfig(dg.Config):
    filter: str | None = None


def _table(lines: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    def cell(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in lines]
    return "\n".join(out)


def build_monitor(name: str, mon: MonitorSpec) -> dg.AssetsDefinition:
    from claro_dagster.monitors import run_monitor

    catalogue = mon.catalogue
    what = ("watches prices: " + ", ".join(r.kind for r in mon.rules)) if mon.kind == "price" else \
        "compares fill rates, quality score and enum values with previous runs"

    @dg.asset(key=[catalogue, name], group_name=catalogue, kinds={"python"}, op_tags={"claro/monitor": name},
              description=mon.description or f"Monitor {name} of {catalogue}: {what}")
    def monitor(context: dg.AssetExecutionContext, config: MonitorConfig,
                claro: CatalogueResource) -> dg.MaterializeResult:
        result = run_monitor(claro.store, name, run_key=context.run_id, run_id=context.run_id, filter=config.filter,
                             logger=context.log)
        for problem in result.problems:
            context.log.warning(problem)
        per_rule: dict[str, int] = {}
        for d in result.new:  # what this run announced (an observation judged again is not counted twice)
            per_rule[d.rule] = per_rule.get(d.rule, 0) + 1
        metadata: dict[str, object] = {
            "records": result.records, "detections": len(result.new), "filter": config.filter or "",
            "detections_table": dg.MetadataValue.md(_table(
                [(d.rule, d.record or "", d.source, d.message) for d in result.new[:200]],
                ("rule", "record", "source", "what")) if result.new else "nothing new detected"),
        }
        rules = [r.kind for r in mon.rules] if mon.kind == "price" else ["score", "fill_rate", "new_value",
                                                                          "distribution"]
        metadata.update({f"detections/{r}": per_rule.get(r, 0) for r in dict.fromkeys(rules)})
        if mon.kind == "price":
            metadata["observations_added"] = result.observations_added
            metadata.update({f"mean_price/{s}": dg.MetadataValue.float(v) for s, v in result.mean_prices.items()})
        else:
            profile = result.profile
            metadata["baseline"] = result.baseline
            metadata["score"] = dg.MetadataValue.float(profile.score)
            metadata.update({f"fill_rate/{a}": dg.MetadataValue.float(v) for a, v in profile.fill_rates.items()})
        return dg.MaterializeResult(metadata=metadata)

    return monitor
