"""Monitors against a real store: the price history (idempotent, shared by monitors running at once),
detections with their `monitor.drift` outbox events, state rules announced once, drift baselines."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.channels import ChannelRecord, ChannelState
from claro_dagster.catalogue.monitoring import MONITOR_DRIFT, MonitorStore
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.monitors import run_monitor
from claro_dagster.operations.monitor import Observation
from claro_dagster.spec import load_spec

SPEC = """\
name: monitors
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text, identifier: true}
      title: {type: text}
      brand: {type: text}
      gtin: {type: text, identifier: true}
      mpn: {type: text}
      price: {type: number}
      cost: {type: number}
      colour: {type: enum, values: [red, blue, green]}
destinations:
  amazon_uk:
    kind: amazon
    catalogue: products
    seller_id: A1
    marketplace_ids: [A1F83G8C2ARO7P]
    currency: GBP
    product_type: LUGGAGE
    client_id_env: T_ID
    client_secret_env: T_SECRET
    refresh_token_env: T_REFRESH
    attributes: {purchasable_offer: price}
monitors:
  prices:
    kind: price
    catalogue: products
    price: price
    observe:
      - file: rivals.csv
      - channel: amazon_uk
    rules:
      - {kind: threshold, percent: 10}
      - {kind: absolute, expression: "price < cost * 1.1"}
      - {kind: competitor_gap, percent: 15}
  prices_too:
    kind: price
    catalogue: products
    price: price
    observe:
      - file: rivals.csv
    rules:
      - {kind: threshold, percent: 5}
  quality:
    kind: drift
    catalogue: products
    tolerance: {fill_rate: 0.1, score: 5, distribution: 0.3}
"""

RIVALS = """competitor,gtin,mpn,name,brand,price,url,observed_at
RivalShop,4006381333931,,,,8.00,https://rival.example/p/1,2026-11-30T10:00:00Z
RivalShop,,MPN-2,,,19.00,,2026-11-30T10:00:00Z
CheapCo,,,canvas tote bag,Globex,5.00,,2026-11-30T10:00:00Z
"""


def load(cs: str, rows: list[dict]) -> ChangeSet:
    return ChangeSet(cs, "products", "import", [Change(r["sku"], f, v, 100) for r in rows for f, v in r.items()
                                                if f != "sku" and v is not None])


PRODUCTS = [
    {"sku": "S1", "title": "Trail Runner", "brand": "Acme", "gtin": "4006381333931", "price": 10.0, "cost": 6.0,
     "colour": "red"},
    {"sku": "S2", "title": "Rain Jacket", "brand": "Acme", "mpn": "MPN-2", "price": 20.0, "cost": 19.0,
     "colour": "red"},
    {"sku": "S3", "title": "Canvas Tote Bag", "brand": "Globex", "price": 6.0, "cost": 2.0, "colour": "blue"},
]


@pytest.fixture
def world(tmp_path, store_url):  # every test on SQLite and on PostgreSQL
    (tmp_path / "claro.yaml").write_text(SPEC, encoding="utf-8")
    (tmp_path / "rivals.csv").write_text(RIVALS, encoding="utf-8")
    spec = load_spec(tmp_path / "claro.yaml")
    store = CatalogueStore(spec, store_url)
    store.apply(load("load", PRODUCTS))
    yield tmp_path, spec, store
    store.dispose()


def monitor_events(store) -> list[dict]:
    return [dict(e, payload=json.loads(e["payload"]) if isinstance(e["payload"], str) else e["payload"])
            for e in store.events(limit=10_000) if e["type"] == MONITOR_DRIFT]


def test_a_price_monitor_keeps_history_matches_competitors_and_announces_each_detection_once(world):
    tmp_path, spec, store = world
    ChannelState(store).put([ChannelRecord("amazon_uk", "S1", "pushed", payload={"attributes": {"purchasable_offer": [
        {"currency": "GBP", "our_price": [{"schedule": [{"value_with_tax": 10.0}]}]}]}})])

    first = run_monitor(store, "prices", run_key="run-1")
    ms = MonitorStore(store)
    rows = ms.history_rows("products", "S1")
    assert sorted((r["source"], r["competitor"], r["price"], r["matched_by"]) for r in rows) == [
        ("amazon_uk", "", 10.0, None), ("catalogue", "", 10.0, None), ("rivals", "RivalShop", 8.0, "gtin")]
    assert [r["matched_by"] for r in ms.history_rows("products", "S3") if r["source"] == "rivals"] == ["name+brand"]
    # S2 sells under cost + 10%; RivalShop undercuts S1 by 20%, CheapCo S3 by 16.7%; no price moved yet.
    assert sorted((d.rule, d.record) for d in first.new) == [("absolute", "S2"), ("competitor_gap", "S1"),
                                                             ("competitor_gap", "S3")]
    events = monitor_events(store)
    assert len(events) == 3 and {e["change_set"] for e in events} == {"monitor:prices:run-1"}
    gap = next(e for e in events if e["record"] == "S1")
    assert gap["payload"]["monitor"] == "prices" and gap["payload"]["rule"] == "competitor_gap"
    assert gap["payload"]["detail"]["gap_percent"] == 20.0 and gap["catalogue"] == "products"

    # The same run executed again, and the next run with nothing new: no observation, detection or event twice.
    assert run_monitor(store, "prices", run_key="run-1").new == []
    second = run_monitor(store, "prices", run_key="run-2")
    assert second.observations_added == 0 and second.new == [] and len(monitor_events(store)) == 3

    # Our price of S1 goes up 25%: a threshold detection; S2 is repriced above cost (its flag clears, but
    # RivalShop's 19 is now 36.7% under it) and later falls below cost again: announced again then.
    store.apply(load("reprice", [{"sku": "S1", "price": 12.5}, {"sku": "S2", "price": 30.0}]))
    third = run_monitor(store, "prices", run_key="run-3")
    assert sorted((d.rule, d.record) for d in third.new) == [("competitor_gap", "S2"), ("threshold", "S1"),
                                                             ("threshold", "S2")]
    assert "10 -> 12.5 (+25.0%" in next(d.message for d in third.new if d.record == "S1")
    store.apply(load("undercut", [{"sku": "S2", "price": 20.0}]))
    assert sorted((d.rule, d.record) for d in run_monitor(store, "prices", run_key="run-4").new) == [
        ("absolute", "S2"), ("threshold", "S2")]


def test_two_monitors_writing_the_same_price_history_at_once_neither_duplicate_nor_lose_observations(world):
    tmp_path, spec, store = world
    url = store.url
    errors: list[BaseException] = []
    observed: list = []
    start = threading.Barrier(2)

    def monitor(name: str, runs: int) -> None:
        own = CatalogueStore(spec, url)  # each its own connection pool, as two runs in two processes
        try:
            start.wait()
            for i in range(runs):
                observed.extend(run_monitor(own, name, run_key=f"{name}-{i}").observed)
                bump = 0.5 if name == "prices" else 0.25
                own.apply(load(f"{name}-reprice-{i}", [{"sku": "S3", "price": 6.0 + i + bump}]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=monitor, args=(n, 5)) for n in ("prices", "prices_too")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    history = MonitorStore(store).history("products")
    stored = [(o.record, o.source, o.listing, o.observed_at, o.price) for o in history]
    assert len(stored) == len(set(stored))  # never twice
    seen = {(o.record, o.source, o.listing, o.observed_at, o.price) for o in observed}
    assert set(stored) == seen  # every observation either monitor read is there, and nothing else
    assert len([o for o in observed if o.source == "rivals"]) == 30 and len(seen) < len(observed)
    # the competitor file was read by both: its three listings once each
    assert sorted(o.competitor for o in history if o.source == "rivals") == ["CheapCo", "RivalShop", "RivalShop"]
    assert len({o.price for o in history if o.record == "S3" and o.source == "catalogue"}) >= 2
    # both monitors judged the observations: each has its own cursor
    assert int(store.get_cursor("monitor:prices")) > 0 and int(store.get_cursor("monitor:prices_too")) > 0


def test_concurrent_inserts_of_the_same_observations_keep_one_each(world):
    _, spec, store = world
    items = [Observation(f"R{i}", "feed", float(i), f"2026-11-30T10:00:{i % 60:02d}.000000Z") for i in range(300)]
    results: list[int] = []
    stores = [CatalogueStore(spec, store.url) for _ in range(4)]
    barrier = threading.Barrier(4)

    def write(s):
        barrier.wait()
        results.append(MonitorStore(s).add_observations("products", items, monitor="m"))

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.dispose()
    assert sorted(results)[-1] == 300 and sum(results) == 300  # one writer inserted them, the others skipped
    assert len(MonitorStore(store).history("products")) == 300


def test_a_drift_monitor_without_history_records_a_baseline_and_alerts_nothing(world):
    _, _, store = world
    first = run_monitor(store, "quality", run_key="d-1")
    assert first.baseline and first.found == [] and first.new == [] and monitor_events(store) == []
    assert first.profile.fill_rates["mpn"] == pytest.approx(1 / 3)
    assert first.profile.distributions["colour"] == {"blue": pytest.approx(1 / 3), "red": pytest.approx(2 / 3)}

    # A new supplier file: titles missing, a colour never seen before (kept as received: not yet normalised).
    store.apply(load("more", [{"sku": f"N{i}", "price": 5.0, "colour": "teal"} for i in range(6)]))
    second = run_monitor(store, "quality", run_key="d-2")
    assert not second.baseline
    rules = sorted({d.rule for d in second.new})
    assert rules == ["distribution", "fill_rate", "new_value", "score"]
    fills = sorted(d.detail["attribute"] for d in second.new if d.rule == "fill_rate")
    assert fills == ["brand", "cost", "gtin", "mpn", "title"]  # each attribute its own detection
    assert any("title: fill rate fell from 100.0% to 33.3%" in d.message for d in second.new)
    assert [e["payload"]["monitor_kind"] for e in monitor_events(store)] == ["drift"] * len(second.new)
    assert all(e["record"] is None for e in monitor_events(store))
    # The same run again reads its stored profile and baseline: nothing new.
    assert run_monitor(store, "quality", run_key="d-2").new == []
    # Nothing changed since: no drift against the previous run.
    assert run_monitor(store, "quality", run_key="d-3").found == []


def test_a_competitor_file_with_a_bad_price_names_its_line(world):
    tmp_path, _, store = world
    Path(tmp_path / "rivals.csv").write_text("competitor,gtin,price\nRival,4006381333931,cheap!\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"rivals.csv:2: price 'cheap!' is not a number"):
        run_monitor(store, "prices", run_key="bad")
    assert os.path.exists(tmp_path / "rivals.csv")


def test_a_filtered_run_judges_its_records_and_leaves_the_others_to_the_next_full_run(world):
    _, _, store = world
    assert sorted((d.rule, d.record) for d in run_monitor(store, "prices", run_key="full-1").new) == [
        ("absolute", "S2"), ("competitor_gap", "S1"), ("competitor_gap", "S3")]
    store.apply(load("reprice", [{"sku": "S1", "price": 12.5}, {"sku": "S3", "price": 9.0}]))
    narrow = run_monitor(store, "prices", run_key="narrow", filter='sku == "S1"')
    assert [(d.rule, d.record) for d in narrow.new] == [("threshold", "S1")]
    # S3's new price is judged by the next full run; S2's and S3's open flags were kept, so not announced again
    assert [(d.rule, d.record) for d in run_monitor(store, "prices", run_key="full-2").new] == [("threshold", "S3")]


def test_an_observation_committed_below_the_cursor_is_still_judged_and_never_announced_twice(world):
    """On PostgreSQL ids are taken before commit: another monitor's observation can land below this monitor's
    cursor. Those recorded in the last two minutes are judged again; detections are keyed by observation."""
    _, _, store = world
    run_monitor(store, "prices", run_key="r1")
    late = Observation("S1", "catalogue", 12.5, "2099-01-01T00:00:00.000000Z")
    MonitorStore(store).add_observations("products", [late], monitor="other")  # written by another monitor...
    store.set_cursor("monitor:prices", str(MonitorStore(store).last_id() + 5))  # ...yet below this one's cursor
    second = run_monitor(store, "prices", run_key="r2")
    assert [(d.rule, d.record) for d in second.new] == [("threshold", "S1")]
    assert run_monitor(store, "prices", run_key="r3").new == []  # judged again within the window: said once
