"""Small builders for tests: a reader-shaped batch frame, a catalogue spec, and the demo's first batches published."""

import numpy as np
import pandas as pd

from claro_dagster.spec.models import AttributeSpec, CatalogueSpec


def batch(**columns: list) -> pd.DataFrame:
    """A reader-shaped frame: string cells, `__line__` from 2 (line 1 is the header)."""
    rows = len(next(iter(columns.values())))
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    frame.insert(0, "__line__", np.arange(2, rows + 2))
    return frame


def catalogue(**attributes: AttributeSpec) -> CatalogueSpec:
    """A catalogue keyed by a required `sku`, with the given attributes."""
    attrs = {"sku": AttributeSpec(type="text", required=True)}
    attrs.update(attributes)
    return CatalogueSpec(key="sku", attributes=attrs)


def publish_demo_products(defs, instance) -> None:
    """Publish the demo's suppliers and one Acme file through their pipelines (in-process runs in `instance`)."""
    import shutil

    from claro_dagster.local import receive, run_batch
    from claro_dagster.spec import DEMO_DIR

    claro = defs.resources["claro"]
    for source, path in (("suppliers_csv", DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"),
                         ("acme_csv", DEMO_DIR / "inbox" / "acme" / "acme_products_cp1252.csv")):
        inbox = claro.inbox_dir(source)
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, inbox / path.name)
        assert run_batch(defs, instance, receive(claro, source, inbox / path.name), quiet=True).success


def demo_spec_syncing(*destinations: str, text: str | None = None) -> str:
    """The demo spec's text (or `text`) with `destinations` added to products_onboarding's destination list.
    Fails loudly when the demo's layout changed, rather than leaving a test's destination out of the pipeline."""
    import re

    from claro_dagster.spec import DEMO_DIR

    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8") if text is None else text
    pipeline = re.compile(r"(\n  products_onboarding:\n(?:    .*\n)*?    destinations: \[)([^\]]*)\]")
    assert pipeline.search(text), "the demo's products_onboarding has no `destinations: [...]` line"
    return pipeline.sub(lambda m: m.group(1) + ", ".join([m.group(2), *destinations]) + "]", text, count=1)


def tick(defs, instance, name: str) -> list:
    """One tick of sensor `name` as the daemon does it, then the runs it requests, in this process."""
    import dagster as dg

    sensor = defs.resolve_sensor_def(name)
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                      resources={k: defs.resources[k] for k in sensor.required_resource_keys})
    result = sensor.evaluate_tick(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    selection = defs.resolve_job_def(sensor.job_name).asset_layer.selected_asset_keys
    return [dg.materialize(list(defs.assets), selection=list(selection), partition_key=r.partition_key,
                           instance=instance, resources=defs.resources, tags=r.tags, raise_on_error=False)
            for r in result.run_requests or []]
