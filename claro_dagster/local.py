"""Running the pipelines in-process (`claro run`) and the local Dagster instance under the project home."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG  # the daemon's own tags (no public name)

from claro_dagster.assets.catalogue_ops import missing_env
from claro_dagster.assets.onboarding import INBOX_KINDS, acknowledge_duplicate, stages_of
from claro_dagster.catalogue.batches import Batch, BatchRegistry, batch_key, content_version
from claro_dagster.definitions import (
    build_definitions,
    destinations_job_name,
    inbound_sensor_name,
    onboarding_pipelines,
    op_config,
    operation_job_name,
)
from claro_dagster.dev import WEBSERVER_URL_ENV, webserver_url
from claro_dagster.progress import progress as progress_bar
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.resources.inbox import Inbox
from claro_dagster.sensors.chaining import completion_run_key
from claro_dagster.sensors.inbound import TAG_BATCH, TAG_SOURCE, TAG_URI, TAG_VERSION, inbox_run_key
from claro_dagster.sensors.notifications import record_run
from claro_dagster.spec import DEMO_DIR

REPO_INSTANCE_CONFIG = Path(__file__).resolve().parents[1] / "dagster.yaml"


def dagster_home(home: Path) -> Path:
    """`<home>/dagster`, holding the embedded instance config, shared by `claro run` and `claro dev`."""
    path = home / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists() and REPO_INSTANCE_CONFIG.exists():
        shutil.copyfile(REPO_INSTANCE_CONFIG, config)
    return path


def instance_for(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(dagster_home(home)))


def seed_demo_inboxes(claro: CatalogueResource) -> list[Path]:
    """Copy the bundled demo's supplier files into the demo sources' inboxes (once per file content)."""
    if Path(claro.spec_path).resolve() != (DEMO_DIR / "claro.yaml").resolve():
        return []
    registry = BatchRegistry(claro.store)
    copied = []
    for mapping in sorted((DEMO_DIR / "mappings").rglob("*.yaml")):  # the demo ships its confirmed mappings
        target = claro.home_dir / "mappings" / mapping.relative_to(DEMO_DIR / "mappings")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mapping, target)
    for folder in sorted(p for p in (DEMO_DIR / "inbox").iterdir() if p.is_dir()):
        source = next((n for n, s in claro.spec.sources.items() if s.path and Path(s.path).name == folder.name), None)
        if source is None:
            continue
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            if registry.copy_of(source, file.name, content_version(file), published=False) is not None:
                continue  # this demo file was received before (by `claro run` or by a sensor)
            inbox = claro.inbox_dir(source)
            if not (inbox / file.name).exists():
                copied.append(Inbox(inbox).upload(file))
    return copied


def catalogue_order(claro: CatalogueResource) -> list[str]:
    """Catalogues others reference come first (suppliers before products), so references resolve."""
    spec = claro.spec
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in order or name in path:
            return
        for attr in spec.catalogues[name].attributes.values():
            if attr.type == "reference" and attr.target and attr.target != name:
                visit(attr.target, (*path, name))
        order.append(name)

    for name in spec.catalogues:
        visit(name)
    return order


def receive(claro: CatalogueResource, source: str, path: Path, version: str | None = None) -> Batch:
    """Register a file waiting in a source's inbox as a batch (once per content; a batch not published yet is
    received again from this copy)."""
    version = version or content_version(path)
    return BatchRegistry(claro.store).receive(
        batch_key(source, path.name, version), catalogue=claro.spec.sources[source].catalogue, source=source,
        filename=path.name, uri=str(Path(path).resolve()), content_version=version)


#: The console shows what `claro run` prints; each run's full log stays in the instance (`claro dev`).
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def sensor_tags(sensor: str, run_key: str) -> dict[str, str]:
    """The tags the sensor daemon puts on the runs a sensor requests. The daemon launches a run key once per
    sensor, and counts a run with these tags as launched, so a sensor that later asks for the same thing (the same
    file, the same completion) finds it done (`fetch_existing_runs` in dagster/_daemon/sensor.py)."""
    return {RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor}


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, *,
            selection: list[dg.AssetKey] | None = None, partition_key: str | None = None,
            tags: dict[str, str] | None = None, run_config: dict | None = None,
            quiet: bool = True) -> dg.ExecuteInProcessResult:
    """Run a job of the definitions in this process, recorded in `instance` under the job's name (as a run the
    daemon launches is), optionally on a subset of its assets."""
    config = {**(QUIET if quiet else {}), **(run_config or {})}
    return defs.resolve_job_def(job).execute_in_process(
        run_config=config or None, instance=instance, partition_key=partition_key, raise_on_error=False,
        asset_selection=selection, tags=tags)


def completion_tags(instance: dg.DagsterInstance, sensor: str, watched: dg.AssetKey) -> dict[str, str]:
    """The sensor tags of the run completion sensor `sensor` would request for the latest materialization of
    `watched` (none if it never materialized): running its job with them answers that completion."""
    records = instance.fetch_materializations(watched, limit=1).records
    if not records:
        return {}
    return sensor_tags(sensor, completion_run_key(sensor, records[0].run_id, records[0].partition_key))


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, object] | None:
    """The metadata of `key`'s materialization in a run (None: not materialized)."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return None


def announce_run(defs: dg.Definitions, instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> None:
    """Tell people about a run made in this process, as the run-status sensors do for the daemon's runs
    (they do not see in-process runs): its `run.*` events in the outbox and, with Slack configured, its alerts."""
    claro: CatalogueResource = defs.resources["claro"]
    slack = defs.resources.get("slack")
    if slack is not None:  # its token is an EnvVar, which Dagster resolves only for runs: resolve it here
        slack = slack.process_config_and_initialize()
    record_run(instance, result.dagster_run, claro.store, claro.spec, webserver_url(claro.home_dir), slack=slack)


def run_batch(defs: dg.Definitions, instance: dg.DagsterInstance, batch: Batch,
              stages: tuple[str, ...] | None = None, *, quiet: bool = False, notify: bool = True,
              tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    """Run a batch's stages in this process as a run of its pipeline's job (the job the inbound sensors launch)
    and record the run (`notify=False` leaves that to the run-status sensors, as for a run the daemon launched)."""
    claro: CatalogueResource = defs.resources["claro"]
    pipeline_name = onboarding_pipelines(claro.spec)[batch.catalogue]
    every = stages_of(claro.spec.pipelines[pipeline_name])
    stages = every if stages is None else stages
    instance.add_dynamic_partitions(f"{batch.catalogue}_batches", [batch.key])
    result = execute(defs, instance, pipeline_name, partition_key=batch.key, quiet=quiet,
                     selection=None if set(stages) == set(every) else [dg.AssetKey([batch.catalogue, s])
                                                                       for s in stages],
                     tags={TAG_SOURCE: batch.source, **(tags or {})})
    if notify:
        announce_run(defs, instance, result)
    return result


@dataclass
class QualityScore:
    """What `claro run` says of a catalogue's data-quality report (the full report is the `analyse` run's)."""

    records: int
    score: float
    critical: int


@dataclass
class RunSummary:
    batches: list[Batch] = field(default_factory=list)
    reports: dict[str, QualityScore | None] = field(default_factory=dict)  # None: analyse failed
    exports: dict[str, Path | None] = field(default_factory=dict)  # None: export failed
    destinations: dict[str, str] = field(default_factory=dict)
    chained: dict[str, str] = field(default_factory=dict)
    review_queue: int = 0
    runs: list[dg.DagsterRun] = field(default_factory=list)


FAILED = "failed: see the run in `claro dev`"


def run_everything(spec_path: Path | None = None, home: Path | None = None, *, export_format: str = "csv",
                   progress=print, bar: bool = True) -> RunSummary:
    """Receive every pending inbox file as a batch and run its pipeline, then Analyse, Export and the
    destinations whose settings are present, then the chained pipelines; all in this process, each a run of the
    job of its pipeline or operation in the local instance (the one `claro dev` shows). Runs a sensor of
    `claro dev` would otherwise request again carry that sensor's run key, so `claro dev` does not repeat them.

    `progress(message)` says what happens; `bar` shows a progress bar of the batches on stderr."""
    defs = build_definitions(spec_path, home)
    claro: CatalogueResource = defs.resources["claro"]
    with instance_for(claro.home_dir) as instance:  # entered: Dagster finds its storages while the runs load
        return _run_everything(defs, instance, export_format, progress, bar)


def _run_everything(defs: dg.Definitions, instance: dg.DagsterInstance, export_format: str, progress,
                    bar: bool) -> RunSummary:
    claro: CatalogueResource = defs.resources["claro"]
    spec = claro.spec
    seed_demo_inboxes(claro)
    registry = BatchRegistry(claro.store)
    summary = RunSummary()
    pipelines = onboarding_pipelines(spec)
    order = [c for c in catalogue_order(claro) if c in pipelines]
    waiting: dict[str, list[tuple[str, object]]] = {c: [] for c in order}
    for catalogue in order:  # listed first, so the bar knows how many batches there are
        for source in spec.pipelines[pipelines[catalogue]].sources:
            if spec.sources[source].kind not in INBOX_KINDS:
                sensor = f"{source}_{spec.sources[source].kind}"
                progress(f"{catalogue}: source {source} is received by its {sensor} sensor (`claro dev`), not here")
                continue
            # Named as the inbox sensor names them (name, size and modification time; the run hashes the content), so
            # the run of a file carries the run key the sensor would request for it.
            waiting[catalogue] += [(source, item) for item in Inbox(claro.inbox_dir(source)).pending(
                read_contents=False)]

    def record(result: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
        announce_run(defs, instance, result)
        summary.runs.append(result.dagster_run)
        return result

    with progress_bar("claro run", total=sum(map(len, waiting.values())), unit="batches",
                      stream=None if bar else io.StringIO()) as batches:
        for catalogue in order:
            pipeline_name = pipelines[catalogue]
            pipeline = spec.pipelines[pipeline_name]
            for source, item in waiting[catalogue]:
                batch = receive(claro, source, item.path, item.version)
                if batch.published:  # the same file again: nothing new in it
                    acknowledge_duplicate(claro, batch, item.path)
                    batches.advance(1)
                    continue
                progress(f"{catalogue}: batch {batch.key} ({item.name})")
                kind = spec.sources[source].kind
                tags = {TAG_URI: str(item.path.resolve()), TAG_VERSION: item.version, TAG_BATCH: batch.key,
                        **sensor_tags(inbound_sensor_name(source, kind),
                                      inbox_run_key(Inbox(claro.inbox_dir(source)), batch.key))}
                result = run_batch(defs, instance, batch, quiet=True, notify=False, tags=tags)
                record(result)
                batches.advance(1)
                raw = metadata(result, dg.AssetKey([catalogue, "batch_raw"]))
                done = registry.get(batch.key)
                if done is None or (raw is None and result.success):  # batch_raw found its content published
                    progress("  the same content as a published batch: acknowledged, moved to processed/")
                    continue
                summary.batches.append(done)
                rows = raw.get("rows") if raw else None
                progress(f"  {rows:,} rows, {done.status}" if isinstance(rows, int) else f"  {done.status}")
            run_operations(defs, instance, catalogue, summary, export_format, record)
            run_destinations(defs, instance, pipeline_name, summary, record)
    asset_keys = {key for asset in defs.assets or () for key in asset.keys}
    for name, pipeline in spec.pipelines.items():  # chained pipelines (the daemon's sensors start them)
        if pipeline.after is None or not pipeline.operations:
            continue
        keys = [dg.AssetKey([pipeline.catalogue, op]) for op in pipeline.operations]
        skipped = [d for d in pipeline.destinations if missing_env(spec.destinations[d])]
        keys += [dg.AssetKey([pipeline.catalogue, d]) for d in pipeline.destinations
                 if d not in skipped and dg.AssetKey([pipeline.catalogue, d]) in asset_keys]
        watched = dg.AssetKey([pipeline.after.catalogue, pipeline.after.operation])
        result = record(execute(defs, instance, name, selection=keys, run_config=op_config(keys, pipeline.filter),
                                tags=completion_tags(instance, name, watched)))
        summary.chained[name] = ("done" if result.success else FAILED) + \
            (f" (skipped {', '.join(f'{d}: set {missing_env(spec.destinations[d])}' for d in skipped)})"
             if skipped else "")
    from claro_dagster.catalogue.review import ReviewQueue

    summary.review_queue = len(ReviewQueue(claro.store).list())
    return summary


def run_operations(defs: dg.Definitions, instance: dg.DagsterInstance, catalogue: str, summary: RunSummary,
                   export_format: str, record) -> None:
    """Analyse and Export one catalogue, each a run of its operation's job."""
    key = dg.AssetKey([catalogue, "analyse"])
    report = metadata(record(execute(defs, instance, operation_job_name(catalogue, "analyse"))), key)
    summary.reports[catalogue] = None if report is None else QualityScore(
        records=int(report["records"]), score=float(report["score"]), critical=int(report["critical_issues"]))
    key = dg.AssetKey([catalogue, "export"])
    exported = metadata(record(execute(defs, instance, operation_job_name(catalogue, "export"),
                                       run_config={"ops": {"__".join(key.path): {"config": {
                                           "format": export_format}}}})), key)
    summary.exports[catalogue] = None if exported is None else Path(str(exported["path"]))


def run_destinations(defs: dg.Definitions, instance: dg.DagsterInstance, pipeline_name: str, summary: RunSummary,
                     record) -> None:
    """Sync an onboarding pipeline's destinations whose settings are present, as one run of the job its
    destinations sensor launches after a batch publishes (answering the latest publication, as that sensor would)."""
    claro: CatalogueResource = defs.resources["claro"]
    spec = claro.spec
    pipeline = spec.pipelines[pipeline_name]
    configured = []
    for dest_name in pipeline.destinations:
        needed = missing_env(spec.destinations[dest_name])
        if needed:
            summary.destinations[dest_name] = f"skipped: set {needed} to enable it"
        else:
            configured.append(dest_name)
    if not configured:
        return
    job = destinations_job_name(pipeline_name)
    if job not in {j.name for j in defs.jobs or ()}:
        for dest_name in configured:
            summary.destinations[dest_name] = "not available yet for this kind of destination"
        return
    published = dg.AssetKey([pipeline.catalogue, stages_of(pipeline)[-1]])
    result = record(execute(defs, instance, job, tags=completion_tags(instance, job, published)))
    for dest_name in configured:
        synced = metadata(result, dg.AssetKey([spec.destinations[dest_name].catalogue, dest_name])) is not None
        summary.destinations[dest_name] = "synced" if synced else FAILED


def dev_environment(home: Path, spec_path: Path, webserver_url: str | None = None) -> dict[str, str]:
    """Environment for `dagster dev` on this project: the shared instance, the same home and spec, and the address
    of its UI (`webserver_url`), which every link its daemon and code servers make points at."""
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(dagster_home(home)), CLARO_HOME=str(home), CLARO_SPEC=str(spec_path))
    if webserver_url:
        env[WEBSERVER_URL_ENV] = webserver_url
    return env
