"""Export benchmark: a catalogue of N records x 15 attributes exported to CSV and to XLSX, streamed from the store.

    python benchmarks/export.py                               # 200,000 and 1,000,000 records, SQLite
    python benchmarks/export.py --rows 200000 1000000 --backend postgres

For each size the catalogue is imported once (the generator and spec of benchmarks/store.py), then each export
runs in its own process, so its time and peak RSS are its own: CSV (the same-run baseline of the XLSX target:
XLSX within 3x CSV) and XLSX. Both read the records from the store in chunks (`CatalogueStore.record_chunks`), so
peak RSS should not grow with the number of records; an `idle` process (imports and store opened, nothing read)
shows the floor every process pays. The three baselines of benchmarks/baselines.py (Arrow read, plain load,
pandas read) are measured on the largest file in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the sibling benchmark modules

from baselines import in_own_process, measure, peak_rss_mib, scratch_database, table  # noqa: E402
from store import make_csv, read, spec  # noqa: E402

FORMATS = ("csv", "xlsx")


def phase(args) -> dict:
    """One export (or `idle`) in this process: seconds, CPU seconds, peak RSS, file size."""
    from claro_dagster.catalogue.store import CatalogueStore
    from claro_dagster.operations.export import export_records

    if args.phase == "populate":  # here, not in the parent: its memory would count in the phases' (see above)
        make_csv(Path(args.out), args.expect)
        return {"seconds": populate(args.url, Path(args.out))}
    start, cpu = time.perf_counter(), time.process_time()
    store = CatalogueStore(spec(), args.url)
    size = 0
    if args.phase != "idle":
        out = Path(args.out)
        result = export_records(store.record_chunks("products"), store.catalogue("products"), args.phase, out)
        size = out.stat().st_size
        assert result.rows == args.expect, f"exported {result.rows} records, expected {args.expect}"
    store.dispose()
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "peak_rss_mb": peak_rss_mib(), "size_mb": size / 2**20}


def run_phase(name: str, url: str, out: Path, rows: int) -> dict:
    return in_own_process(__file__, f"phase {name}", "--phase", name, "--url", url, "--out", str(out),
                          "--expect", str(rows))


def populate(url: str, csv: Path) -> float:
    from claro_dagster.catalogue.store import CatalogueStore

    start = time.perf_counter()
    store = CatalogueStore(spec(), url)
    store.import_records("products", read(csv), change_set_id=uuid.uuid4().hex, run_id="bench-export")
    store.dispose()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-baselines", action="store_true", help="skip the three baselines of baselines.py")
    parser.add_argument("--phase", choices=["populate", "idle", *FORMATS], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return

    results: dict[int, dict[str, dict]] = {}
    baselines = None
    with tempfile.TemporaryDirectory(prefix="claro-bench-export-") as tmp:
        work = Path(tmp)
        for rows in sorted(args.rows):
            csv = work / f"products_{rows}.csv"
            with scratch_database(args.backend, work, args.postgres_url) as url:
                imported = run_phase("populate", url, csv, rows)["seconds"]
                print(f"{rows:,} records: import {imported:.1f} s", file=sys.stderr)
                results[rows] = {"idle": run_phase("idle", url, work / "none", rows)}
                for fmt in FORMATS:
                    results[rows][fmt] = run_phase(fmt, url, work / f"export_{rows}.{fmt}", rows)
                    (work / f"export_{rows}.{fmt}").unlink()
                    print(f"{rows:,} records: {fmt} {results[rows][fmt]['seconds']:.1f} s", file=sys.stderr)
                if rows == max(args.rows) and not args.no_baselines:
                    baselines = measure(csv, url)
            csv.unlink()

    print(f"\nExport from the catalogue store ({args.backend}), 15 attributes; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| records | export | seconds | CPU s | records/s | x CSV export (wall) | x CSV export (CPU) | "
          "peak RSS MiB | file MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for rows, phases in results.items():
        for name, r in phases.items():
            if name == "idle":
                print(f"| {rows:,} | idle (imports, store opened) | {r['seconds']:.2f} | {r['cpu']:.2f} | - | - | - | "
                      f"{r['peak_rss_mb']:,.0f} | - |")
                continue
            ratios = [r[k] / phases["csv"][k] for k in ("seconds", "cpu")]
            verdicts = ["" if name == "csv" else " met" if x <= 3 else " missed" for x in ratios]
            print(f"| {rows:,} | {name} | {r['seconds']:.2f} | {r['cpu']:.2f} | {rows / r['seconds']:,.0f} | "
                  f"{ratios[0]:.2f}{verdicts[0]} | {ratios[1]:.2f}{verdicts[1]} | {r['peak_rss_mb']:,.0f} | "
                  f"{r['size_mb']:,.0f} |")
    print("\nTarget: XLSX within 3x the CSV export of the same records. On a busy machine wall time varies with the "
          "load; CPU seconds less so.")
    if len(results) > 1:
        small, large = min(results), max(results)
        for fmt in FORMATS:
            growth = results[large][fmt]["peak_rss_mb"] - results[small][fmt]["peak_rss_mb"]
            print(f"\npeak RSS of the {fmt} export grows by {growth:+,.0f} MiB from {small:,} to {large:,} records",
                  end="")
        print()
    if baselines:
        print(f"\nBaselines on the {max(results):,}-record file, same run:\n")
        print("| baseline | seconds | CPU s | rows/s | peak RSS MiB |\n|---|---:|---:|---:|---:|")
        print("\n".join(table(baselines, max(results))))


if __name__ == "__main__":
    main()
