"""Fifty overlapping batches of one catalogue, the same in every process that builds them (a fixed seed), and
the worker that publishes a share of them: run as a script by `test_parallel_publish.py`.

Batches overlap on purpose: they share SKUs (so several create or update the same records), change the same
fields, mix whole-row imports with per-field change sets (which create unknown records too), hold some changes
back for review, and every batch is published by two workers (the second finds it applied).
"""

from __future__ import annotations

import random
import sys
import time

import pandas as pd

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec, Thresholds, ThresholdsSpec

BATCHES = 50
SKUS = [f"SKU-{n:03d}" for n in range(120)]
#: Session advisory lock the test holds while the workers start: they wait on it, so all begin together.
START_LOCK = 815_001


def make_spec() -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={
            "sku": AttributeSpec(type="text", required=True),
            "title": AttributeSpec(type="text"),
            "price": AttributeSpec(type="number"),
            "stock": AttributeSpec(type="number", default=0),
            "brand": AttributeSpec(type="text"),
        })},
        thresholds=ThresholdsSpec(default=Thresholds(auto_apply=90, review=60, reject=40)),
    )


def batches() -> list[tuple[str, str, object]]:
    """(change-set id, "import" | "apply", frame or ChangeSet), in the order they were "received"."""
    rng = random.Random(20261202)
    out = []
    for i in range(BATCHES):
        skus = rng.sample(SKUS, rng.randint(15, 50))
        cs_id = f"batch-{i:02d}"
        if i % 5 == 4:  # per-field change set: some records it names do not exist yet
            fields = [rng.choice(["title", "price", "stock", "brand"]) for _ in skus]
            changes = [Change(sku, field, _value(rng, i, field), rng.choice([100.0, 100.0, 75.0]), f"fix {i}")
                       for sku, field in zip(skus, fields, strict=True)]
            changes = list({(c.record, c.field): c for c in changes}.values())
            out.append((cs_id, "apply", ChangeSet(cs_id, "products", "normalize", changes, run_id=f"run-{i}",
                                                  source=f"supplier-{i % 3}")))
            continue
        columns = ["sku", *rng.sample(["title", "price", "stock", "brand"], rng.randint(1, 4))]
        frame = pd.DataFrame({c: skus if c == "sku" else [_value(rng, i, c) for _ in skus] for c in columns})
        out.append((cs_id, "import", frame))
    return out


def _value(rng: random.Random, i: int, column: str | None = None):
    column = column or rng.choice(["title", "price", "stock", "brand"])
    if column in ("price", "stock"):
        return float(rng.randint(1, 500))
    return f"{column}-{i}-{rng.randint(0, 3)}"


def publish(store, cs_id: str, kind: str, payload) -> None:
    if kind == "import":
        store.import_records("products", payload, change_set_id=cs_id, run_id=f"run-{cs_id}",
                             source=f"supplier-{int(cs_id[-2:]) % 3}", overwrite_confidence=80.0)
    else:
        store.apply(payload)


def main(url: str, worker: int, workers: int) -> None:
    import sqlalchemy as sa

    from claro_dagster.catalogue.store import CatalogueStore

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:  # the start line: blocks until the test releases its lock
        conn.execute(sa.text(f"SELECT pg_advisory_lock_shared({START_LOCK})"))
        conn.execute(sa.text(f"SELECT pg_advisory_unlock_shared({START_LOCK})"))
    engine.dispose()
    # All four open the store of a new database at once: one creates the tables, the others wait for it.
    store = CatalogueStore(make_spec(), url)
    todo = batches()
    # Each worker publishes its share, then its neighbour's share (already applied, or being applied now).
    mine = [b for n, b in enumerate(todo) if n % workers == worker]
    theirs = [b for n, b in enumerate(todo) if n % workers == (worker + 1) % workers]
    started = time.perf_counter()
    for cs_id, kind, payload in [*mine, *theirs]:
        publish(store, cs_id, kind, payload)
    print(f"worker {worker}: {len(mine) + len(theirs)} publishes in {time.perf_counter() - started:.2f}s")
    store.dispose()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
