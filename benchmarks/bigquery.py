"""BigQuery destination benchmark: a load of changed records and a merge of 1% changes vs writing the same Parquet
file locally.

    python benchmarks/bigquery.py --rows 1000000

A frame of ROWS records x 15 attributes, Arrow-backed as the catalogue store's `changed_since` returns it (reading
the store is measured by benchmarks/destinations.py), is pushed by `BigQueryTable.push` to the local fake BigQuery
of the tests (tests/bigquery_fake.py, loopback HTTP, every request checked against the discovery document):

- load: mode append, every record changed: schema check, the Parquet file written from the frame, one load job
  (resumable upload above 5 MB), polled to DONE;
- merge: mode merge of 1% of the records (new prices) into the table holding all of them: staging load, one MERGE
  on the key, staging dropped.

Our work = the CPU time of the pushing thread (`time.thread_time`): typing the rows, writing the Parquet file,
building and sending the requests, reading the answers. Waiting for the answers is not in it: the fake answers from
threads of this same process (parsing the upload, checking every row, running the MERGE), which stand in for
BigQuery's side and are shown apart (`fake s`). Jobs are polled without a pause (`poll_interval=0`): waiting for
BigQuery is not our work. Baseline, in the same run: `pyarrow.parquet.write_table` of the same rows to a local file
(wall time, alone). Ratio = our seconds / baseline seconds; target: within 2x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/bigquery.py` from anywhere

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.store import load_average, make_csv, spec  # noqa: E402
from claro_dagster.resources.bigquery import BigQueryTable, Layout, table_columns  # noqa: E402
from tests.bigquery_fake import FakeBigQuery  # noqa: E402

TARGET = 2.0
PROJECT, DATASET = "bench-project", "bench"


def arrow_frame(csv: Path) -> pd.DataFrame:
    """The rows as the store hands them to a destination: Arrow-backed columns, numbers typed."""
    table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def baseline(frame: pd.DataFrame, path: Path) -> float:
    start = time.perf_counter()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, compression="snappy")
    return time.perf_counter() - start


def push(fake: FakeBigQuery, frame: pd.DataFrame, table: str, mode: str) -> tuple[float, float, float]:
    """(wall seconds, seconds of it the fake spent answering, CPU seconds of the pushing thread)."""
    catalogue = spec().catalogues["products"]
    columns = list(catalogue.attributes)
    bq = BigQueryTable(PROJECT, endpoint_url=fake.url, poll_interval=0, poll_max=0)
    server_before = fake.server_seconds
    start, cpu = time.perf_counter(), time.thread_time()
    bq.push(DATASET, table, frame[columns], table_columns(catalogue, columns, Layout()), "sku", mode,
            job_id=f"bench_{table}_{mode}" if mode == "append" else None)
    return time.perf_counter() - start, fake.server_seconds - server_before, time.thread_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="claro-bench-bq-") as tmp, FakeBigQuery(reads_until_done=1) as fake:
        work = Path(tmp)
        make_csv(work / "all.csv", args.rows)
        make_csv(work / "changed.csv", args.rows, changed_share=0.01)
        everything = arrow_frame(work / "all.csv")
        changed_all = arrow_frame(work / "changed.csv")
        changed = changed_all[changed_all["price"].to_numpy() != everything["price"].to_numpy()]
        load_before = load_average()
        results = []
        results.append(("load, every record changed (append)", len(everything),
                        *push(fake, everything, "products", "append"), baseline(everything, work / "all.parquet")))
        results.append(("merge of 1% changed records", len(changed), *push(fake, changed, "products", "merge"),
                        baseline(changed, work / "changed.parquet")))
        assert fake.contract_errors == [], fake.contract_errors
        assert len(fake.tables[(PROJECT, DATASET, "products")]["rows"]) == args.rows
    print(f"\n{args.rows:,} records x 15 attributes to the local contract-checked fake BigQuery; load average "
          f"{load_before} before, {load_average()} after (2 cores)\n")
    print("| push | rows | push wall s | fake (BigQuery's side) s | our work (CPU) s | local Parquet write s | "
          "ratio (target <= 2) | |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, rows, wall, server, ours, floor in results:
        ratio = ours / floor
        print(f"| {label} | {rows:,} | {wall:.2f} | {server:.2f} | {ours:.2f} | {floor:.3f} | {ratio:.2f} | "
              f"{'met' if ratio <= TARGET else 'MISSED'} |")


if __name__ == "__main__":
    main()
