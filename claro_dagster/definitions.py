"""The one Definitions object: spec -> factories -> assets, checks, sensors, schedules, resources.

The spec is $CLARO_SPEC, else ./claro.yaml, else the bundled demo; the project home is $CLARO_HOME
(default ./.claro): the embedded SQLite store, received batches, stage outputs, mappings, exports.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from claro_dagster.assets.catalogue_ops import (
    build_analyse,
    build_destination,
    build_export,
    destination_resource,
    destination_resource_key,
)
from claro_dagster.assets.onboarding import STAGES, batches_partitions, build_onboarding
from claro_dagster.catalogue.schema import default_home
from claro_dagster.resources.catalogue import BatchFrameIOManager, CatalogueResource
from claro_dagster.resources.s3 import S3Connection
from claro_dagster.resources.slack import SlackNotifier
from claro_dagster.schedules import build_schedules
from claro_dagster.sensors.inbound import build_inbox_sensor, build_s3_sensor
from claro_dagster.sensors.notifications import build_notification_sensors
from claro_dagster.spec import default_spec_path, load_spec
from claro_dagster.spec.models import ProjectSpec


def onboarding_pipelines(spec: ProjectSpec) -> dict[str, str]:
    """catalogue -> the pipeline that onboards it (one per catalogue: its stage assets are `<catalogue>/<stage>`)."""
    owners: dict[str, str] = {}
    for name, pipeline in spec.pipelines.items():
        if pipeline.catalogue in owners:
            raise ValueError(f"pipelines {owners[pipeline.catalogue]!r} and {name!r} both onboard catalogue "
                             f"{pipeline.catalogue!r}; give each catalogue one onboarding pipeline")
        owners[pipeline.catalogue] = name
    return owners


def build_definitions(spec_path: Path | None = None, home: Path | None = None) -> dg.Definitions:
    spec_path = Path(spec_path or default_spec_path()).resolve()
    home = Path(home or default_home()).resolve()
    spec = load_spec(spec_path)
    claro = CatalogueResource(spec_path=str(spec_path), home=str(home),
                              database_url=os.environ.get("CLARO_DATABASE_URL"))
    assets, sensors = [], []
    resources: dict[str, object] = {
        "claro": claro,
        "batch_frames": BatchFrameIOManager(base_dir=str(home / "stages")),
    }
    for catalogue, pipeline_name in onboarding_pipelines(spec).items():
        pipeline = spec.pipelines[pipeline_name]
        partitions = batches_partitions(catalogue)
        stages = build_onboarding(pipeline_name, pipeline, partitions)
        assets += stages
        target = [dg.AssetKey([catalogue, s]) for s in STAGES]
        published = [dg.AssetKey([catalogue, "records"])]
        for source_name in pipeline.sources:
            source = spec.sources[source_name]
            if source.kind == "inbox":
                sensors.append(build_inbox_sensor(
                    f"{source_name}_inbox", source_name, claro.inbox_dir(source_name), target=target,
                    partitions_def=partitions, min_age_seconds=1.0))
            elif source.kind == "s3":
                sensors.append(build_s3_sensor(f"{source_name}_s3", source_name, source.bucket, source.prefix,
                                               target=target, partitions_def=partitions))
                resources.setdefault("s3", S3Connection.from_env(source.endpoint_url_env))
        assets += [build_analyse(catalogue, published), build_export(catalogue, published)]
        for dest_name in pipeline.destinations:
            dest = spec.destinations[dest_name]
            asset = build_destination(dest_name, dest, published)
            if asset is not None:
                assets.append(asset)
                resources[destination_resource_key(dest_name)] = destination_resource(dest)
    for catalogue in spec.catalogues:
        if catalogue not in onboarding_pipelines(spec):
            assets += [build_analyse(catalogue, []), build_export(catalogue, [])]
    webserver_url = os.environ.get("CLARO_WEBSERVER_URL", "http://127.0.0.1:3000")
    if spec.notifications.slack_token_env:
        resources["slack"] = SlackNotifier(token=dg.EnvVar(spec.notifications.slack_token_env),
                                           webserver_url=webserver_url)
    sensors += build_notification_sensors(spec, webserver_url)
    automation = dg.AutomationConditionSensorDefinition(
        "claro_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=15)
    schedules = build_schedules(spec, {key: a for a in assets for key in a.keys})
    return dg.Definitions(assets=assets, sensors=[*sensors, automation], schedules=schedules, resources=resources,
                          executor=dg.in_process_executor)


defs = build_definitions()
