"""PostgreSQL source benchmark: one pull of ROWS rows into a batch file vs a plain `COPY ... TO STDOUT` of the same
table, in the same run, each in its own process (time and peak RSS its own).

    python benchmarks/postgres_source.py --rows 1000000 [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]

A throw-away database gets a table `items` of ROWS rows x 8 columns (text key, texts, numeric, integer, timestamptz
watermark, a mostly NULL soft-delete column) with a B-tree index on (updated_at, sku), as a table pulled by its
watermark should have. Then, median of `--repeat` runs each:

- baseline: `COPY items TO STDOUT (FORMAT csv, HEADER)` through psycopg, streamed to a local file (the floor: the
  server's own CSV writer, no ordering, no cursor);
- pull: `claro_dagster.resources.db_source.pull` of the whole table in ONE pull (no row limit), first pull (no
  cursor): null-watermark check, the rows in (updated_at, sku) order through a named cursor, `chunk_rows` at a time,
  each column cast to text by the server, written as CSV and hashed; the next cursor.

Ratio = pull seconds / baseline seconds; target: within 2x. Peak RSS shows the pull's memory is bounded by the chunk,
not by the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/postgres_source.py` anywhere

from benchmarks.baselines import DEFAULT_POSTGRES, in_own_process, peak_rss_mib, scratch_database  # noqa: E402

TARGET = 2.0


def make_table(url: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (sku text PRIMARY KEY, title text, brand text, description text, "
                     "price numeric(10, 2), stock integer, updated_at timestamptz NOT NULL, deleted_at timestamptz)")
        conn.execute(
            "INSERT INTO items SELECT 'ACM-' || lpad(g::text, 7, '0'), 'Product ' || g || ', steel', "
            "(ARRAY['Acme', 'Globex', 'Initech'])[1 + g %% 3], 'A sturdy thing, number ' || g || ' of its kind', "
            "(g %% 10000) / 100.0, g %% 500, timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => g / 4), "
            "CASE WHEN g %% 1000 = 0 THEN timestamptz '2026-06-01 00:00:00+00' END FROM generate_series(1, %s) g",
            (rows,))
        conn.execute("CREATE INDEX items_watermark ON items (updated_at, sku)")
        conn.execute("VACUUM ANALYZE items")


def copy_out(url: str, out: Path) -> dict:
    import psycopg

    start, cpu = time.perf_counter(), time.process_time()
    with psycopg.connect(url) as conn, conn.cursor() as cur, out.open("wb") as f, \
            cur.copy("COPY items TO STDOUT (FORMAT csv, HEADER)") as copy:
        for data in copy:
            f.write(data)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "peak_rss_mb": peak_rss_mib(), "bytes": out.stat().st_size}


def pull_all(url: str, out: Path, chunk_rows: int) -> dict:
    from claro_dagster.resources.db_source import DbSource, pull

    source = DbSource(name="bench", url_env="BENCH_DATABASE_URL", key="sku", watermark="updated_at", table="items",
                      chunk_rows=chunk_rows, max_rows=None)
    start, cpu = time.perf_counter(), time.process_time()
    result = pull(source, None, out, environ={"BENCH_DATABASE_URL": url})
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "peak_rss_mb": peak_rss_mib(), "rows": result.rows, "bytes": result.path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--phase", choices=["copy", "pull"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "copy":
        print(json.dumps(copy_out(args.url, Path(args.out) / "copy.csv")))
        return
    if args.phase == "pull":
        print(json.dumps(pull_all(args.url, Path(args.out), args.chunk_rows)))
        return
    with tempfile.TemporaryDirectory(prefix="claro-pgsource-") as work, \
            scratch_database("postgres", Path(work), args.postgres_url) as url:
        started = time.perf_counter()
        make_table(url, args.rows)
        print(f"table of {args.rows:,} rows made in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        runs: dict[str, list[dict]] = {"copy": [], "pull": []}
        for n in range(args.repeat):
            for phase in ("copy", "pull"):  # interleaved, so both see the same cache and load
                out = Path(work) / f"{phase}-{n}"
                out.mkdir()
                runs[phase].append(in_own_process(__file__, phase, "--phase", phase, "--url", url, "--out", str(out),
                                                  "--chunk-rows", str(args.chunk_rows)))
    median = {k: sorted(v, key=lambda r: r["seconds"])[len(v) // 2] for k, v in runs.items()}
    assert median["pull"]["rows"] == args.rows, median["pull"]
    ratio = median["pull"]["seconds"] / median["copy"]["seconds"]
    every = {k: ", ".join(f"{r['seconds']:.2f}" for r in v) for k, v in runs.items()}
    spread = statistics.pstdev(r["seconds"] for r in runs["pull"])
    print(f"PostgreSQL source, {args.rows:,} rows, chunks of {args.chunk_rows:,}, median of {args.repeat} "
          f"(pull runs: {every['pull']} s; COPY runs: {every['copy']} s; pull spread {spread:.2f} s)\n")
    print("| phase | seconds | CPU s | rows/s | peak RSS MiB | file MB |\n|---|---:|---:|---:|---:|---:|")
    for phase, label in (("copy", "baseline: `COPY items TO STDOUT (FORMAT csv)` to a file"),
                         ("pull", "pull: named cursor, (updated_at, sku) order, CSV written and hashed")):
        r = median[phase]
        print(f"| {label} | {r['seconds']:.2f} | {r['cpu']:.2f} | {args.rows / r['seconds']:,.0f} | "
              f"{r['peak_rss_mb']:,.0f} | {r['bytes'] / 1e6:,.0f} |")
    print(f"\nratio pull / COPY: {ratio:.2f}x (target: within {TARGET:.0f}x) -> "
          f"{'OK' if ratio <= TARGET else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
