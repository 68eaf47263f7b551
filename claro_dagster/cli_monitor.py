"""`claro monitor run|show|history`: run a monitor now, and what the spec's monitors watch and found.

`show` and `history` read the catalogue store without Dagster, like the other listings: they answer at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

monitor_app = typer.Typer(help="Price and drift monitors (`monitors:` in the spec): what they watch and found.",
                          no_args_is_help=True)

SHOW_FIELDS = ("record", "our_price", "source", "competitor", "matched_by", "price", "gap_percent", "observed_at",
               "url")
DRIFT_FIELDS = ("figure", "now", "baseline", "change")
HISTORY_FIELDS = ("at", "what", "monitor", "source", "listing", "price", "rule", "message")
DETECTION_FIELDS = ("at", "rule", "record", "source", "message")


def _cli():
    from claro_dagster import cli  # the app's helpers (spec, store, output); cli imports this module at its end

    return cli


def _monitor(name: str):
    cli = _cli()
    spec = cli.ctx.spec()
    if name not in spec.monitors:
        from claro_dagster.spec.checks import unknown

        raise cli.user_error(unknown(name, spec.monitors, "a monitor of the spec", "monitors"))
    return spec.monitors[name]


def _round(value, places: int = 2):
    return None if value is None else round(float(value), places)


@monitor_app.command("show")
def monitor_show(monitor: str, record: Annotated[str | None, typer.Option(help="Only this record.")] = None,
                 format: Annotated[str, typer.Option("--format", help="table (default), csv, or json")] = "table",
                 detections: Annotated[int, typer.Option(help="Latest detections listed under the table.")] = 20,
                 ) -> None:
    """A price monitor's records with every observed price side by side (channels, competitor listings and how
    each was matched: gtin, mpn, name+brand, url), or a drift monitor's latest figures against its baseline;
    then its latest detections."""
    from claro_dagster.catalogue.monitoring import MonitorStore
    from claro_dagster.monitors import observation_sources
    from claro_dagster.resources.price_sources import CATALOGUE_SOURCE

    cli = _cli()
    cli.check_format(format)
    mon = _monitor(monitor)
    ms = MonitorStore(cli.ctx.store())
    if mon.kind == "price":
        sources = observation_sources(cli.ctx.spec(), mon)
        latest = ms.latest(mon.catalogue, sources)
        matched = ms.matched(mon.catalogue)
        ours = {o.record: o.price for o in latest if o.source == CATALOGUE_SOURCE}
        rows = []
        for o in sorted(latest, key=lambda o: (o.record, sources.index(o.source), o.listing)):
            if o.source == CATALOGUE_SOURCE or (record and o.record != record):
                continue
            own = ours.get(o.record)
            by, url = matched.get((o.record, o.listing), (None, None))
            rows.append({"record": o.record, "our_price": own, "source": o.source, "competitor": o.competitor or None,
                         "matched_by": by, "price": o.price,
                         "gap_percent": _round((own - o.price) / own * 100) if own else None,
                         "observed_at": o.observed_at, "url": url})
        listed = {x["record"] for x in rows}  # records nobody else lists yet still show with our price
        rows += [{"record": r, "our_price": p, "source": None, "competitor": None, "matched_by": None, "price": None,
                  "gap_percent": None, "observed_at": None, "url": None}
                 for r, p in sorted(ours.items()) if (not record or r == record) and r not in listed]
        rows.sort(key=lambda x: x["record"])
        if not rows and format == "table":
            cli.console.print(f"{monitor}: nothing observed yet; it runs on its schedule, or now with `claro monitor "
                              f"run {monitor}`", highlight=False)
            return
        cli.print_rows(rows, list(SHOW_FIELDS), format, all_columns=True)
    else:
        profiles = ms.snapshots(monitor, mon.baseline_runs + 1)
        if not profiles:
            rows = []
        else:
            import statistics

            now, before = profiles[-1], profiles[:-1]
            figures = [("score", now.score, [p.score for p in before])]
            figures += [(f"fill_rate/{a}", v, [p.fill_rates[a] for p in before if a in p.fill_rates])
                        for a, v in now.fill_rates.items()]
            rows = [{"figure": f, "now": _round(v, 4), "baseline": _round(statistics.median(b), 4) if b else None,
                     "change": _round(v - statistics.median(b), 4) if b else None} for f, v, b in figures]
        cli.print_rows(rows, list(DRIFT_FIELDS), format, all_columns=True)
    if format == "table":
        found = ms.detections(monitor=monitor, record=record, limit=detections)
        if not found:
            cli.console.print(f"{monitor}: no detections yet" + (" (this is its baseline run)" if mon.kind == "drift"
                                                                  and len(ms.snapshots(monitor, 2)) == 1 else ""))
            return
        cli.print_rows([{"at": s.at.strftime("%Y-%m-%d %H:%M:%S"), "rule": s.detection.rule,
                         "record": s.detection.record, "source": s.detection.source or None,
                         "message": s.detection.message} for s in found], list(DETECTION_FIELDS), "table",
                       all_columns=True)


@monitor_app.command("history")
def monitor_history(record: str,
                    catalogue: Annotated[str | None, typer.Option("--catalogue", "-c",
                                                                  help="Catalogue (default: the first).")] = None,
                    monitor: Annotated[str | None, typer.Option(help="Only this monitor's sources and "
                                                                     "detections.")] = None,
                    format: Annotated[str, typer.Option("--format", help="table (default), csv, or json")] = "table",
                    ) -> None:
    """A record's price history (every observed price, per source and listing, oldest first) and the detections
    monitors made about it, in time order."""
    from claro_dagster.catalogue.monitoring import MonitorStore, iso
    from claro_dagster.monitors import observation_sources

    cli = _cli()
    cli.check_format(format)
    sources = None
    if monitor is not None:
        mon = _monitor(monitor)
        name = mon.catalogue
        sources = observation_sources(cli.ctx.spec(), mon)
    else:
        name = cli.ctx.catalogue(catalogue)
    ms = MonitorStore(cli.ctx.store())
    rows = [{"at": r["observed_at"], "what": "price", "monitor": None, "source": r["source"],
             "listing": r["competitor"] or r["listing"] or None, "price": r["price"], "rule": None, "message": None}
            for r in ms.history_rows(name, record) if sources is None or r["source"] in sources]
    rows += [{"at": iso(s.at), "what": "detection", "monitor": s.monitor, "source": s.detection.source or None,
              "listing": s.detection.listing or None, "price": s.detection.value, "rule": s.detection.rule,
              "message": s.detection.message}
             for s in ms.detections(monitor=monitor, catalogue=name, record=record)]
    if not rows and cli.ctx.store().record(name, record) is None:
        raise cli.user_error(f"no record {record!r} in catalogue {name!r}")
    rows.sort(key=lambda r: (r["at"], r["what"] != "price"))
    cli.print_rows(rows, list(HISTORY_FIELDS), format, all_columns=True)


@monitor_app.command("run")
def monitor_run(monitor: str, filter: Annotated[str | None, typer.Option("--filter", "-f", help="Only records "
                                                                                                 "matching.")] = None
                ) -> None:
    """Run a monitor now (in this process, recorded in the local Dagster instance as a run of its job), with its
    alerts and events, then say what it found."""
    from claro_dagster.definitions import build_definitions, operation_job_name
    from claro_dagster.local import announce_run, execute, instance_for, metadata

    cli = _cli()
    mon = _monitor(monitor)
    defs = build_definitions(cli.ctx.spec_path, cli.home_dir())
    job = operation_job_name(mon.catalogue, monitor)
    config = {"ops": {f"{mon.catalogue}__{monitor}": {"config": {"filter": filter}}}} if filter else None
    instance = instance_for(cli.home_dir())
    result = execute(defs, instance, job, run_config=config)
    announce_run(defs, instance, result)
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        error = failure.step_failure_data.error if failure else None
        while error is not None and error.cause is not None:
            error = error.cause
        why = error.message.strip().splitlines()[-1] if error is not None and error.message else "see the run"
        raise cli.user_error(f"monitor {monitor} failed (run {result.run_id}): {why}")
    import dagster as dg

    meta = metadata(result, dg.AssetKey([mon.catalogue, monitor])) or {}
    extra = " (its first run: the baseline)" if meta.get("baseline") is True else ""
    cli.console.print(f"{monitor}: {meta.get('detections', 0)} new detection(s) in {meta.get('records', 0)} records"
                      f"{extra} (run {result.run_id}); details: claro monitor show {monitor}", highlight=False)
