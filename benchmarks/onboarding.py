"""Onboarding benchmark: one supplier CSV through raw -> mapped -> validated -> normalized -> records.

    python benchmarks/onboarding.py --rows 1000000                       # records stage into SQLite
    python benchmarks/onboarding.py --rows 1000000 --backend postgres    # ... into a scratch PostgreSQL database
    python benchmarks/onboarding.py --rows 100000 --keep                 # keep the scratch folder (CSV, SQLite file)

The CSV has 15 attributes of a products catalogue under supplier-style headers ("Product Code",
"EAN", "Weight", ...) that map by similarity, with the mess suppliers send: HTML descriptions,
colour and size synonyms, weights in g or kg on about 5% of rows, UK dates, prices with a currency
sign, and about 1% bad rows (GTIN check digit wrong, title missing) for validation to reject.

Each phase runs in its own process so its peak RSS is its own:

- baselines (`benchmarks/baselines.py`, measured in the same run on the same file and database): `arrow`, pyarrow
  reads the CSV into an Arrow table, every column as text (the parse floor, median of 3); `load`, a plain load of
  the raw file into the same database (SQLite `executemany` in one transaction, PostgreSQL `COPY`: the write
  floor); `pandas`, pyarrow reads the CSV into pandas (the earlier baseline, for continuity);
- pipeline: the stage operations without Dagster, in one process, each stage timed on its own, as the assets run
  them: batch_validated validates and keeps each attribute's normalized values beside its verdict
  (`ValidationResult.carried()`), batch_normalized normalizes from them without evaluating a rule again, records
  imports into the `--backend` database. Each stage's input is dropped once its output exists, as the assets hand
  frames over through the IO manager and never hold them all (writing each stage to Parquet is not timed);
- dagster: a 10-row batch from `receive` to `records` through the five assets on a copy of the demo spec
  (`run_batch`, in-process, SQLite), after the demo's suppliers are published; median of 3 runs after a warm-up
  run. This is the fixed cost of Dagster per batch.

Targets: Validate + Normalize within 4x the `arrow` baseline; the whole pipeline within 3x the `load` baseline
of the same database; peak RSS under 4 GiB (also given per million rows, so growth is visible); a 10-row batch
under 3 s. Each ratio line names the baseline it uses and says whether its target is met or missed.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from stdnum import ean

# `python benchmarks/onboarding.py` from anywhere, measuring the code of the checkout it lies in
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.baselines import DEFAULT_POSTGRES, in_own_process, measure, peak_rss_mib, scratch_database, table  # noqa: E402
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec  # noqa: E402

#: supplier header -> the attribute it must map to (by similarity; the spec has no aliases for them)
HEADERS = {
    "Product Code": "sku", "Product Name": "title", "Description": "description", "Brand": "brand",
    "EAN": "gtin", "MPN": "mpn", "Price": "price", "Weight": "weight", "Colour": "colour", "Size": "size",
    "Category": "category", "Image URL": "image_url", "Launch Date": "launch_date", "Supplier": "supplier",
    "Status": "status",
}
TARGET_VALIDATE_NORMALIZE = 4.0  # x the arrow baseline
TARGET_PIPELINE = 3.0            # x the load baseline of the same database
TARGET_RSS_MIB = 4096.0
TARGET_DAGSTER_SECONDS = 3.0
TEN_ROWS_HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status\n"


def spec() -> ProjectSpec:
    """A products catalogue like the demo's, with 15 typed attributes and no aliases."""
    a = AttributeSpec
    attributes = {
        "sku": a(type="text", identifier=True, required=True, regex=r"^[A-Z]{2,4}-\d{4,8}$"),
        "title": a(type="text", required=True, max_length=200),
        "description": a(type="text", strip_html=True),
        "brand": a(type="text"),
        "gtin": a(type="text", identifier=True, format="gtin"),
        "mpn": a(type="text", identifier=True),
        "price": a(type="number", min=0),
        "weight": a(type="number", unit="kg", min=0),
        "colour": a(type="enum", values=["black", "white", "grey", "red", "blue", "navy", "green", "multicolour"],
                    synonyms={"black": ["blk"], "grey": ["gray", "gry"], "navy": ["navy blue", "dark blue"],
                              "multicolour": ["multi", "multicolor", "assorted"]}),
        "size": a(type="enum", values=["XS", "S", "M", "L", "XL", "XXL"], ordered=True,
                  synonyms={"S": ["small"], "M": ["medium", "med"], "L": ["large"], "XL": ["extra large"]}),
        "category": a(type="text"),
        "image_url": a(type="image", format="url"),
        "launch_date": a(type="date"),
        "supplier": a(type="text", identifier=True),
        "status": a(type="enum", values=["active", "draft", "archived"], default="draft",
                    synonyms={"active": ["live", "published"], "archived": ["inactive", "discontinued"]}),
    }
    return ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes=attributes)})


# ------------------------------------------------------------------------------------------ the file

def gtins(bodies: np.ndarray) -> np.ndarray:
    """GTIN-13s for 12-digit bodies, check digit by the GS1 mod-10 rule (vectorised: stdnum takes ~12 s
    a million); `make_csv` checks a sample of them against stdnum.ean."""
    digits = (bodies[:, None] // 10 ** np.arange(11, -1, -1)) % 10
    check = (10 - (digits @ np.array([1, 3] * 6)) % 10) % 10
    return np.char.add(np.char.zfill(bodies.astype(str), 12), check.astype(str))


def pick(rng: np.random.Generator, options: list[str], rows: int, weights: list[float] | None = None) -> np.ndarray:
    p = None if weights is None else np.asarray(weights) / sum(weights)
    return np.asarray(options, dtype=object)[rng.choice(len(options), rows, p=p)]


def make_csv(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """Write the supplier file; returns how many bad rows of each kind it planted."""
    rng = np.random.default_rng(seed)
    idx = np.arange(rows)
    prefix = np.asarray(["ACM", "GLX", "INI", "UMB"], dtype=object)[idx % 4]
    sku = [f"{p}-{i:07d}" for p, i in zip(prefix, idx, strict=True)]
    nouns = ["Tent", "Jacket", "Mug", "Boot", "Lamp", "Backpack", "Kettle", "Chair", "Towel", "Bottle"]
    adjectives = ["Trailblazer", "Summit", "Ridge", "Harbour", "Nordic", "Urban", "Classic", "Compact"]
    noun = np.asarray(nouns, dtype=object)[rng.integers(0, len(nouns), rows)]
    adjective = np.asarray(adjectives, dtype=object)[rng.integers(0, len(adjectives), rows)]
    title = [f"{a} {n} {i}" for a, n, i in zip(adjective, noun, idx, strict=True)]
    html = rng.random(rows) < 0.10  # web-shop descriptions pasted with their markup
    description = [f"<p>The <b>{a} {n.lower()}</b>, model {i}.</p><ul><li>Built to last</li><li>2 year warranty</li>"
                   f"</ul>" if h else f"The {a} {n.lower()}, model {i}. Built to last, with a 2 year warranty."
                   for a, n, i, h in zip(adjective, noun, idx, html, strict=True)]
    gtin = gtins(506012300000 + idx.astype(np.int64)).astype(object)
    sample = idx[:: max(1, rows // 1000)]
    assert all(ean.is_valid(gtin[i]) for i in sample), "GTIN check digits disagree with stdnum.ean"
    price = np.round(rng.uniform(1, 500, rows), 2)
    price_text = np.char.mod("%.2f", price).astype(object)
    pounds = rng.random(rows) < 0.02
    price_text[pounds] = "£" + price_text[pounds]
    weight = np.round(rng.uniform(0.05, 20, rows), 3)
    weight_text = np.char.mod("%g", weight).astype(object)
    units = np.flatnonzero(rng.random(rows) < 0.05)  # "500 g" and "1.2 kg" among plain kilograms
    grams = units[: len(units) // 2]
    weight_text[grams] = [f"{round(w * 1000):d} g" for w in weight[grams]]
    kilos = units[len(units) // 2:]
    weight_text[kilos] = [f"{w:g} kg" for w in weight[kilos]]
    dates = pd.date_range("2020-01-01", periods=1500, freq="D")[rng.integers(0, 1500, rows)]
    launch = dates.strftime("%Y-%m-%d").to_numpy(dtype=object)
    uk = rng.random(rows) < 0.10
    launch[uk] = dates[uk].strftime("%d/%m/%Y").to_numpy(dtype=object)
    frame = pd.DataFrame({
        "Product Code": sku,
        "Product Name": title,
        "Description": description,
        "Brand": pick(rng, ["Acme Outdoor", "Globex", "Initech", "Umbrella", "Nordwind", "Hooli"], rows),
        "EAN": gtin,
        "MPN": [f"MPN-{i:07d}-{i % 7}" for i in idx],
        "Price": price_text,
        "Weight": weight_text,
        "Colour": pick(rng, ["black", "white", "grey", "Gray", "blk", "Navy Blue", "red", "Blue", "multi", "green"],
                       rows),
        "Size": pick(rng, ["S", "M", "L", "XL", "small", "Medium", "XS", "XXL"], rows),
        "Category": pick(rng, ["Outdoor", "Kitchen", "Garden", "Office", "Apparel", "Footwear"], rows),
        "Image URL": [f"https://img.example.com/products/{s}.jpg" for s in sku],
        "Launch Date": launch,
        "Supplier": pick(rng, [f"SUP-{i:04d}" for i in range(1, 21)], rows),
        "Status": pick(rng, ["active", "draft", "Live", "discontinued"], rows, [6, 2, 1, 1]),
    })
    bad = rng.choice(rows, max(2, rows // 100), replace=False)
    bad_gtin, no_title = bad[: len(bad) // 2], bad[len(bad) // 2:]
    frame.loc[bad_gtin, "EAN"] = [g[:-1] + str((int(g[-1]) + 1) % 10) for g in frame.loc[bad_gtin, "EAN"]]
    assert not any(ean.is_valid(g) for g in frame.loc[bad_gtin, "EAN"])
    frame.loc[no_title, "Product Name"] = ""
    frame.to_csv(path, index=False)
    return {"bad_gtin": len(bad_gtin), "missing_title": len(no_title)}


# ------------------------------------------------------------------------------------------ phases

def pipeline(args) -> dict:
    """The five stages as the assets run them, minus Dagster (and minus writing each stage to Parquet)."""
    from claro_dagster.catalogue.store import CatalogueStore
    from claro_dagster.operations.mapping import apply_mapping, match_records, propose_mapping
    from claro_dagster.operations.normalize import normalize_batch
    from claro_dagster.operations.read import read_supplier_file
    from claro_dagster.operations.validate import validate_batch

    project = spec()
    cat = project.catalogues["products"]
    start_rss = peak_rss_mib()  # the interpreter and its libraries, before any row is read
    stages: list[dict] = []
    clock, cpu = time.perf_counter(), time.process_time()

    def done(name: str, rows_in: int) -> None:
        nonlocal clock, cpu
        gc.collect()  # the previous stage's frames are gone before the next starts, as between asset steps
        stages.append({"stage": name, "rows": rows_in, "seconds": time.perf_counter() - clock,
                       "cpu": time.process_time() - cpu, "peak_rss_mb": peak_rss_mib()})
        clock, cpu = time.perf_counter(), time.process_time()

    identifiers = [n for n, a in cat.attributes.items() if a.identifier] + \
        [alias for a in cat.attributes.values() if a.identifier for alias in a.aliases]
    raw = read_supplier_file(args.csv, identifier_columns=identifiers).frame
    rows = len(raw)
    done("raw", rows)

    mapping = propose_mapping([c for c in raw.columns if not str(c).startswith("__")], cat)
    wrong = {c: a for c, a in mapping.attribute_for.items() if HEADERS.get(c) != a}
    if wrong:
        raise SystemExit(f"the proposed mapping differs from the intended one: {wrong}")
    mapped = match_records(apply_mapping(raw, mapping, cat, source="bench"), cat, set(), {})
    del raw
    done("mapped", rows)

    # as batch_validated: the verdict, and each attribute's normalized values for batch_normalized
    result = validate_batch(mapped, cat)
    del mapped
    validated, rejected, errors = result.carried(), len(result.rejected), len(result.errors)
    del result
    done("validated", rows)

    normalized = normalize_batch(validated, cat)
    del validated
    frame, changes = normalized.frame, len(normalized.changes)
    del normalized
    done("normalized", rows - rejected)

    # as the `records` asset: GTIN-matched rows write to their record, only attribute columns, content digest
    store = CatalogueStore(project, args.url)
    frame = frame.copy()
    if "__record__" in frame.columns:
        frame[cat.key] = frame[cat.key].where(frame[cat.key].notna(), frame["__record__"])
    frame = frame[[c for c in cat.attributes if c in frame.columns]]
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()
    imported = store.import_records("products", frame, change_set_id=f"publish:bench:{digest[:16]}",
                                    operation="publish", run_id=uuid.uuid4().hex, source="bench",
                                    reason="published from the benchmark file")
    store.dispose()
    del frame
    done("records", rows - rejected)
    print(imported.summary(), file=sys.stderr)
    return {"stages": stages, "seconds": sum(s["seconds"] for s in stages), "cpu": sum(s["cpu"] for s in stages),
            "peak_rss_mb": peak_rss_mib(), "start_rss_mb": start_rss,
            "rows": rows, "rejected": rejected, "errors": errors, "changes": changes, "created": imported.created}


def dagster_overhead(args) -> dict:
    """Seconds from `receive` to `records` materialized for a 10-row batch on a copy of the demo spec."""
    import dagster as dg

    from claro_dagster.definitions import build_definitions
    from claro_dagster.local import receive, run_batch
    from claro_dagster.spec import DEMO_DIR

    work = Path(args.work) / "dagster"
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec_path)
    defs = build_definitions(spec_path, work / "home")
    claro = defs.resources["claro"]

    def drop(source: str, name: str, text: str) -> Path:
        inbox = claro.inbox_dir(source)
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / name).write_text(text, encoding="utf-8")
        return inbox / name

    def publish(source: str, path: Path) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        batch = receive(claro, source, path)
        result = run_batch(defs, instance, batch, quiet=True)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        published = {e.asset_key for e in result.get_asset_materialization_events()}
        if not result.success or dg.AssetKey([batch.catalogue, "records"]) not in published:
            raise SystemExit(f"batch {batch.key} did not publish: success={result.success}, "
                             f"materialized {sorted(k.to_user_string() for k in published)}")
        return seconds, cpu

    with dg.instance_for_test() as instance:
        suppliers = (DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv").read_text(encoding="utf-8")
        publish("suppliers_csv", drop("suppliers_csv", "suppliers.csv", suppliers))
        runs = []
        for run in range(4):  # the first is the warm-up
            lines = [f"BEN-{run}{i:03d},Trail mug {run}-{i},Acme Outdoor,{gtin13(run * 100 + i)},{i}.50,0.3,grey,M,"
                     "SUP-0001,active" for i in range(10)]
            runs.append(publish("acme_csv", drop("acme_csv", f"ten_rows_{run}.csv",
                                                 TEN_ROWS_HEADER + "\n".join(lines) + "\n")))
    timed = [seconds for seconds, _ in runs[1:]]
    return {"warmup": runs[0][0], "runs": timed, "seconds": statistics.median(timed),
            "cpu": statistics.median(cpu for _, cpu in runs[1:]), "peak_rss_mb": peak_rss_mib()}


def gtin13(i: int) -> str:
    body = f"506012399{i:03d}"
    return body + ean.calc_check_digit(body)


PHASES = {"pipeline": pipeline, "dagster": dagster_overhead}


def run_phase(name: str, work: Path, csv: Path, url: str) -> dict:
    # Without the project's own settings, so no phase writes to a catalogue or home outside the scratch folder.
    env = {k: v for k, v in os.environ.items() if k not in ("CLARO_DATABASE_URL", "CLARO_HOME", "CLARO_SPEC")}
    return in_own_process(__file__, f"phase {name}", "--phase", name, "--csv", str(csv), "--work", str(work),
                          "--url", url, env=env)


# ------------------------------------------------------------------------------------------ report

STAGE_LABELS = {
    "raw": "raw: read_supplier_file",
    "mapped": "mapped: propose + apply mapping, match records",
    "validated": "validated: validate_batch + carried outcomes",
    "normalized": "normalized: normalize_batch (valid rows, from the carried outcomes)",
    "records": "records: import_records into {db}",
}


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(args, planted: dict[str, int], bases: dict, pipe: dict, dag: dict, seconds: float,
           load: tuple[float, float]) -> None:
    rows = pipe["rows"]
    arrow, plain, pandas_read = bases["arrow"]["seconds"], bases["load"]["seconds"], bases["pandas"]["seconds"]
    db = "PostgreSQL" if args.backend == "postgres" else "SQLite"
    print(f"\n{rows:,} rows x 15 attributes ({planted['bad_gtin']:,} bad GTINs, {planted['missing_title']:,} "
          f"missing titles planted); {pipe['rejected']:,} rows rejected ({pipe['errors']:,} errors), "
          f"{pipe['changes']:,} values normalized, {pipe['created']:,} records created in {db}\n")
    print("| phase | seconds | CPU s | rows/s | peak RSS MiB | x arrow | x load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for line, kind in zip(table(bases, rows), bases, strict=True):
        print(f"{line} {bases[kind]['seconds'] / arrow:.1f} | {bases[kind]['seconds'] / plain:.2f} |")
    for stage in pipe["stages"]:
        print(f"| {STAGE_LABELS[stage['stage']].format(db=db)} | {stage['seconds']:.2f} | {stage['cpu']:.2f} "
              f"| {stage['rows'] / stage['seconds']:,.0f} | {stage['peak_rss_mb']:,.0f} "
              f"| {stage['seconds'] / arrow:.1f} | {stage['seconds'] / plain:.2f} |")
    total = pipe["seconds"]
    print(f"| **pipeline, all five stages** | **{total:.2f}** | **{pipe['cpu']:.2f}** | **{rows / total:,.0f}** "
          f"| **{pipe['peak_rss_mb']:,.0f}** | **{total / arrow:.1f}** | **{total / plain:.2f}** |")
    print("\nSeconds are wall clock, CPU s the process's own CPU time (pyarrow's threads and the validation threads "
          "included); the stages run one after another in one process, so a stage's peak RSS is that process's peak "
          f"so far. Load average (1 min) on this {os.cpu_count()}-core machine: {load[0]:.1f} at the start, "
          f"{load[1]:.1f} at the end; where wall clock is well above CPU time the process waited for a core and "
          "the ratios are noisy.")
    stages = {s["stage"]: s["seconds"] for s in pipe["stages"]}
    vn = stages["validated"] + stages["normalized"]
    per_million = pipe["peak_rss_mb"] / (rows / 1e6)
    growth = (pipe["peak_rss_mb"] - pipe["start_rss_mb"]) / (rows / 1e6)
    print(f"\n- validate + normalize: {vn:.2f} s = {vn / arrow:.1f}x baseline `arrow` ({arrow:.2f} s) "
          f"(target: within {TARGET_VALIDATE_NORMALIZE:.0f}x): {verdict(vn / arrow <= TARGET_VALIDATE_NORMALIZE)}")
    print(f"- pipeline, all five stages: {total:.2f} s = {total / plain:.2f}x baseline `load` ({db}, "
          f"{plain:.2f} s) (target: within {TARGET_PIPELINE:.0f}x): {verdict(total / plain <= TARGET_PIPELINE)}")
    print(f"- pipeline peak RSS: {pipe['peak_rss_mb']:,.0f} MiB, {per_million:,.0f} MiB per million rows; above the "
          f"{pipe['start_rss_mb']:,.0f} MiB of the interpreter and libraries, {growth:,.0f} MiB per million rows "
          f"(target: under {TARGET_RSS_MIB:,.0f} MiB): {verdict(pipe['peak_rss_mb'] < TARGET_RSS_MIB)}")
    print(f"- for continuity: the pipeline is {total / pandas_read:.1f}x baseline `pandas` ({pandas_read:.2f} s), "
          f"the earlier baseline (no target)")
    runs = ", ".join(f"{s:.2f}" for s in dag["runs"])
    print(f"- Dagster, one 10-row batch from receive to records (run_batch in-process, demo spec, instance_for_test): "
          f"{dag['seconds']:.2f} s median of 3 ({runs}; warm-up {dag['warmup']:.2f}; CPU {dag['cpu']:.2f} s) "
          f"(target: under {TARGET_DAGSTER_SECONDS:.0f} s): {verdict(dag['seconds'] < TARGET_DAGSTER_SECONDS)}")
    backend = f" --backend {args.backend}" if args.backend != "sqlite" else ""
    print(f"\nCommand: `python benchmarks/onboarding.py --rows {args.rows}{backend}` ({seconds:.0f} s wall clock, "
          f"including writing the CSV)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                        help="the database the records stage and the plain-load baseline write to")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES,
                        help="a PostgreSQL server where a scratch database may be created and dropped")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and print where it is")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="claro-onboarding-bench-"))
    try:
        csv = work / "supplier_products.csv"
        planted = make_csv(csv, args.rows)
        with scratch_database(args.backend, work, args.postgres_url) as url:
            bases = measure(csv, url)
            pipe = run_phase("pipeline", work, csv, url)
        # Dagster's fixed cost per batch: the demo's own SQLite catalogue, whatever the backend
        dag = run_phase("dagster", work, csv, f"sqlite:///{work / 'unused.db'}")
        report(args, planted, bases, pipe, dag, time.perf_counter() - started, (load_start, os.getloadavg()[0]))
    finally:
        if args.keep:
            print(f"\nScratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
