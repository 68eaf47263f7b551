"""The example dbt project (examples/dbt) in the Dagster graph: models below `<catalogue>/records`, dbt tests as
asset checks, and `dbt build` against a catalogue the demo filled in a PostgreSQL database of the test's own."""

import os
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from claro_dagster.assets.dbt_models import DBT_PROJECT_ENV, connection_env, dbt_project_setting, environment
from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dbt"
MODELS = {"stg_products", "stg_suppliers", "stg_product_history", "price_changes_by_supplier", "quality_by_brand"}


def dbt_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    return {k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "dbt"}


def materialize_dbt(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(list(defs.assets), selection=sorted(dbt_keys(defs)), instance=instance,
                          resources=defs.resources, raise_on_error=False)


@pytest.fixture(scope="module")
def sqlite_home(tmp_path_factory):
    """A project home on the embedded SQLite store, shared so the module parses the dbt project once."""
    return tmp_path_factory.mktemp("dbt_sqlite")


@pytest.fixture
def with_dbt(monkeypatch, sqlite_home):
    monkeypatch.setenv(DBT_PROJECT_ENV, str(EXAMPLE))
    monkeypatch.delenv("CLARO_DATABASE_URL", raising=False)
    return sqlite_home


def test_without_the_setting_there_are_no_dbt_assets(monkeypatch, tmp_path):
    monkeypatch.delenv(DBT_PROJECT_ENV, raising=False)
    assert dbt_project_setting() is None
    defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path)
    assert not dbt_keys(defs)
    assert "dbt" not in defs.resources


def test_models_hang_below_the_catalogues_records_and_tests_are_checks(with_dbt):
    defs = build_definitions(DEMO_DIR / "claro.yaml", with_dbt)
    dg.Definitions.validate_loadable(defs)  # as `dagster definitions validate` does: names unique, jobs resolve
    graph = defs.resolve_asset_graph()
    assert {k.path[-1] for k in dbt_keys(defs)} == MODELS
    parents = {k.path[-1]: {p.to_user_string() for p in graph.get(k).parent_keys} for k in dbt_keys(defs)}
    assert parents["stg_products"] == {"products/records"}
    assert parents["stg_product_history"] == {"products/records"}  # history and provenance: written by records
    assert parents["stg_suppliers"] == {"suppliers/records"}
    assert parents["price_changes_by_supplier"] == {"dbt/stg_product_history", "dbt/stg_products",
                                                    "dbt/stg_suppliers"}
    assert {graph.get(k).group_name for k in dbt_keys(defs)} == {"dbt"}
    checks = {(c.asset_key.path[-1], c.name) for c in graph.asset_check_keys if c.asset_key.path[0] == "dbt"}
    assert ("stg_products", "unique_stg_products_sku") in checks
    assert ("stg_products", "between_stg_products_price__0") in checks  # the project's own generic test
    assert ("quality_by_brand", "between_quality_by_brand_completeness_pct__100__0") in checks
    assert defs.resolve_job_def("dbt_build").asset_layer.selected_asset_keys == dbt_keys(defs)
    # on SQLite the models cannot run: no sensor starts runs that could only fail
    assert not [s.name for s in defs.sensors if s.name.startswith("dbt_build")]
    # the manifest is made under the project home, never in the (possibly read-only) dbt project
    assert (with_dbt / "dbt" / "target" / "manifest.json").is_file()
    assert (with_dbt / "dbt" / "target" / "dbt.log").is_file()


def test_a_source_naming_no_catalogue_of_the_spec_is_refused(with_dbt, tmp_path, monkeypatch):
    import shutil

    project = tmp_path / "dbt"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("target", "logs"))
    sources = project / "models" / "staging" / "_sources.yml"
    sources.write_text(sources.read_text().replace("{claro_catalogue: suppliers}", "{claro_catalogue: vendors}"))
    monkeypatch.setenv(DBT_PROJECT_ENV, str(project))
    with pytest.raises(ValueError, match=r"models/staging/_sources.yml: source claro.suppliers says "
                                         r"claro_catalogue: 'vendors', which is not a catalogue of the spec"):
        build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")


def test_the_manifest_is_made_again_only_when_the_project_changed(tmp_path, monkeypatch):
    import shutil

    project = tmp_path / "dbt"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("target", "logs"))
    monkeypatch.setenv(DBT_PROJECT_ENV, str(project))
    home = tmp_path / "home"
    manifest = home / "dbt" / "target" / "manifest.json"
    build_definitions(DEMO_DIR / "claro.yaml", home)
    made = manifest.stat().st_mtime_ns
    build_definitions(DEMO_DIR / "claro.yaml", home)
    assert manifest.stat().st_mtime_ns == made  # unchanged project: no `dbt parse` at each load
    (project / "models" / "marts" / "active_products.sql").write_text(
        "select sku, price from {{ ref('stg_products') }} where status = 'active'\n")
    defs = build_definitions(DEMO_DIR / "claro.yaml", home)
    assert dg.AssetKey(["dbt", "active_products"]) in dbt_keys(defs)
    assert os.environ.get("CLARO_DBT_HOST") is None  # the connection variables are set only while dbt starts


def test_environment_is_restored_after_dbt_started(monkeypatch):
    monkeypatch.setenv("CLARO_DBT_PORT", "1111")
    monkeypatch.delenv("CLARO_DBT_HOST", raising=False)
    with environment({"CLARO_DBT_PORT": "5432", "CLARO_DBT_HOST": "db"}):
        assert (os.environ["CLARO_DBT_PORT"], os.environ["CLARO_DBT_HOST"]) == ("5432", "db")
    assert os.environ["CLARO_DBT_PORT"] == "1111"
    assert "CLARO_DBT_HOST" not in os.environ


def test_a_project_without_dbt_project_yml_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(DBT_PROJECT_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="no dbt_project.yml there"):
        build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")


def test_the_sqlite_store_fails_the_run_saying_what_to_set(with_dbt):
    defs = build_definitions(DEMO_DIR / "claro.yaml", with_dbt)
    result = materialize_dbt(defs, dg.DagsterInstance.ephemeral())
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "read the catalogue store in PostgreSQL" in failure.step_failure_data.error.message
    assert "set CLARO_DATABASE_URL" in failure.step_failure_data.error.message


def test_connection_env_from_the_store_url():
    env = connection_env("postgresql+psycopg://ana:s%40cret@db.example:6543/shop?options=-csearch_path%3Dcat")
    assert env == {"CLARO_DBT_HOST": "db.example", "CLARO_DBT_PORT": "6543", "CLARO_DBT_USER": "ana",
                   "DBT_ENV_SECRET_CLARO_PASSWORD": "s@cret", "CLARO_DBT_DBNAME": "shop",
                   "CLARO_DBT_SOURCE_SCHEMA": "cat"}
    with pytest.raises(ValueError, match="set CLARO_DATABASE_URL to a PostgreSQL database"):
        connection_env("sqlite:////tmp/catalogue.db")


# ---------------------------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def demo_in_postgres(postgres_server, tmp_path_factory):
    """The demo run into a database of its own (created here, dropped after), its queued price changes approved,
    and the definitions with the example dbt project."""
    from claro_dagster.catalogue.review import ReviewQueue
    from claro_dagster.local import run_everything
    from claro_dagster.resources.catalogue import close_stores

    base, _, _ = postgres_server.rpartition("/")
    name = f"claro_dbt_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{base}/postgres".replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = f"{base}/{name}"
    home = tmp_path_factory.mktemp("dbt_demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLARO_DATABASE_URL", url)
        mp.setenv(DBT_PROJECT_ENV, str(EXAMPLE))
        mp.setenv("CLARO_DBT_SCHEMA", "analytics")
        run_everything(DEMO_DIR / "claro.yaml", home, progress=lambda _: None, bar=False)
        defs = build_definitions(DEMO_DIR / "claro.yaml", home)
        queue = ReviewQueue(defs.resources["claro"].store)
        approved = queue.approve([i.id for i in queue.list() if i.field == "price"], by="priya@example.com")
        assert approved.applied, "the demo queues price changes for review; the mart needs some applied"
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            yield defs, engine
        finally:
            engine.dispose()
            close_stores()
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.mark.postgres
@pytest.mark.e2e
def test_dbt_build_over_the_demo_catalogue(demo_in_postgres):
    defs, engine = demo_in_postgres
    result = materialize_dbt(defs, dg.DagsterInstance.ephemeral())
    assert result.success
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == MODELS
    checks = check_results(result)
    graph = defs.resolve_asset_graph()
    assert set(checks) == {c.name for c in graph.asset_check_keys if c.asset_key.path[0] == "dbt"}
    assert all(e.passed for e in checks.values()), [n for n, e in checks.items() if not e.passed]

    with engine.connect() as conn:
        products = pd.read_sql("select * from rec_products", conn)
        quality = pd.read_sql("select * from analytics.quality_by_brand", conn).set_index("brand")
        approved = pd.read_sql("select record, old, new, source from claro_proposals "
                               "where field = 'price' and status = 'approved'", conn)
        changes = pd.read_sql("select * from analytics.price_changes_by_supplier", conn)

    # quality by brand, computed here from the records themselves
    assert set(quality.index) == set(products["brand"].fillna("(no brand)"))
    for brand, rows in products.groupby(products["brand"].fillna("(no brand)")):
        got = quality.loc[brand]
        assert got["products"] == len(rows)
        assert got["active_products"] == (rows["status"] == "active").sum()
        assert got["missing_image"] == rows["image_url"].isna().sum()
        assert got["missing_supplier"] == rows["supplier"].isna().sum()
        needed = ["title", "description", "gtin", "price", "image_url", "weight", "colour", "category"]
        assert got["completeness_pct"] == pytest.approx(round(100 * rows[needed].notna().mean(axis=1).mean(), 1))
    assert quality["missing_image"].sum() > 0  # the demo's flaws show

    # price changes per supplier feed: the reviewed price changes
    assert len(approved) > 0
    assert list(changes["source"]) == sorted(set(approved["source"]))
    row = changes.iloc[0]
    old, new = approved["old"].astype(float), approved["new"].astype(float)
    assert row["price_changes"] == len(approved)
    assert row["products_changed"] == approved["record"].nunique()
    assert (row["increases"], row["decreases"]) == ((new > old).sum(), (new < old).sum())
    assert float(row["avg_change_pct"]) == pytest.approx(round((100 * (new - old) / old).mean(), 2))


@pytest.mark.postgres
@pytest.mark.e2e
def test_a_published_batch_starts_dbt_build(demo_in_postgres):
    from batches import tick

    from claro_dagster.local import instance_for

    defs, _ = demo_in_postgres
    sensors = {s.name: s for s in defs.sensors if s.name.startswith("dbt_build")}
    assert set(sensors) == {"dbt_build_after_products", "dbt_build_after_suppliers"}
    assert {s.job_name for s in sensors.values()} == {"dbt_build"}
    with instance_for(defs.resources["claro"].home_dir) as instance:  # where the demo's batches were published
        runs = tick(defs, instance, "dbt_build_after_products")
        assert len(runs) == 1 and runs[0].success
        assert {e.asset_key.path[-1] for e in runs[0].get_asset_materialization_events()} == MODELS
        assert runs[0].dagster_run.tags["claro/after"] == "products/records"


@pytest.mark.postgres
@pytest.mark.e2e
def test_a_failing_dbt_test_is_a_failed_check_and_stops_the_marts(demo_in_postgres):
    defs, engine = demo_in_postgres
    with engine.begin() as conn:
        sku = conn.execute(sa.text("select sku from rec_products order by sku limit 1")).scalar_one()
        before = conn.execute(sa.text("select price from rec_products where sku = :s"), {"s": sku}).scalar_one()
        conn.execute(sa.text("update rec_products set price = -5 where sku = :s"), {"s": sku})
    try:
        result = materialize_dbt(defs, dg.DagsterInstance.ephemeral())
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("update rec_products set price = :p where sku = :s"), {"p": before, "s": sku})
    assert not result.success  # dbt build exits non-zero
    checks = check_results(result)
    failed = {n for n, e in checks.items() if not e.passed}
    assert failed == {"between_stg_products_price__0"}
    assert checks["between_stg_products_price__0"].severity == dg.AssetCheckSeverity.ERROR
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert "stg_products" in materialized
    assert "quality_by_brand" not in materialized  # dbt build skips what is downstream of a failed test
