"""The one Definitions object: spec -> factories -> assets, checks, sensors, schedules, resources.

The spec is $CLARO_SPEC, else ./claro.yaml, else the bundled demo; the project home is $CLARO_HOME
(default ./.claro): the embedded SQLite store, received batches, stage outputs, mappings, exports.

Importing this module has no side effects and reads no spec: `defs` is a `@dg.definitions` function that
Dagster calls when it loads the code location, so `claro --spec X run` (which imports `build_definitions`)
never reads ./claro.yaml, and a broken spec fails where the definitions are asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from claro_dagster.assets.catalogue_ops import (
    build_analyse,
    build_destination,
    build_export,
    build_validate,
    destination_resource,
    destination_resource_key,
    missing_env,
    operation_job_name,
)
from claro_dagster.assets.dbt_models import build_dbt_assets, build_dbt_sensors, dbt_project_setting, store_is_postgres
from claro_dagster.assets.dedupe import build_dedupe
from claro_dagster.assets.enrich import build_enrich
from claro_dagster.assets.onboarding import INBOX_KINDS, batches_partitions, build_onboarding, stages_of
from claro_dagster.catalogue.schema import default_home
from claro_dagster.deployment import current_deployment, executor_for
from claro_dagster.dev import webserver_url as dev_webserver_url
from claro_dagster.resources import drive
from claro_dagster.resources.catalogue import BatchFrameIOManager, CatalogueResource, database_url_setting
from claro_dagster.resources.s3 import S3Connection, source_resource_key
from claro_dagster.resources.slack import SlackNotifier
from claro_dagster.run_logs import run_loggers
from claro_dagster.schedules import build_schedules
from claro_dagster.schedules.retention import build_retention_schedule
from claro_dagster.sensors.chaining import build_completion_sensor, build_review_checkpoint_sensor
from claro_dagster.sensors.inbound import (
    bigquery_source_resource_key,
    build_bigquery_sensor,
    build_db_source_sensor,
    build_drive_sensor,
    build_inbox_sensor,
    build_s3_sensor,
)
from claro_dagster.sensors.notifications import build_notification_sensors, slack_configured
from claro_dagster.sensors.stuck_batches import build_stuck_batch_sensor
from claro_dagster.spec import default_spec_path, load_spec
from claro_dagster.spec.models import ProjectSpec, SourceSpec

if TYPE_CHECKING:  # what `define_asset_job` returns (Dagster does not export the class)
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition


def onboarding_pipelines(spec: ProjectSpec) -> dict[str, str]:
    """catalogue -> the pipeline that onboards batches into it (one per catalogue: its stage assets are
    `<catalogue>/<stage>`). Pipelines started by `after` run catalogue operations instead."""
    owners: dict[str, str] = {}
    for name, pipeline in spec.pipelines.items():
        if pipeline.after is not None:
            continue
        if pipeline.catalogue in owners:
            raise ValueError(f"pipelines {owners[pipeline.catalogue]!r} and {name!r} both onboard catalogue "
                             f"{pipeline.catalogue!r}; give each catalogue one onboarding pipeline")
        owners[pipeline.catalogue] = name
    return owners


def op_config(keys: list[dg.AssetKey], filter: str | None) -> dict:
    """Run config giving each catalogue-level operation the record filter (their configs all take `filter`)."""
    return {"ops": {"__".join(k.path): {"config": {"filter": filter}} for k in keys}} if filter else {}


def inbound_sensor_name(source_name: str, kind: str) -> str:
    """The sensor that receives a source's files (`<source>_<kind>`): its run keys say what was received."""
    return f"{source_name}_{kind}"


def destinations_job_name(pipeline_name: str) -> str:
    """The job (and sensor) syncing an onboarding pipeline's configured destinations after each batch."""
    return f"{pipeline_name}_destinations"


def drive_source_sensor(source_name: str, source: SourceSpec, claro: CatalogueResource,
                        job: UnresolvedAssetJobDefinition, partitions: dg.DynamicPartitionsDefinition,
                        resources: dict[str, object]) -> dg.SensorDefinition:
    """The sensor of a `kind: drive` source, and its own connection (its key file and endpoint variables)."""
    key = drive.source_resource_key(source_name)
    resources[key] = drive.DriveConnection(credentials_env=source.credentials_env or "",
                                           endpoint_url_env=source.endpoint_url_env)
    return build_drive_sensor(inbound_sensor_name(source_name, "drive"), source_name, source.folder_id or "",
                              claro.inbox_dir(source_name), target=job, partitions_def=partitions, resource_key=key,
                              drive_id=source.drive_id, max_file_bytes=int(source.max_file_mb * 1024 * 1024))


def bigquery_source_sensor(source_name: str, source, batch_job, partitions, resources: dict) -> dg.SensorDefinition:
    """A BigQuery source's pull sensor and its connection (resource `source_<name>_bigquery`)."""
    from claro_dagster.resources.bigquery import BigQueryConnection

    key = bigquery_source_resource_key(source_name)
    resources[key] = BigQueryConnection(project=source.project, endpoint_url_env=source.endpoint_url_env,
                                        credentials_env=source.credentials_env)
    return build_bigquery_sensor(inbound_sensor_name(source_name, "bigquery"), source_name, source,
                                 target=batch_job, partitions_def=partitions, resource_key=key)


def scrape_source_sensor(source_name: str, source, batch_job, partitions, resources: dict) -> dg.SensorDefinition:
    """A scrape source's sensor and its connection (resource `source_<name>_scrape`)."""
    from claro_dagster.sensors.inbound import ScrapeConnection, build_scrape_sensor, scrape_source_resource_key

    key = scrape_source_resource_key(source_name)
    resources[key] = ScrapeConnection(user_agent=source.user_agent, delay_seconds=source.delay_seconds,
                                      allow_hosts=list(source.allow_hosts))
    return build_scrape_sensor(inbound_sensor_name(source_name, "scrape"), source_name, source,
                               target=batch_job, partitions_def=partitions, resource_key=key)


def db_source_sensor(source_name: str, source: SourceSpec, batch_job, partitions) -> dg.SensorDefinition:
    """A PostgreSQL / Supabase source's pull sensor (`<source>_postgres` or `<source>_supabase`); the URL is read
    from the source's `url_env` at each tick, so a missing variable fails the tick, naming it."""
    return build_db_source_sensor(inbound_sensor_name(source_name, source.kind), source_name, source,
                                  target=batch_job, partitions_def=partitions)


def http_source_sensor(source_name: str, source, batch_job, partitions) -> dg.SensorDefinition:
    """An HTTP source's pull sensor (its schedule from `http.every` / `http.interval_seconds`)."""
    from claro_dagster.sensors.inbound import build_http_sensor

    return build_http_sensor(inbound_sensor_name(source_name, "http"), source_name, source, target=batch_job,
                             partitions_def=partitions)


def email_source_sensor(source_name: str, source, batch_job, partitions) -> dg.SensorDefinition:
    """An email source's mailbox sensor (`<source>_email`, polled every `email.interval_seconds`)."""
    from claro_dagster.sensors.inbound import build_email_sensor

    return build_email_sensor(inbound_sensor_name(source_name, "email"), source_name, source, target=batch_job,
                              partitions_def=partitions)


def build_definitions(spec_path: Path | None = None, home: Path | None = None) -> dg.Definitions:
    spec_path = Path(spec_path or default_spec_path()).resolve()
    home = Path(home or default_home()).resolve()
    spec = load_spec(spec_path)
    # CLARO_DEPLOYMENT (local | prod) chooses the store and the executor; prod fails here, naming what is missing.
    deployment = current_deployment()
    # The store is the deployment's decision too: the variable (shown by name in the UI) or the embedded one.
    claro = CatalogueResource(spec_path=str(spec_path), home=str(home),
                              database_url=database_url_setting() if deployment.store != "embedded" else None)
    assets, sensors = [], []
    # Every run, whoever starts it (`claro run`, a sensor, the UI), is a run of a job named after its pipeline or
    # operation, so the UI, the command line and Slack name it the same way.
    jobs: dict[str, UnresolvedAssetJobDefinition] = {}

    def job(name: str, selection: list[dg.AssetKey], description: str, **kwargs) -> UnresolvedAssetJobDefinition:
        if name in jobs:
            raise ValueError(f"two jobs would be named {name!r} (a pipeline's name is also '<catalogue>_<operation>' "
                             "or '<pipeline>_destinations' of another): rename the pipeline in the spec")
        jobs[name] = dg.define_asset_job(name, selection=selection, description=description, **kwargs)
        return jobs[name]

    resources: dict[str, object] = {
        "claro": claro,
        "batch_frames": BatchFrameIOManager(base_dir=str(home / "stages")),
    }
    onboarding = onboarding_pipelines(spec)
    destinations: dict[str, dg.AssetKey] = {}

    def destination(dest_name: str, after: list[dg.AssetKey]) -> dg.AssetKey | None:
        if dest_name not in destinations:
            dest = spec.destinations[dest_name]
            asset = build_destination(dest_name, dest, after)
            if asset is None:
                return None
            assets.append(asset)
            resources[destination_resource_key(dest_name)] = destination_resource(dest)
            destinations[dest_name] = asset.key
            # the run tag dagster.prod.yaml's tag_concurrency_limits keys on: one run per destination at a time
            job(operation_job_name(dest.catalogue, dest_name), [asset.key], f"Sync {dest.catalogue} to {dest_name}",
                tags={"claro/destination": dest_name, "claro/connector": dest.kind})
        return destinations[dest_name]

    for catalogue in spec.catalogues:
        records = [dg.AssetKey([catalogue, "records"])] if catalogue in onboarding else []
        operations = [build_analyse(catalogue, records), build_export(catalogue, records),
                      build_validate(catalogue, records), build_dedupe(catalogue, records),
                      build_enrich(catalogue, records)]
        assets += operations
        for operation in operations:
            job(operation_job_name(catalogue, operation.key.path[-1]), [operation.key],
                f"{operation.key.to_user_string()}: {operation.descriptions_by_key[operation.key]}",
                tags={"claro/catalogue": catalogue})
    for monitor_name, monitor in spec.monitors.items():  # `<catalogue>/<monitor>`, job `<catalogue>_<monitor>`
        from claro_dagster.assets.monitors import build_monitor

        asset = build_monitor(monitor_name, monitor)
        assets.append(asset)
        job(operation_job_name(monitor.catalogue, monitor_name), [asset.key], asset.descriptions_by_key[asset.key],
            tags={"claro/catalogue": monitor.catalogue, "claro/monitor": monitor_name})
    for catalogue, pipeline_name in onboarding.items():
        pipeline = spec.pipelines[pipeline_name]
        partitions = batches_partitions(catalogue)
        # Each S3 source has its own connection and endpoint. The endpoint variable is read when the connection
        # is used, so an S3 source not configured here fails its own ticks and batches, not the inbox batches
        # of the same pipeline (batch_raw needs every S3 source's connection).
        s3_keys = {s: source_resource_key(s) for s in pipeline.sources if spec.sources[s].kind == "s3"}
        assets += build_onboarding(pipeline_name, pipeline, partitions, s3_resources=s3_keys)
        stages = [dg.AssetKey([catalogue, s]) for s in stages_of(pipeline)]
        published = stages[-1]  # records, or the review checkpoint after it
        batch_job = job(pipeline_name, stages, pipeline.description or f"Onboard a batch into {catalogue}",
                        partitions_def=partitions, tags={"claro/pipeline": pipeline_name, "claro/catalogue": catalogue})
        for source_name in pipeline.sources:
            source = spec.sources[source_name]
            if source.kind in INBOX_KINDS:  # upload: files dropped by `claro upload` (or the portal)
                sensors.append(build_inbox_sensor(
                    inbound_sensor_name(source_name, source.kind), source_name, claro.inbox_dir(source_name),
                    target=batch_job, partitions_def=partitions, min_age_seconds=1.0))
            elif source.kind == "s3":
                resources[s3_keys[source_name]] = S3Connection(endpoint_url_env=source.endpoint_url_env)
                sensors.append(build_s3_sensor(inbound_sensor_name(source_name, "s3"), source_name, source.bucket,
                                               source.prefix, target=batch_job, partitions_def=partitions,
                                               resource_key=s3_keys[source_name]))
            elif source.kind == "drive":
                sensors.append(drive_source_sensor(source_name, source, claro, batch_job, partitions, resources))
            elif source.kind == "bigquery":
                sensors.append(bigquery_source_sensor(source_name, source, batch_job, partitions, resources))
            elif source.kind == "scrape":
                sensors.append(scrape_source_sensor(source_name, source, batch_job, partitions, resources))
            elif source.kind in ("postgres", "supabase"):
                sensors.append(db_source_sensor(source_name, source, batch_job, partitions))
            elif source.kind == "http":
                sensors.append(http_source_sensor(source_name, source, batch_job, partitions))
            elif source.kind == "email":
                sensors.append(email_source_sensor(source_name, source, batch_job, partitions))
        if pipeline.review_checkpoint:
            sensors.append(build_review_checkpoint_sensor(pipeline_name, catalogue, published, job=batch_job))
        # A destination whose settings are not in this environment keeps its asset (runnable by hand, with a
        # message naming the variable) but is left out of the automatic sync.
        configured = [d for d in pipeline.destinations if not missing_env(spec.destinations[d])]
        targets = [k for k in (destination(d, [published]) for d in pipeline.destinations) if k is not None
                   and k.path[-1] in configured]
        if targets:
            name = destinations_job_name(pipeline_name)
            description = f"Syncs {', '.join(configured)} after each batch {catalogue} publishes"
            tags = {"claro/pipeline": pipeline_name, "claro/catalogue": catalogue}
            # the run tags the queued run coordinator limits on, when this run syncs one destination (one kind)
            kinds = {spec.destinations[d].kind for d in configured}
            tags.update({"claro/destination": configured[0]} if len(configured) == 1 else {})
            tags.update({"claro/connector": kinds.pop()} if len(kinds) == 1 else {})
            sensors.append(build_completion_sensor(name, published, targets, run_config={}, tags=tags,
                                                   description=description,
                                                   job=job(name, targets, description, tags=tags)))
    for pipeline_name, pipeline in spec.pipelines.items():
        if pipeline.after is None:
            continue
        watched = dg.AssetKey([pipeline.after.catalogue, pipeline.after.operation])
        operations = [dg.AssetKey([pipeline.catalogue, op]) for op in pipeline.operations]
        targets = operations + [k for k in (destination(d, []) for d in pipeline.destinations) if k is not None]
        description = (f"Runs {', '.join(k.to_user_string() for k in targets)} whenever {watched.to_user_string()} "
                       "completes" + (f", for records where {pipeline.filter}" if pipeline.filter else ""))
        tags = {"claro/pipeline": pipeline_name, "claro/catalogue": pipeline.catalogue,
                **({"claro/filter": pipeline.filter} if pipeline.filter else {})}
        sensors.append(build_completion_sensor(
            pipeline_name, watched, targets, run_config=op_config(targets, pipeline.filter), tags=tags,
            description=description, job=job(pipeline_name, targets, description, tags=tags)))
    # A destination outside every pipeline still has its asset and job (below its catalogue's records when the
    # catalogue is onboarded), so `claro run`, the API, Slack and schedules can start it; no sensor syncs it.
    for dest_name, dest in spec.destinations.items():
        destination(dest_name, [dg.AssetKey([dest.catalogue, "records"])] if dest.catalogue in onboarding else [])
    dbt_project = dbt_project_setting()
    if dbt_project is not None:  # $CLARO_DBT_PROJECT: dbt models below the catalogues' records, tests as checks
        dbt_models, resources["dbt"] = build_dbt_assets(dbt_project, spec, home)
        assets.append(dbt_models)
        dbt_job = job("dbt_build", list(dbt_models.keys), f"dbt build of {dbt_project.name}: models and their tests")
        if store_is_postgres():  # on SQLite the models cannot run: no automatic runs that could only fail
            sensors += build_dbt_sensors(dbt_models, dbt_job, dbt_project.name)
    webserver_url = dev_webserver_url(home)  # where links point: $CLARO_WEBSERVER_URL, set by `claro dev --port`
    if slack_configured(spec):
        resources["slack"] = SlackNotifier(token=dg.EnvVar(spec.notifications.slack_token_env),
                                           base_url=spec.notifications.slack_api_url, webserver_url=webserver_url)
    sensors += [*build_notification_sensors(spec, webserver_url), build_stuck_batch_sensor()]
    schedules = [*build_schedules(spec, {key: a for a in assets for key in a.keys}, jobs),
                 build_retention_schedule(spec)]
    return dg.Definitions(assets=assets, sensors=sensors, schedules=schedules, resources=resources,
                          jobs=list(jobs.values()), executor=executor_for(deployment), loggers=run_loggers())


@dg.definitions
def defs() -> dg.Definitions:
    """The code location (workspace.yaml, `dagster dev -m claro_dagster.definitions`), built when Dagster loads it."""
    return build_definitions()
