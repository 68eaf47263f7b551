"""The floors every data benchmark is measured against, each measured in its own process in the same run.

    python benchmarks/baselines.py --csv FILE [--backend sqlite|postgres]   # the three baselines on their own

- `arrow`: pyarrow reads the CSV into an Arrow table (the parse floor), every column as text; median of 3.
- `load`: a plain load of the raw file into the same database, nothing else (the write floor): SQLite, the stdlib
  csv reader and `executemany` in one transaction into a table of TEXT columns, the database in WAL mode with
  synchronous=NORMAL as the catalogue store runs it; PostgreSQL, `COPY ... FROM STDIN`.
- `pandas`: pyarrow reads the CSV and converts it to pandas (the earlier baseline, kept for continuity).

A benchmark calls `measure(csv, url)` once and divides each of its own times by the baseline its target names;
`scratch_database` gives it a SQLite file or a throw-away PostgreSQL database.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

LABELS = {
    "arrow": "pyarrow reads the CSV into an Arrow table (parse floor, median of 3)",
    "load": "plain load of the raw file into the same database (write floor)",
    "pandas": "pyarrow reads the CSV into pandas (earlier baseline)",
}
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not `ru_maxrss`: on Linux a child started by subprocess inherits the parent's
    peak in it (through fork and exec), so a benchmark's parent that once held a big frame would show in every
    phase. VmHWM belongs to the process's own address space."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def _arrow_table(path: Path):
    import pyarrow.csv as pacsv

    names = _header(path)
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, "string")))


def _sqlite_load(path: Path, url: str) -> None:
    import sqlite3

    names = _header(path)
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    # The database as the catalogue store runs it (catalogue/schema.py): WAL, so readers never wait for a run.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    table = f"plain_load_{uuid.uuid4().hex[:8]}"
    columns = ", ".join(f'"{n}" TEXT' for n in names)
    db.execute(f'CREATE TABLE "{table}" ({columns})')
    with open(path, newline="", encoding="utf-8") as handle, db:
        rows = csv.reader(handle)
        next(rows)
        db.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(names))})', rows)
    db.execute(f'DROP TABLE "{table}"')
    db.commit()
    db.close()


def _postgres_copy(path: Path, url: str) -> None:
    import psycopg

    names = _header(path)
    table = f"plain_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url) as conn:
        columns = ", ".join(f'"{n}" text' for n in names)
        conn.execute(f'CREATE TABLE "{table}" ({columns})')
        with conn.cursor() as cur, cur.copy(f'COPY "{table}" FROM STDIN WITH (FORMAT csv, HEADER true)') as copy, \
                open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                copy.write(chunk)
        conn.commit()
        conn.execute(f'DROP TABLE "{table}"')


def _once(kind: str, path: Path, url: str) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "arrow":
        _arrow_table(path)
    elif kind == "pandas":
        _arrow_table(path).to_pandas()
    elif url.startswith("sqlite"):
        _sqlite_load(path, url)
    else:
        _postgres_copy(path, url)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "peak_rss_mb": peak_rss_mib()}


def in_own_process(script: str, what: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run `script args...` in a new Python process (its time and peak RSS its own) and return the JSON object
    it prints last; a failure stops the benchmark with the process's own error."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{what} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _in_process(kind: str, path: Path, url: str) -> dict:
    return in_own_process(__file__, f"baseline {kind}", "--kind", kind, "--csv", str(path), "--url", url)


def measure(path: Path, url: str) -> dict[str, dict]:
    """The three baselines for one file and one database URL (`sqlite:///...` or `postgresql://...`)."""
    arrow = [_in_process("arrow", path, url) for _ in range(3)]
    result = {"arrow": sorted(arrow, key=lambda r: r["seconds"])[1]}
    result["load"] = _in_process("load", path, url)
    result["pandas"] = _in_process("pandas", path, url)
    for kind, r in result.items():
        r["label"] = LABELS[kind] + (": SQLite executemany, one transaction, WAL as the store" if kind == "load" and
                                     url.startswith("sqlite") else ": PostgreSQL COPY" if kind == "load" else "")
    return result


@contextlib.contextmanager
def scratch_database(backend: str, work: Path, postgres_url: str = DEFAULT_POSTGRES) -> Iterator[str]:
    """A SQLite file under `work`, or a PostgreSQL database created for the run and dropped after it."""
    if backend == "sqlite":
        yield f"sqlite:///{work / f'catalogue-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg

    name = f"claro_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table(baselines: dict[str, dict], rows: int) -> list[str]:
    """Markdown rows for the baselines, in the benchmarks' table layout (phase, seconds, CPU s, rows/s, RSS)."""
    return [f"| baseline `{kind}`: {r['label']} | {r['seconds']:.2f} | {r['cpu']:.2f} | {rows / r['seconds']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} |" for kind, r in baselines.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--kind", choices=sorted(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind:
        print(json.dumps(_once(args.kind, Path(args.csv), args.url)))
        return
    with tempfile.TemporaryDirectory(prefix="claro-baselines-") as work, \
            scratch_database(args.backend, Path(work), args.postgres_url) as url:
        result = measure(Path(args.csv), url)
    rows = sum(1 for _ in open(args.csv, "rb")) - 1
    print("| baseline | seconds | CPU s | rows/s | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    print("\n".join(table(result, rows)))


if __name__ == "__main__":
    main()
