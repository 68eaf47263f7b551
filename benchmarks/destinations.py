"""PostgreSQL destination benchmark: an incremental sync of changed records vs a raw COPY + INSERT ON CONFLICT.

    python benchmarks/destinations.py --rows 1000000                    # catalogue store on SQLite
    python benchmarks/destinations.py --rows 1000000 --backend postgres # catalogue store on PostgreSQL too

A catalogue of ROWS records x 15 attributes is imported (not timed). Then, twice:

- sync: what the destination asset `<catalogue>/<destination>` does (without Dagster): read the destination's
  cursor, `changed_since` (the changed records, selected in SQL on the seq index), `PostgresDestination.upsert`,
  move the cursor. First into an empty destination table (every record inserted), then after a re-import that
  changed every record's price (every record updated);
- raw: the same rows from the CSV file, `COPY` into a staging table and `INSERT ... ON CONFLICT (sku) DO UPDATE`
  into a table of the same shape, nothing else: the floor of the same work in PostgreSQL.

Throughput ratio = raw seconds / sync seconds, for the whole sync (reading the changes from the catalogue store
and upserting them) and for the upsert alone (the destination's own write path); the target is at least 0.7.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/destinations.py` from anywhere

import psycopg  # noqa: E402

from benchmarks.baselines import DEFAULT_POSTGRES, scratch_database  # noqa: E402
from benchmarks.store import NUMBERS, TEXT, load_average, make_csv, read, spec  # noqa: E402
from claro_dagster.catalogue.store import CatalogueStore  # noqa: E402
from claro_dagster.progress import progress  # noqa: E402
from claro_dagster.resources.postgres import PostgresDestination  # noqa: E402

TARGET = 0.7
COLUMNS = ["sku", *TEXT, *NUMBERS]


def sync(store: CatalogueStore, destination: PostgresDestination, table: str) -> tuple[float, float, int]:
    """The destination asset's work for one run; (seconds reading the changes, seconds upserting, rows sent)."""
    start = time.perf_counter()
    cursor = f"destination:{table}"
    since = int(store.get_cursor(cursor, "0"))
    upto = store.last_seq()
    frame = store.changed_since("products", since)
    read_done = time.perf_counter()
    if len(frame):
        destination.upsert(table, frame, "sku")
    store.set_cursor(cursor, str(upto))
    return read_done - start, time.perf_counter() - read_done, len(frame)


def raw(url: str, csv: Path, table: str) -> float:
    """COPY the file into a staging table and INSERT ... ON CONFLICT into `table`: nothing but the database's work."""
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    types = ", ".join(f'"{c}" {"double precision" if c in NUMBERS else "text"}' for c in COLUMNS)
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in COLUMNS if c != "sku")
    with psycopg.connect(url) as conn:
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({types}, PRIMARY KEY (sku))')
        conn.commit()
        start = time.perf_counter()
        with conn.transaction():
            conn.execute(f"CREATE TEMP TABLE raw_stage ({types}) ON COMMIT DROP")
            with conn.cursor() as cur, cur.copy(f"COPY raw_stage ({columns}) FROM STDIN WITH (FORMAT csv, "
                                                "HEADER true)") as copy, open(csv, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    copy.write(chunk)
            conn.execute(f'INSERT INTO "{table}" ({columns}) SELECT {columns} FROM raw_stage '
                         f"ON CONFLICT (sku) DO UPDATE SET {updates}")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                        help="where the catalogue store lives (the destination is always PostgreSQL)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="claro-bench-dest-") as tmp:
        work = Path(tmp)
        first, changed = work / "products.csv", work / "products_all_changed.csv"
        make_csv(first, args.rows)
        make_csv(changed, args.rows, changed_share=1.0)
        load_before = load_average()
        results = []
        with scratch_database(args.backend, work, args.postgres_url) as store_url, \
                scratch_database("postgres", work, args.postgres_url) as destination_url, \
                progress("destination benchmark", total=6, unit="steps") as bar:
            store = CatalogueStore(spec(), store_url)
            destination = PostgresDestination(url=destination_url)
            for label, csv in (("all records new (insert)", first), ("every record changed (update)", changed)):
                store.import_records("products", read(csv), change_set_id=uuid.uuid4().hex)
                bar.advance()
                reading, upserting, sent = sync(store, destination, "synced_products")
                bar.advance()
                results.append((label, sent, reading, upserting, raw(destination_url, csv, "raw_products")))
                bar.advance()
            store.dispose()
    print(f"\n{args.rows:,} records x 15 attributes, catalogue store on {args.backend}, destination PostgreSQL; "
          f"load average {load_before} before, {load_average()} after (2 cores)\n")
    print("| sync | rows | read changes s | upsert s | raw COPY + INSERT ON CONFLICT s | throughput ratio, whole "
          "sync (target 0.7) | | throughput ratio, upsert alone | |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---|")
    for label, sent, reading, upserting, floor in results:
        whole, alone = floor / (reading + upserting), floor / upserting
        print(f"| {label} | {sent:,} | {reading:.2f} | {upserting:.2f} | {floor:.2f} | {whole:.2f} "
              f"| {'met' if whole >= TARGET else 'MISSED'} | {alone:.2f} | {'met' if alone >= TARGET else 'MISSED'} |")


if __name__ == "__main__":
    main()
