"""Schedules from the spec: names, status, targets, the filter in run config and tags, DST-correct ticks."""

import shutil
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml

from claro_dagster.definitions import build_definitions
from claro_dagster.schedules import (
    TAG_CATALOGUE,
    TAG_FILTER,
    TAG_SCHEDULE,
    TAG_TARGET,
    ScheduleError,
    build_schedules,
    describe_schedules,
    next_run_times,
)
from claro_dagster.spec import DEMO_DIR, load_spec
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    DestinationSpec,
    PipelineSpec,
    ProjectSpec,
    ScheduleSpec,
)

LONDON = ZoneInfo("Europe/London")
# A filter with both kinds of quote and an escaped quote inside a string: it must reach the run unchanged.
QUOTED = 'brand == "O\'Neill" and title contains "12\\" rim" and status in [\'active\', "draft"]'


# No `from __future__ import annotations` here: Dagster reads the asset's config annotation at runtime.
class FilterConfig(dg.Config):
    filter: str | None = None


def _asset(catalogue: str, name: str) -> dg.AssetsDefinition:
    @dg.asset(key=[catalogue, name])
    def stub(config: FilterConfig) -> None:
        return None

    return stub


def small_spec(**schedules: ScheduleSpec) -> ProjectSpec:
    text = AttributeSpec(type="text")
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={"sku": text, "brand": text, "title": text,
                                                                     "status": text}),
                    "suppliers": CatalogueSpec(key="supplier_id", attributes={"supplier_id": text})},
        pipelines={"products_onboarding": PipelineSpec(catalogue="products",
                                                       destinations=["dump", "warehouse", "shop"])},
        destinations={"dump": DestinationSpec(kind="s3", catalogue="products", bucket="b"),
                      "warehouse": DestinationSpec(kind="postgres", catalogue="products", url_env="X", table="t"),
                      "shop": DestinationSpec(kind="shopify", catalogue="products")},
        schedules=schedules,
    )


# Like the code location: `shop` (shopify) has no connector yet, so no asset.
SMALL_ASSETS = [_asset("products", n) for n in ("analyse", "export", "dump", "warehouse")] + \
    [_asset("suppliers", n) for n in ("analyse", "export")]
ASSETS_BY_KEY = {a.key: a for a in SMALL_ASSETS}


def built(spec: ProjectSpec) -> dict[str, dg.ScheduleDefinition]:
    return {s.name: s for s in build_schedules(spec, ASSETS_BY_KEY)}


def tick(schedule: dg.ScheduleDefinition, when: datetime) -> dg.RunRequest:
    # Close the context before the instance: a context left to the garbage collector later restores the
    # closed instance as Dagster's current state storage, and the next Definitions load fails.
    with dg.DagsterInstance.ephemeral() as instance, \
            dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
        result = schedule.evaluate_tick(context)
    assert len(result.run_requests) == 1
    return result.run_requests[0]


def selected_keys(schedule: dg.ScheduleDefinition) -> set[dg.AssetKey]:
    defs = dg.Definitions(assets=SMALL_ASSETS, schedules=[schedule])
    return set(defs.resolve_job_def(defs.resolve_schedule_def(schedule.name).job_name).asset_layer
               .selected_asset_keys)


@pytest.mark.parametrize(("target", "ops"), [
    ("products/analyse", ["products__analyse"]),
    ("products/export", ["products__export"]),
    ("products/dump", ["products__dump"]),
    ("products_onboarding", ["products__analyse", "products__export", "products__dump", "products__warehouse"]),
])
def test_the_filter_reaches_every_targeted_asset_in_run_config_and_tags(target, ops):
    schedule = built(small_spec(s=ScheduleSpec(target=target, every="daily", filter='status == "active"')))["s"]

    request = tick(schedule, datetime(2026, 1, 12, 2, tzinfo=LONDON))

    assert request.run_config == {"ops": {op: {"config": {"filter": 'status == "active"'}} for op in ops}}
    assert request.tags[TAG_SCHEDULE] == "s"
    assert request.tags[TAG_FILTER] == 'status == "active"'
    assert request.tags[TAG_TARGET] == target
    assert request.tags[TAG_CATALOGUE] == "products"
    assert selected_keys(schedule) == {dg.AssetKey(op.split("__")) for op in ops}


def test_a_pipeline_schedule_runs_what_the_pipeline_publishes_not_other_catalogues():
    schedule = built(small_spec(s=ScheduleSpec(target="products_onboarding", every="hourly")))["s"]

    assert selected_keys(schedule) == {dg.AssetKey(["products", n]) for n in ("analyse", "export", "dump",
                                                                              "warehouse")}
    assert "products/warehouse" in schedule.description


def test_without_a_filter_the_run_uses_each_assets_defaults_and_has_no_filter_tag():
    schedule = built(small_spec(s=ScheduleSpec(target="products/export", every="daily")))["s"]

    request = tick(schedule, datetime(2026, 1, 12, 2, tzinfo=LONDON))

    assert request.run_config == {}
    assert TAG_FILTER not in request.tags
    assert "for all records" in schedule.description


def test_a_filter_with_quotes_survives_into_run_config_and_tags_unchanged():
    schedule = built(small_spec(s=ScheduleSpec(target="products/analyse", every="daily", filter=QUOTED)))["s"]

    request = tick(schedule, datetime(2026, 1, 12, 2, tzinfo=LONDON))

    assert request.run_config["ops"]["products__analyse"]["config"]["filter"] == QUOTED
    assert request.tags[TAG_FILTER] == QUOTED
    assert f"records where {QUOTED}" in schedule.description


def test_names_equal_the_spec_entries_and_paused_schedules_start_stopped():
    spec = small_spec(nightly_quality=ScheduleSpec(target="products/analyse", every="daily"),
                      hourly_active_export=ScheduleSpec(target="products/export", cron="0 * * * *", paused=True),
                      weekly_suppliers=ScheduleSpec(target="suppliers/analyse", every="weekly"))

    schedules = built(spec)

    assert list(schedules) == ["nightly_quality", "hourly_active_export", "weekly_suppliers"]
    assert schedules["nightly_quality"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedules["hourly_active_export"].default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedules["weekly_suppliers"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert "Paused" in schedules["hourly_active_export"].description
    # Each schedule gets its own job, so two schedules never collide on a name.
    dg.Definitions.validate_loadable(dg.Definitions(assets=SMALL_ASSETS, schedules=list(schedules.values())))


@pytest.mark.parametrize(("every", "cron", "words"), [
    ("hourly", "0 * * * *", "every hour on the hour"),
    ("daily", "0 2 * * *", "every day at 02:00"),
    ("weekly", "0 2 * * 1", "every Monday at 02:00"),
])
def test_every_shorthand_becomes_its_cron_in_the_entrys_timezone(every, cron, words):
    schedule = built(small_spec(s=ScheduleSpec(target="products/analyse", every=every,
                                               timezone="Europe/London")))["s"]

    assert schedule.cron_schedule == cron
    assert schedule.execution_timezone == "Europe/London"
    assert schedule.description == (f"Runs products/analyse (the data-quality report of products) {words} "
                                    "(Europe/London time) for all records.")


@pytest.mark.parametrize(("cron", "words"), [
    ("30 6 * * *", "every day at 06:30"),
    ("15 * * * *", "every hour at :15"),
    ("0 18 * * 5", "every Friday at 18:00"),
    ("*/15 8-18 * * 1-5", "on cron '*/15 8-18 * * 1-5'"),
])
def test_a_cron_entry_is_used_as_written_and_described_in_words(cron, words):
    schedule = built(small_spec(s=ScheduleSpec(target="suppliers/export", cron=cron, timezone="America/New_York")))["s"]

    assert schedule.cron_schedule == cron
    assert f"{words} (America/New_York time)" in schedule.description


def test_an_entry_with_both_every_and_cron_is_an_error():
    with pytest.raises(ScheduleError, match=r"schedules\.both: a schedule needs exactly one of 'every'"):
        built(small_spec(both=ScheduleSpec(target="products/analyse", every="daily", cron="0 3 * * *")))


def test_a_daily_london_schedule_fires_at_two_local_in_winter_and_in_summer():
    schedule = built(small_spec(s=ScheduleSpec(target="products/analyse", every="daily",
                                               timezone="Europe/London")))["s"]

    winter = next_run_times(schedule.cron_schedule, schedule.execution_timezone, datetime(2026, 1, 14, 12, tzinfo=UTC))
    summer = next_run_times(schedule.cron_schedule, schedule.execution_timezone, datetime(2026, 7, 14, 12, tzinfo=UTC))

    assert [t.astimezone(UTC) for t in winter] == [datetime(2026, 1, d, 2, tzinfo=UTC) for d in (15, 16, 17)]
    assert [t.astimezone(UTC) for t in summer] == [datetime(2026, 7, d, 1, tzinfo=UTC) for d in (15, 16, 17)]
    assert {(t.hour, t.minute, t.tzinfo) for t in winter + summer} == {(2, 0, LONDON)}
    # The tick Dagster evaluates at 02:00 BST (01:00 UTC) is a run of the schedule, like any other.
    assert tick(schedule, summer[0]).tags[TAG_SCHEDULE] == "s"


def test_describe_schedules_steps_over_the_march_and_october_clock_changes():
    spec = small_spec(nightly=ScheduleSpec(target="products/analyse", every="daily", timezone="Europe/London"),
                      hourly=ScheduleSpec(target="products/export", every="hourly", timezone="Europe/London",
                                          filter='status == "active"', paused=True))

    # Clocks go forward on Sunday 29 March 2026 at 01:00 UTC and back on Sunday 25 October at 01:00 UTC.
    spring = {i.name: i for i in describe_schedules(spec, datetime(2026, 3, 27, 12, tzinfo=UTC))}
    autumn = {i.name: i for i in describe_schedules(spec, datetime(2026, 10, 23, 12, tzinfo=UTC))}
    night_of_change = {i.name: i for i in describe_schedules(spec, datetime(2026, 10, 24, 23, 30, tzinfo=UTC))}

    assert [t.astimezone(UTC) for t in spring["nightly"].next_runs] == [
        datetime(2026, 3, 28, 2, tzinfo=UTC), datetime(2026, 3, 29, 1, tzinfo=UTC),
        datetime(2026, 3, 30, 1, tzinfo=UTC)]
    assert [t.astimezone(UTC) for t in autumn["nightly"].next_runs] == [
        datetime(2026, 10, 24, 1, tzinfo=UTC), datetime(2026, 10, 25, 2, tzinfo=UTC),
        datetime(2026, 10, 26, 2, tzinfo=UTC)]
    assert all(t.hour == 2 and t.tzinfo == LONDON for t in spring["nightly"].next_runs + autumn["nightly"].next_runs)
    # Hourly across the autumn change: local 01:00 happens twice and each is one run; no UTC hour is skipped.
    hourly = night_of_change["hourly"].next_runs
    assert [t.astimezone(UTC) for t in hourly] == [datetime(2026, 10, 25, h, tzinfo=UTC) for h in (0, 1, 2)]
    assert [(t.hour, t.utcoffset().total_seconds()) for t in hourly] == [(1, 3600), (1, 0), (2, 0)]

    info = spring["hourly"]
    assert (info.target, info.cron, info.timezone, info.filter, info.status) == (
        "products/export", "0 * * * *", "Europe/London", 'status == "active"', "paused")
    assert spring["nightly"].status == "running"


def test_next_runs_start_after_now_even_when_now_is_a_tick():
    runs = next_run_times("0 2 * * *", "Europe/London", datetime(2026, 1, 15, 2, tzinfo=UTC), count=2)

    assert [t.astimezone(UTC) for t in runs] == [datetime(2026, 1, 16, 2, tzinfo=UTC),
                                                 datetime(2026, 1, 17, 2, tzinfo=UTC)]
    with pytest.raises(ValueError, match="no timezone"):
        next_run_times("0 2 * * *", "UTC", datetime(2026, 1, 15, 2))


def test_a_target_without_an_asset_is_an_error_that_names_the_schedule():
    with pytest.raises(ScheduleError, match=r"schedules\.push\.target: 'products/shop' .*products/shop"):
        built(small_spec(push=ScheduleSpec(target="products/shop", every="daily")))


def test_a_filter_that_does_not_parse_is_an_error_that_names_the_schedule():
    with pytest.raises(ScheduleError, match=r"schedules\.bad\.filter: filter error at position"):
        built(small_spec(bad=ScheduleSpec(target="products/analyse", every="daily", filter='status == "active')))


def test_a_filter_naming_an_unknown_field_or_the_wrong_type_is_an_error_that_names_the_schedule():
    with pytest.raises(ScheduleError, match=r"schedules\.bad\.filter: .*unknown field 'colour'"):
        built(small_spec(bad=ScheduleSpec(target="products/analyse", every="daily", filter='colour == "red"')))
    with pytest.raises(ScheduleError, match=r"schedules\.bad\.filter: .*'status' is a text attribute and 5 is not"):
        built(small_spec(bad=ScheduleSpec(target="products/analyse", every="daily", filter="status == 5")))


def test_the_demo_definitions_accept_every_schedules_run_config(tmp_path, monkeypatch):
    # Validating a run config resolves the destinations' resource config, env vars included; nothing connects.
    monkeypatch.setenv("CLARO_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CLARO_WAREHOUSE_URL", "postgresql://127.0.0.1:9/unused")
    spec_path = tmp_path / "claro.yaml"
    shutil.copy(DEMO_DIR / "claro.yaml", spec_path)
    raw = yaml.safe_load(spec_path.read_text())
    raw["schedules"]["products_nightly"] = {"target": "products_onboarding", "every": "daily",
                                            "timezone": "Europe/London", "filter": QUOTED}
    raw["schedules"]["warehouse_sync"] = {"target": "products/warehouse", "every": "hourly",
                                          "filter": 'status == "active"'}
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    defs = build_definitions(spec_path, tmp_path / "home")

    assets = list(defs.assets)
    schedules = build_schedules(load_spec(spec_path), {key: a for a in assets for key in a.keys})
    full = dg.Definitions(assets=assets, sensors=defs.sensors, schedules=schedules, resources=defs.resources,
                          executor=dg.in_process_executor)
    dg.Definitions.validate_loadable(full)

    assert [s.name for s in schedules] == ["nightly_quality", "daily_price_watch", "hourly_active_export",
                                           "weekly_duplicates", "weekly_supplier_duplicates", "nightly_enrichment",
                                           "products_nightly", "warehouse_sync"]
    for schedule in schedules:
        request = tick(full.resolve_schedule_def(schedule.name), datetime(2026, 3, 29, 1, tzinfo=UTC))
        job = full.resolve_job_def(full.resolve_schedule_def(schedule.name).job_name)
        dg.validate_run_config(job, request.run_config)  # raises if an op name or field were wrong
    nightly = full.resolve_schedule_def("products_nightly")
    keys = full.resolve_job_def(nightly.job_name).asset_layer.selected_asset_keys
    assert keys == {dg.AssetKey(["products", n]) for n in ("analyse", "export", "shopify_store", "amazon_listings",
                                                           "catalogue_dump", "warehouse")}
    # Runs of a schedule are runs of a named job: the operation's own, or the schedule's when it spans several
    assert {s.name: s.job_name for s in defs.schedules} == {
        "nightly_quality": "products_analyse", "hourly_active_export": "products_export",
        "weekly_duplicates": "products_dedupe", "weekly_supplier_duplicates": "suppliers_dedupe",
        "nightly_enrichment": "products_enrich", "daily_price_watch": "products_price_watch",
        "products_nightly": "products_nightly",
        "warehouse_sync": "products_warehouse", "claro_retention_daily": "claro_retention"}
    dg.Definitions.validate_loadable(defs)
