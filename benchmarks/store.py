"""Catalogue store benchmark: import, unchanged re-import, and re-import with 1% changed values.

    python benchmarks/store.py --rows 1000000 --backend sqlite
    python benchmarks/store.py --rows 1000000 --backend postgres   # needs 127.0.0.1:5432 (or --postgres-url)

Each phase reads the CSV with pyarrow into an Arrow table and writes it with `import_records` (one change set,
per-field provenance, history and events), in its own process so its peak RSS is its own. The three baselines of
`benchmarks/baselines.py` are measured in the same run, on the same file and the same kind of database:

- (a) first import: within 1.5x the plain load of the raw file into the same database (`load`; the store's tables
  are created first, so on SQLite that database is in WAL mode as the store runs it);
- (b) unchanged re-import: within 4x pyarrow's read of the file into an Arrow table (`arrow`);
- (c) re-import with 1% of prices changed: within 5x `arrow`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/store.py` from anywhere

# The parent process stays small (no pandas, no store): a child's peak RSS starts from its parent's on Linux.
from benchmarks.baselines import DEFAULT_POSTGRES, in_own_process, measure, peak_rss_mib, scratch_database, table  # noqa: E402
from claro_dagster.progress import progress  # noqa: E402

TEXT = ["title", "description", "brand", "gtin", "mpn", "colour", "size", "category", "image_url", "launch_date",
        "supplier", "status"]
NUMBERS = ["price", "weight"]
#: phase -> (label, file, baseline its ratio uses, target ratio)
PHASES = {
    "import": ("(a) first import as one change set", "same", "load", 1.5),
    "reimport": ("(b) re-import, nothing changed", "same", "arrow", 4.0),
    "reimport_1pct": ("(c) re-import, 1% of prices changed", "changed", "arrow", 5.0),
}


def spec():
    from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec

    attributes = {"sku": AttributeSpec(type="text", required=True)}
    attributes.update({n: AttributeSpec(type="text") for n in TEXT})
    attributes.update({n: AttributeSpec(type="number") for n in NUMBERS})
    return ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes=attributes)})


def make_csv(path: Path, rows: int, changed_share: float = 0.0, seed: int = 7) -> None:
    """15 attributes: the key, 12 text and 2 numbers. With changed_share, that share of rows get a new price."""
    import numpy as np
    import pandas as pd

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


def read(path: Path):
    """The supplier file as an Arrow table: text attributes as text (identifiers keep leading zeros)."""
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={**dict.fromkeys(["sku", *TEXT], "string"), **dict.fromkeys(NUMBERS, "float64")}))


def phase(name: str, csv: Path, url: str) -> dict:
    from claro_dagster.catalogue.store import CatalogueStore

    store = CatalogueStore(spec(), url)  # opening the store is not part of the phase: a code server keeps one
    start, cpu = time.perf_counter(), time.process_time()
    result = store.import_records("products", read(csv), change_set_id=uuid.uuid4().hex, run_id=name)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    store.dispose()
    print(result.summary(), file=sys.stderr)
    return {"seconds": seconds, "cpu": cpu, "peak_rss_mb": peak_rss_mib(), "summary": result.summary()}


def run_phase(name: str, csv: Path, url: str) -> dict:
    return in_own_process(__file__, f"phase {name}", "--phase", name, "--csv", str(csv), "--url", url)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "make":
        make_csv(Path(args.csv), args.rows, changed_share=float(args.url))
        return
    if args.phase == "open":
        from claro_dagster.catalogue.store import CatalogueStore

        CatalogueStore(spec(), args.url).dispose()
        return
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.csv), args.url)))
        return

    with tempfile.TemporaryDirectory(prefix="claro-bench-store-") as tmp:
        work = Path(tmp)
        files = {"same": work / "products.csv", "changed": work / "products_1pct.csv"}
        for which, share in (("same", 0.0), ("changed", 0.01)):  # in a child: the parent stays small
            subprocess.run([sys.executable, __file__, "--phase", "make", "--csv", str(files[which]), "--rows",
                            str(args.rows), "--url", str(share)], check=True)
        load_before = load_average()
        with scratch_database(args.backend, work, args.postgres_url) as url, \
                progress(f"store benchmark ({args.backend})", total=2 + len(PHASES), unit="steps") as bar:
            # The store's tables first, so the plain load goes into the same database as the store writes to,
            # configured as the store runs it (on SQLite: WAL mode, which readers need while a run writes).
            subprocess.run([sys.executable, __file__, "--phase", "open", "--url", url], check=True)
            baselines = measure(files["same"], url)
            bar.advance(2)
            results = {}
            for name, (_label, which, _base, _target) in PHASES.items():
                results[name] = run_phase(name, files[which], url)
                bar.advance()
    millions = args.rows / 1e6
    print(f"\n{args.rows:,} rows x 15 attributes, backend {args.backend}; load average {load_before} before, "
          f"{load_average()} after (2 cores)\n")
    print("| phase | seconds | CPU s | rows/s | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    print("\n".join(table(baselines, args.rows)))
    for name, (label, _which, _base, _target) in PHASES.items():
        r = results[name]
        print(f"| {label} | {r['seconds']:.2f} | {r['cpu']:.2f} | {args.rows / r['seconds']:,.0f} "
              f"| {r['peak_rss_mb']:,.0f} |")
    # CPU seconds of this process (all its threads): steadier than wall time on a busy machine, but only comparable
    # where the baseline's work is in-process too (not a PostgreSQL COPY, whose work is the server's).
    print("\n| phase | ratio (wall) | baseline | target | | CPU ratio | peak RSS MiB per million rows |\n"
          "|---|---:|---|---:|---|---:|---:|")
    for name, (label, _which, base, target) in PHASES.items():
        r = results[name]
        ratio = r["seconds"] / baselines[base]["seconds"]
        in_process = base != "load" or args.backend == "sqlite"
        cpu = f"{r['cpu'] / baselines[base]['cpu']:.2f}x" if in_process else "n/a"
        print(f"| {label} | {ratio:.2f}x | `{base}`: {baselines[base]['label']} | {target:g}x "
              f"| {'met' if ratio <= target else 'MISSED'} | {cpu} | {r['peak_rss_mb'] / millions:,.0f} |")
    print("\n" + "\n".join(f"{PHASES[n][0]}: {r['summary']}" for n, r in results.items()))


if __name__ == "__main__":
    main()
