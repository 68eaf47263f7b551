"""The demo's daily price monitor: scheduled every day, offline (the bundled competitor file and Amazon's channel
state; no connection leaves the machine), matching competitor listings by GTIN, MPN and name plus brand."""

from __future__ import annotations

import shutil
import socket

import dagster as dg

from claro_dagster.catalogue.monitoring import MonitorStore
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR


def test_the_demo_runs_its_price_monitor_daily_offline(tmp_path, monkeypatch):
    real_connect = socket.socket.connect

    def loopback_only(sock, address):  # the monitor must not need the internet
        host = address[0] if isinstance(address, tuple) else address
        assert sock.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"), f"connect to {address}"
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    for name in ("SLACK_BOT_TOKEN", "CLARO_AMAZON_SELLER_ID"):
        monkeypatch.delenv(name, raising=False)
    defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]

    schedule = defs.resolve_schedule_def("daily_price_watch")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 2 * * *", "Europe/London", "products_price_watch")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.description.startswith("Runs products/price_watch (the price monitor of products) every day at "
                                           "02:00 (Europe/London time)")

    with dg.instance_for_test() as instance:
        for source, path in (("suppliers_csv", DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"),
                             ("acme_csv", DEMO_DIR / "inbox" / "acme" / "acme_products.csv")):
            inbox = claro.inbox_dir(source)
            inbox.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, inbox / path.name)
            assert run_batch(defs, instance, receive(claro, source, inbox / path.name), quiet=True).success
        with dg.build_schedule_context(instance=instance) as context:
            [request] = schedule.evaluate_tick(context).run_requests
        result = defs.resolve_job_def(schedule.job_name).execute_in_process(
            instance=instance, run_config=request.run_config, tags=request.tags)
    assert result.success
    [mat] = result.asset_materializations_for_node("products__price_watch")
    assert mat.metadata["detections/competitor_gap"].value == 2
    found = {(s.detection.record, s.detection.detail.get("competitor")) for s in
             MonitorStore(claro.store).detections(monitor="price_watch")}
    assert found == {("ACM-10001", "PeakGear"), ("ACM-10005", "TrailMart")}
    matched = MonitorStore(claro.store).matched("products")
    assert sorted(by for by, _ in matched.values()) == ["gtin", "mpn", "name+brand"]  # the stove matches nothing
