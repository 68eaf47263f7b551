"""Running a monitor of the spec's `monitors:` once: read prices or profile the catalogue, apply the rules,
store history and detections, announce (`monitor.drift` outbox events, then Slack). No Dagster here: the asset
(`assets/monitors.py`) and tests call `run_monitor`.

A price monitor evaluates the observations added to the history since its own last run (its store cursor
`monitor:<name>`), whoever wrote them, so two monitors sharing a source both judge each new observation once.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from claro_dagster.catalogue.monitoring import MONITOR_DRIFT, MonitorStore
from claro_dagster.operations.monitor import (
    Detection,
    DriftTolerance,
    Observation,
    Profile,
    competitor_gaps,
    compile_expression,
    drift,
    match_listings,
    outliers,
    price_changes,
    value_shares,
)
from claro_dagster.resources.price_sources import (
    CATALOGUE_SOURCE,
    catalogue_prices,
    channel_prices,
    file_listings,
    http_listings,
    scrape_prices,
)
from claro_dagster.spec.models import MonitorSpec, ProjectSpec

log = logging.getLogger(__name__)

RECENT_SECONDS = 120  # observations recorded this recently are judged again, whatever the cursor (see _run_price)


@dataclass
class MonitorResult:
    monitor: str
    kind: str
    catalogue: str
    found: list[Detection] = field(default_factory=list)  # everything the rules found this run
    new: list[Detection] = field(default_factory=list)  # what was recorded and announced (not seen by this run before)
    observations_added: int = 0
    observed: list[Observation] = field(default_factory=list)  # price: every observation read this run
    records: int = 0
    baseline: bool = False  # drift: no earlier run to compare with, this run is the baseline
    profile: Profile | None = None
    mean_prices: dict[str, float] = field(default_factory=dict)  # per source, of the latest observations
    problems: list[str] = field(default_factory=list)


def cursor_name(monitor: str) -> str:
    return f"monitor:{monitor}"


def observation_sources(spec: ProjectSpec, mon: MonitorSpec) -> list[str]:
    """The source names a price monitor's observations carry in the history, `catalogue` first."""
    names = [CATALOGUE_SOURCE]
    for obs in mon.observe:
        names.append(obs.name or obs.channel or (Path(obs.file).stem if obs.file else None) or obs.source)
    return names


def _where(*filters: str | None) -> str | None:
    return " and ".join(f"({f})" for f in filters if f) or None


def run_monitor(store: Any, name: str, *, run_key: str, run_id: str | None = None, filter: str | None = None,
                http_client: Any = None, scraper: Any = None, announce_to_slack: bool = True,
                logger: logging.Logger = log) -> MonitorResult:
    """Run monitor `name` of the store's spec once; `run_key` identifies the run (detections are idempotent by it)."""
    spec: ProjectSpec = store.spec
    mon = spec.monitors[name]
    # An ad-hoc narrower run (a schedule's or the UI's filter) judges its records but leaves the monitor's cursor
    # where it was: the observations of the records it skipped are judged by the next full run.
    result = (_run_price if mon.kind == "price" else _run_drift)(
        store, spec, name, mon, run_key=run_key, run_id=run_id, filter=_where(mon.filter, filter),
        moves_cursor=not filter, http_client=http_client, scraper=scraper)
    if result.new and announce_to_slack:
        announce(spec, name, mon, result.new, run_id=run_id, logger=logger)
    return result


def _run_price(store: Any, spec: ProjectSpec, name: str, mon: MonitorSpec, *, run_key: str, run_id: str | None,
               filter: str | None, moves_cursor: bool, http_client: Any, scraper: Any) -> MonitorResult:
    ms = MonitorStore(store)
    cat = store.catalogue(mon.catalogue)
    key = cat.key
    frame = store.records(mon.catalogue, filter=filter)
    rows = frame.to_dict("records")
    keys = {str(r[key]) for r in rows}
    result = MonitorResult(name, "price", mon.catalogue, records=len(rows))
    observed: list[Observation] = catalogue_prices(store, mon.catalogue, mon.price, keys)
    matched_by: dict[tuple[str, str], str] = {}
    urls: dict[tuple[str, str], str] = {}
    match = {k: (getattr(mon.match, k) if getattr(mon.match, k) in cat.attributes else None)
             for k in ("gtin", "mpn", "name", "brand")}
    for entry, source_name in zip(mon.observe, observation_sources(spec, mon)[1:], strict=True):
        if entry.channel:
            observed += channel_prices(store, entry.channel, spec.destinations[entry.channel], mon.price, keys)
            continue
        source = spec.sources.get(entry.source) if entry.source else None
        if source is not None and source.kind == "scrape":
            found, found_urls, problems = scrape_prices(source_name, source, rows, key,
                                                        competitor=entry.competitor or source_name, scraper=scraper)
            observed += found
            urls.update(found_urls)
            matched_by.update({k: "url" for k in found_urls})
            result.problems += problems
            continue
        if entry.file:
            listings = file_listings(spec.base_dir / entry.file, competitor=entry.competitor or source_name)
        else:
            listings = http_listings(entry.source, source, entry.columns, client=http_client)
        for m in match_listings(rows, listings, key=key, name_similarity=mon.match.name_similarity, **match):
            lid = m.listing.id
            observed.append(Observation(m.record, source_name, float(m.listing.price), m.listing.observed_at,
                                        lid, m.listing.competitor))
            matched_by[(m.record, lid)] = m.by
            if m.listing.url:
                urls[(m.record, lid)] = m.listing.url
    result.observed = observed
    result.observations_added = ms.add_observations(mon.catalogue, observed, monitor=name, matched_by=matched_by,
                                                    urls=urls)

    sources = observation_sources(spec, mon)
    since = int(store.get_cursor(cursor_name(name), "0") or 0)
    upto = ms.last_id()
    # The new observations, the whole history only of the records they concern, and the newest of every series.
    # On PostgreSQL an id is taken before its transaction commits, so an observation another monitor was still
    # writing can appear below the cursor: those recorded in the last RECENT_SECONDS are judged again (a detection
    # is keyed by its observation, so judging one twice announces nothing twice).
    recent = datetime.now(UTC) - timedelta(seconds=RECENT_SECONDS)
    new = [o for o in ms.history(mon.catalogue, sources=sources, after_id=since, recorded_since=recent)
           if o.record in keys and (o.id or 0) <= upto]
    history = [o for o in ms.history(mon.catalogue, records={o.record for o in new}, sources=sources)
               if (o.id or 0) <= upto]
    latest = {(o.record, o.source, o.listing): o for o in ms.latest(mon.catalogue, sources) if o.record in keys}
    by_source: dict[str, list[float]] = {}
    for (_, source_name, _), o in latest.items():
        by_source.setdefault(source_name, []).append(o.price)
    result.mean_prices = {s: round(statistics.fmean(v), 4) for s, v in sorted(by_source.items())}

    found: list[Detection] = []
    flag_updates: list[tuple[str, set[tuple[str, str]]]] = []
    prices = {o.record: o.price for o in latest.values() if o.source == CATALOGUE_SOURCE}
    for i, rule in enumerate(mon.rules):
        if rule.kind == "threshold":
            found += price_changes(history, new, rule.percent)
        elif rule.kind == "anomaly":
            found += outliers(history, new, max_z=rule.max_z, min_history=rule.min_history)
        else:
            flag = f"{rule.kind}:{i}"
            if rule.kind == "absolute":
                check = compile_expression(rule.expression)
                holding = {(str(r[key]), ""): r for r in rows if check(r)}
                detections = {k: Detection("absolute", k[0], f"{rule.expression} holds (price {r.get(mon.price)})",
                                           value=_float(r.get(mon.price)), detail={"expression": rule.expression})
                              for k, r in holding.items()}
            else:
                gaps = competitor_gaps(prices, [o for o in latest.values() if o.listing], rule.percent)
                detections = {(d.record, d.listing): d for d in gaps}
            before = ms.flags(name, flag)
            found += [d for k, d in sorted(detections.items()) if k not in before]
            # records this run did not look at (outside a filter) keep their flags
            flag_updates.append((flag, set(detections) | {k for k in before if k[0] not in keys}))
    result.found = found
    result.new = ms.record_detections(name, "price", mon.catalogue, run_key, found, run_id=run_id)
    for flag, holding in flag_updates:
        ms.set_flags(name, flag, holding)
    if moves_cursor:
        store.set_cursor(cursor_name(name), str(upto))
    return result


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def catalogue_profile(store: Any, catalogue: str, filter: str | None) -> Profile:
    """The Analyse figures of a catalogue (score, fill rates) and each enum attribute's value shares."""
    from claro_dagster.operations.analyse import analyse_catalogue

    frame = store.records(catalogue, filter=filter)
    cat = store.catalogue(catalogue)
    report = analyse_catalogue(frame, cat, name=catalogue, filter=filter)
    distributions = {a: value_shares(frame[a].tolist()) for a, attr in cat.attributes.items()
                     if attr.type == "enum" and a in frame.columns}
    return Profile(float(report.score), int(report.records), {f.attribute: round(float(f.fill_rate), 6)
                                                              for f in report.fields}, distributions)


def _run_drift(store: Any, spec: ProjectSpec, name: str, mon: MonitorSpec, *, run_key: str, run_id: str | None,
               filter: str | None, **_: Any) -> MonitorResult:
    ms = MonitorStore(store)
    profile = ms.snapshot_of(name, run_key) or catalogue_profile(store, mon.catalogue, filter)
    previous = ms.snapshots_before(name, run_key, mon.baseline_runs)
    ms.add_snapshot(name, run_key, profile)
    t = mon.tolerance
    found = drift(profile, previous, DriftTolerance(t.fill_rate, t.score, t.distribution, t.new_values))
    result = MonitorResult(name, "drift", mon.catalogue, records=profile.records, baseline=not previous,
                           profile=profile, found=found)
    result.new = ms.record_detections(name, "drift", mon.catalogue, run_key, found, run_id=run_id)
    return result


# ---------------------------------------------------------------------------------------------- Slack
def drift_alert(name: str, mon: MonitorSpec, new: Sequence[Detection], *, run_id: str | None = None,
                pipeline: str | None = None) -> Any:
    """One Slack alert for a run's new detections: counts per rule, the detections as its records."""
    from claro_dagster.resources.slack import Alert

    n = len(new)
    counts: dict[str, int] = {}
    for d in new:
        counts[d.rule] = counts.get(d.rule, 0) + 1
    what = "price" if mon.kind == "price" else "catalogue drift"
    return Alert(event=MONITOR_DRIFT, title=f"Monitor {name}: {n} {what} detection{'s' if n != 1 else ''}",
                 catalogue=mon.catalogue, operation=name, pipeline=pipeline, run_id=run_id,
                 error=f"{n} new detection{'s' if n != 1 else ''} in {mon.catalogue}. All of them, with the "
                       f"prices side by side: claro monitor show {name}",
                 counts=counts, records=[d.line() for d in new])


def announce(spec: ProjectSpec, name: str, mon: MonitorSpec, new: Sequence[Detection], *, run_id: str | None = None,
             logger: logging.Logger = log) -> None:
    """Tell the Slack routes that want `monitor.drift` (routed by catalogue, operation = the monitor's name,
    event); never raises for Slack's sake."""
    from claro_dagster.resources import alerts

    alerts.send(spec, drift_alert(name, mon, new, run_id=run_id), logger=logger)


__all__ = ["MonitorResult", "announce", "catalogue_profile", "drift_alert", "observation_sources", "run_monitor"]
