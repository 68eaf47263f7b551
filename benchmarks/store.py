"""Catalogue store benchmark: import, unchanged re-import, and re-import with 1% changed values.

    python benchmarks/store.py --rows 1000000 --backend sqlite
    python benchmarks/store.py --rows 1000000 --backend postgres   # needs 127.0.0.1:5432 (or --postgres-url)

Each phase runs in its own process so its peak RSS is its own. Every time is also given as a ratio
to a baseline measured in the same run: pyarrow reading the same CSV into memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import sqlalchemy as sa

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec

TEXT = ["title", "description", "brand", "gtin", "mpn", "colour", "size", "category", "image_url", "launch_date",
        "supplier", "status"]
NUMBERS = ["price", "weight"]


def spec() -> ProjectSpec:
    attributes = {"sku": AttributeSpec(type="text", required=True)}
    attributes.update({n: AttributeSpec(type="text") for n in TEXT})
    attributes.update({n: AttributeSpec(type="number") for n in NUMBERS})
    return ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes=attributes)})


def make_csv(path: Path, rows: int, changed_share: float = 0.0, seed: int = 7) -> None:
    """15 attributes: the key, 12 text and 2 numbers. With changed_share, that share of rows get a new price."""
    rng = np.random.default_rng(seed)
    idx = np.arange(rows)
    frame = pd.DataFrame({
        "sku": [f"SKU-{i:08d}" for i in idx],
        "title": [f"Product {i} in stainless steel" for i in idx],
        "description": [f"A sturdy product number {i}, made to last." for i in idx],
        "brand": np.array(["Acme", "Globex", "Initech", "Umbrella"])[idx % 4],
        "gtin": [f"{4006381000000 + i:013d}" for i in idx],
        "mpn": [f"MPN{i:07d}" for i in idx],
        "colour": np.array(["red", "grey", "blue", "black"])[idx % 4],
        "size": np.array(["S", "M", "L", "XL"])[idx % 4],
        "category": np.array(["Kitchen", "Garden", "Office"])[idx % 3],
        "image_url": [f"https://img.example.com/{i}.jpg" for i in idx],
        "launch_date": np.array(["2025-01-01", "2025-06-15", "2026-02-01"])[idx % 3],
        "supplier": np.array(["SUP-1", "SUP-2", "SUP-3"])[idx % 3],
        "status": np.array(["active", "draft"])[idx % 2],
        "price": np.round(rng.uniform(1, 500, rows), 2),
        "weight": np.round(rng.uniform(0.1, 20, rows), 3),
    })
    if changed_share:
        pick = rng.choice(rows, int(rows * changed_share), replace=False)
        frame.loc[pick, "price"] = frame.loc[pick, "price"] + 1
    frame.to_csv(path, index=False)


def read(path: Path) -> pd.DataFrame:
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={c: "string" for c in ["sku", *TEXT]})).to_pandas()


def phase(args) -> dict:
    start = time.perf_counter()
    if args.phase == "baseline":
        read(Path(args.csv))
    else:
        store = CatalogueStore(spec(), args.url)
        result = store.import_records("products", read(Path(args.csv)), change_set_id=uuid.uuid4().hex,
                                      run_id=args.phase)
        store.dispose()
        print(result.summary(), file=sys.stderr)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_phase(name: str, csv: Path, url: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--csv", str(csv), "--url", url],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return

    work = Path(tempfile.mkdtemp(prefix="claro-bench-"))
    same, changed = work / "products.csv", work / "products_1pct.csv"
    make_csv(same, args.rows)
    make_csv(changed, args.rows, changed_share=0.01)
    db_name = None
    if args.backend == "sqlite":
        url = f"sqlite:///{work / 'catalogue.db'}"
    else:
        db_name = f"claro_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.postgres_url.replace("postgresql://", "postgresql+psycopg://"),
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
        url = args.postgres_url.rsplit("/", 1)[0] + "/" + db_name
    try:
        baseline = run_phase("baseline", same, url)
        rows = [("baseline: pyarrow reads the CSV", baseline),
                ("(a) import as one change set", run_phase("import", same, url)),
                ("(b) re-import, nothing changed", run_phase("reimport", same, url)),
                ("(c) re-import, 1% of prices changed", run_phase("reimport_1pct", changed, url))]
    finally:
        if db_name:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    print(f"\n{args.rows:,} rows x 15 attributes, backend {args.backend}\n")
    print("| phase | seconds | rows/s | x baseline | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['seconds']:.2f} | {args.rows / r['seconds']:,.0f} | "
              f"{r['seconds'] / baseline['seconds']:.1f} | {r['peak_rss_mb']:,.0f} |")


if __name__ == "__main__":
    main()
