"""Running the pipelines in-process (`claro run`) and the local Dagster instance under the project home."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from claro_dagster.assets.catalogue_ops import missing_env, run_analyse, run_export
from claro_dagster.assets.onboarding import INBOX_KINDS, acknowledge_duplicate, stages_of
from claro_dagster.catalogue.batches import Batch, BatchRegistry, batch_key, content_version
from claro_dagster.definitions import build_definitions, onboarding_pipelines, op_config
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.resources.inbox import Inbox
from claro_dagster.sensors.notifications import default_webserver_url, record_run
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


def announce_run(defs: dg.Definitions, instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> None:
    """Tell people about a run made in this process, as the run-status sensors do for the daemon's runs
    (they do not see in-process runs): its `run.*` events in the outbox and, with Slack configured, its alerts."""
    claro: CatalogueResource = defs.resources["claro"]
    slack = defs.resources.get("slack")
    if slack is not None:  # its token is an EnvVar, which Dagster resolves only for runs: resolve it here
        slack = slack.process_config_and_initialize()
    record_run(instance, result.dagster_run, claro.store, claro.spec, default_webserver_url(), slack=slack)


def run_batch(defs: dg.Definitions, instance: dg.DagsterInstance, batch: Batch,
              stages: tuple[str, ...] | None = None, *, quiet: bool = False,
              notify: bool = True) -> dg.ExecuteInProcessResult:
    """Materialize a batch's stages in this process (the same assets the sensors launch) and record the run
    (`notify=False` leaves that to the run-status sensors, as for a run the daemon launched)."""
    claro: CatalogueResource = defs.resources["claro"]
    if stages is None:
        stages = stages_of(claro.spec.pipelines[onboarding_pipelines(claro.spec)[batch.catalogue]])
    instance.add_dynamic_partitions(f"{batch.catalogue}_batches", [batch.key])
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey([batch.catalogue, s]) for s in stages],
                            partition_key=batch.key, instance=instance, resources=defs.resources,
                            raise_on_error=False, tags={"claro/source": batch.source},
                            run_config=QUIET if quiet else None)
    if notify:
        announce_run(defs, instance, result)
    return result


@dataclass
class RunSummary:
    batches: list[Batch] = field(default_factory=list)
    reports: dict[str, object] = field(default_factory=dict)
    exports: dict[str, Path] = field(default_factory=dict)
    destinations: dict[str, str] = field(default_factory=dict)
    chained: dict[str, str] = field(default_factory=dict)
    review_queue: int = 0


def run_everything(spec_path: Path | None = None, home: Path | None = None, *, export_format: str = "csv",
                   progress=print) -> RunSummary:
    """Receive every pending inbox file as a batch and run its pipeline, then Analyse, Export and the
    destinations whose settings are present; all in this process, recorded in the local instance."""
    defs = build_definitions(spec_path, home)
    claro: CatalogueResource = defs.resources["claro"]
    instance = instance_for(claro.home_dir)
    seed_demo_inboxes(claro)
    registry = BatchRegistry(claro.store)
    summary = RunSummary()
    pipelines = onboarding_pipelines(claro.spec)
    assets = list(defs.assets)
    for catalogue in catalogue_order(claro):
        if catalogue not in pipelines:
            continue
        pipeline = claro.spec.pipelines[pipelines[catalogue]]
        for source in pipeline.sources:
            if claro.spec.sources[source].kind not in INBOX_KINDS:
                progress(f"{catalogue}: source {source} is received by its {source}_s3 sensor (`claro dev`), not here")
                continue
            for item in Inbox(claro.inbox_dir(source)).pending():
                batch = receive(claro, source, item.path, item.version)
                if batch.published:  # the same file again: nothing new in it
                    acknowledge_duplicate(claro, batch, item.path)
                    continue
                progress(f"{catalogue}: batch {batch.key} ({item.name})")
                run_batch(defs, instance, batch, quiet=True)
                summary.batches.append(registry.get(batch.key))
        summary.reports[catalogue] = run_analyse(claro, catalogue, None)
        summary.exports[catalogue] = run_export(claro, catalogue, export_format, None, None, "claro-run").path
        for dest_name in pipeline.destinations:
            dest = claro.spec.destinations[dest_name]
            needed = missing_env(dest)
            if needed:
                summary.destinations[dest_name] = f"skipped: set {needed} to enable it"
                continue
            result = dg.materialize(assets, selection=[dg.AssetKey([catalogue, dest_name])], instance=instance,
                                    resources=defs.resources, raise_on_error=False, run_config=QUIET)
            announce_run(defs, instance, result)
            summary.destinations[dest_name] = "synced" if result.success else "failed: see the run in `claro dev`"
    for name, pipeline in claro.spec.pipelines.items():  # chained pipelines (the daemon's sensors start them)
        if pipeline.after is None or not pipeline.operations:
            continue
        keys = [dg.AssetKey([pipeline.catalogue, op]) for op in pipeline.operations]
        result = dg.materialize(assets, selection=keys, instance=instance, resources=defs.resources,
                                raise_on_error=False, run_config={**QUIET, **op_config(keys, pipeline.filter)})
        announce_run(defs, instance, result)
        summary.chained[name] = "done" if result.success else "failed: see the run in `claro dev`"
    from claro_dagster.catalogue.review import ReviewQueue

    summary.review_queue = len(ReviewQueue(claro.store).list())
    return summary


def dev_environment(home: Path, spec_path: Path) -> dict[str, str]:
    """Environment for `dagster dev` on this project: the shared instance and the same home and spec."""
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(dagster_home(home)), CLARO_HOME=str(home), CLARO_SPEC=str(spec_path))
    return env
