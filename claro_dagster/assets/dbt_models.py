"""dbt models over the catalogue, as Dagster assets downstream of `<catalogue>/records`.

Optional: present when $CLARO_DBT_PROJECT names a dbt project (the bundled example is `examples/dbt`). Its sources
say which catalogue's `records` asset writes each table (`config.meta.claro_catalogue`), so the models hang below
it in the same graph; its dbt tests are asset checks. `dbt build` runs against the catalogue store itself, which
must be PostgreSQL: the profile's connection variables are set from the store's URL for each run.

The manifest is made at load time by `dbt parse` (no network: the project uses no dbt packages) under the project
home, and made again only when a file of the dbt project is newer than it.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.spec.models import ProjectSpec

DBT_PROJECT_ENV = "CLARO_DBT_PROJECT"
#: Key prefix and group of the dbt models in the graph (`dbt/quality_by_brand`).
DBT_PREFIX = "dbt"
#: The source table meta that names the catalogue whose `records` asset writes the table.
CATALOGUE_META = "claro_catalogue"
#: Folders of a dbt project that are its output, not its definition.
_OUTPUT_DIRS = {"target", "logs", "dbt_packages", "dbt_internal_packages"}
_ENV_LOCK = threading.Lock()


def dbt_project_setting() -> Path | None:
    """The dbt project $CLARO_DBT_PROJECT names (None: no dbt models in the definitions)."""
    value = os.environ.get(DBT_PROJECT_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def dbt_executable() -> str:
    """The `dbt` beside this Python (the venv's), so it is found when the venv is not activated."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else "dbt"


def connection_env(url: str | sa.URL) -> dict[str, str]:
    """The profile's variables (examples/dbt/profiles.yml) for the catalogue store at `url`: the database the
    models read from and are built in. A search_path in the URL's options is the schema of the store's tables."""
    parsed = sa.engine.make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"the dbt models read the catalogue store in PostgreSQL, and this project's store is "
                         f"{parsed.get_backend_name()} ({parsed.render_as_string(hide_password=True)}): set "
                         "CLARO_DATABASE_URL to a PostgreSQL database and publish the catalogue there")
    env = {
        "CLARO_DBT_HOST": parsed.host or "127.0.0.1",
        "CLARO_DBT_PORT": str(parsed.port or 5432),
        "CLARO_DBT_USER": parsed.username or "postgres",
        "DBT_ENV_SECRET_CLARO_PASSWORD": parsed.password or "",
        "CLARO_DBT_DBNAME": parsed.database or "postgres",
    }
    options = parsed.query.get("options") or ""
    search_path = re.search(r"search_path\s*=\s*([^\s,]+)", options if isinstance(options, str) else options[0])
    if search_path:
        env["CLARO_DBT_SOURCE_SCHEMA"] = search_path.group(1)
    return env


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` while dbt is started: dagster-dbt hands dbt this process's environment (the dbt
    process keeps its copy, so it is restored as soon as dbt has started)."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _newest_definition(project_dir: Path) -> int:
    newest = 0
    for root, dirs, files in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d not in _OUTPUT_DIRS and not d.startswith(".")]
        for name in files:
            newest = max(newest, (Path(root) / name).stat().st_mtime_ns)
    return newest


def prepare_manifest(project_dir: Path, target_dir: Path, profiles_dir: Path | None) -> Path:
    """`target_dir/manifest.json` of the dbt project, from `dbt parse` when missing or older than the project."""
    project_dir, target_dir = project_dir.resolve(), target_dir.resolve()
    if not (project_dir / "dbt_project.yml").is_file():
        raise ValueError(f"{DBT_PROJECT_ENV}={project_dir}: no dbt_project.yml there; point it at a dbt project "
                         "folder (the bundled example is examples/dbt)")
    manifest = target_dir / "manifest.json"
    if manifest.exists() and manifest.stat().st_mtime_ns >= _newest_definition(project_dir):
        return manifest
    target_dir.mkdir(parents=True, exist_ok=True)
    command = [dbt_executable(), "parse", "--project-dir", str(project_dir), "--target-path", str(target_dir),
               "--log-path", str(target_dir)]
    if profiles_dir is not None:
        command += ["--profiles-dir", str(profiles_dir.resolve())]
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_LOG_FORMAT": "text",
           "DBT_USE_COLORS": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=project_dir)
    if done.returncode != 0 or not manifest.exists():
        said = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if line.strip())[-2000:]
        raise ValueError(f"{DBT_PROJECT_ENV}={project_dir}: `dbt parse` failed (exit {done.returncode}); fix the "
                         f"dbt project and reload:\n{said}")
    return manifest


def _catalogue_of(props: Mapping[str, Any]) -> str | None:
    meta = {**(props.get("meta") or {}), **((props.get("config") or {}).get("meta") or {})}
    return meta.get(CATALOGUE_META)


def translator(spec: ProjectSpec):
    """Sources -> `<catalogue>/records` of the spec's catalogues; models -> `dbt/<model>` in group `dbt`."""
    from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings

    class CatalogueDbtTranslator(DagsterDbtTranslator):
        def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
            if dbt_resource_props["resource_type"] == "source":
                catalogue = _catalogue_of(dbt_resource_props)
                if catalogue is not None:
                    if catalogue not in spec.catalogues:
                        raise ValueError(
                            f"{dbt_resource_props.get('original_file_path')}: source "
                            f"{dbt_resource_props['source_name']}.{dbt_resource_props['name']} says "
                            f"{CATALOGUE_META}: {catalogue!r}, which is not a catalogue of the spec (it has "
                            f"{', '.join(spec.catalogues)}); name one of those")
                    return dg.AssetKey([catalogue, "records"])
                return super().get_asset_key(dbt_resource_props)
            return super().get_asset_key(dbt_resource_props).with_prefix(DBT_PREFIX)

        def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
            return DBT_PREFIX

    # Several source tables are written by one `records` asset (its table, the shared history and provenance).
    return CatalogueDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_duplicate_source_asset_keys=True))


def watched_records(models: dg.AssetsDefinition) -> list[dg.AssetKey]:
    """The `<catalogue>/records` assets the models read: a published batch there is new input for `dbt build`."""
    return sorted({k for k in models.dependency_keys if k not in models.keys and k.path[-1] == "records"},
                  key=lambda k: k.path)


def build_dbt_sensors(models: dg.AssetsDefinition, job, project_name: str) -> list[dg.SensorDefinition]:
    """`dbt_build_after_<catalogue>`: a run of `job` (all the models) after each batch a catalogue they read
    publishes, so the marts follow the catalogue (running by default, like the other chained pipelines)."""
    from claro_dagster.sensors.chaining import build_completion_sensor

    return [build_completion_sensor(f"dbt_build_after_{watched.path[0]}", watched, list(models.keys),
                                    run_config={}, tags={"claro/catalogue": watched.path[0]}, job=job,
                                    description=f"dbt build of {project_name} after each batch "
                                                f"{watched.path[0]} publishes")
            for watched in watched_records(models)]


def store_is_postgres() -> bool:
    """Whether this environment's catalogue store ($CLARO_DATABASE_URL) is PostgreSQL, where the models run."""
    url = os.environ.get("CLARO_DATABASE_URL", "")
    return url.startswith(("postgresql", "postgres:"))


def build_dbt_assets(project_dir: Path, spec: ProjectSpec, home: Path) -> tuple[dg.AssetsDefinition, Any]:
    """The dbt project's models as one multi-asset (tests as asset checks) and the `dbt` resource that runs it."""
    try:
        from dagster_dbt import DbtCliResource, dbt_assets
    except ImportError:  # an optional extra
        raise ValueError(f"{DBT_PROJECT_ENV} is set but dagster-dbt is not installed: "
                         "pip install 'claro-dagster[dbt]'") from None

    project_dir = project_dir.resolve()
    profiles_dir = project_dir if (project_dir / "profiles.yml").is_file() else None
    target_dir = home / "dbt" / "target"
    # Read here, not handed over as a path: dagster-dbt caches a manifest per path for the life of the process.
    manifest = json.loads(prepare_manifest(project_dir, target_dir, profiles_dir).read_text(encoding="utf-8"))

    @dbt_assets(manifest=manifest, dagster_dbt_translator=translator(spec), name="dbt_models")
    def dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, claro: CatalogueResource):
        """`dbt build` of the selected models and their tests, in the catalogue store's database."""
        try:
            env = connection_env(claro.store.engine.url)
        except ValueError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
        with environment(env):
            invocation = dbt.cli(["build"], context=context, target_path=target_dir / "runs" / context.run_id[:8])
        yield from invocation.stream()

    resource = DbtCliResource(project_dir=str(project_dir), dbt_executable=dbt_executable(),
                              **({"profiles_dir": str(profiles_dir)} if profiles_dir else {}))
    return dbt_models, resource
