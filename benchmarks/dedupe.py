"""Find Duplicates benchmark: precision, recall and F1 on a labelled synthetic catalogue, and the time it takes.

    python benchmarks/dedupe.py                       # 10,000 and 100,000 records
    python benchmarks/dedupe.py --rows 100000 --seed 7

The catalogue is generated deterministically (`--seed`): product families of one brand and product type whose
variants differ in size, capacity or colour (each its own GTIN and MPN: similar, but not duplicates), and about one
product in eight sent again once or twice by another supplier, each copy with some of: a typo in the title,
reordered words, a quantity in another unit (`500ml` / `0.5 L`), no GTIN, an MPN without its hyphen or missing, a
brand written otherwise (`ACME`, `Acme Ltd`), a slightly different price, no colour. Every copy's cluster is known.

Quality is measured on pairs: the true pairs are every two records of one true cluster, the found pairs every two
records of one proposed cluster (survivor and its duplicates). Time is `find_duplicates` alone (blocking, scoring,
clustering, merge plans) on the records in memory, as the dedupe asset runs it after reading the store; wall time
and the process's CPU time (one core: `find_duplicates` is single-threaded), with the load average before the run
(on a shared machine the wall time grows with the load, the CPU time much less).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from itertools import combinations
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from claro_dagster.operations.dedupe import DedupeConfig, find_duplicates  # noqa: E402
from claro_dagster.spec.models import CatalogueSpec  # noqa: E402

SYLLABLES = ["ac", "me", "glo", "bex", "nor", "th", "wind", "ve", "lo", "ra", "ti", "on", "ka", "zu", "mi", "do",
             "sa", "pex", "ter", "ly", "qu", "ist", "or", "an"]
ADJECTIVES = ["classic", "trail", "urban", "alpine", "coastal", "summit", "everyday", "pro", "lite", "ultra",
              "heritage", "nomad", "rapid", "arctic", "desert", "harbour", "meadow", "canyon", "ridge", "forest",
              "compact", "deluxe", "vintage", "modern", "rustic", "sport", "travel", "studio", "garden", "kitchen"]
NOUNS = {
    "capacity": ["bottle", "flask", "mug", "tumbler", "jug", "carafe", "thermos", "canteen", "kettle", "teapot"],
    "weight": ["coffee beans", "granola", "rice", "flour", "dog food", "bird seed", "sugar", "oats", "lentils",
               "trail mix"],
    "size": ["jacket", "fleece", "hoodie", "t-shirt", "trousers", "shorts", "gloves", "beanie", "socks", "vest"],
    "length": ["rope", "cable", "hose", "ribbon", "chain", "strap", "tape", "cord", "belt", "leash"],
}
MATERIALS = ["steel", "bamboo", "cotton", "wool", "merino", "linen", "oak", "glass", "ceramic", "nylon", "organic",
             "recycled", "cork", "leather", "canvas"]
COLOURS = ["black", "white", "grey", "red", "blue", "navy", "green", "yellow", "brown"]
QUANTITIES = {"capacity": [(250, "ml"), (350, "ml"), (500, "ml"), (750, "ml"), (1, "l"), (1.5, "l")],
              "weight": [(250, "g"), (500, "g"), (1, "kg"), (2, "kg"), (5, "kg")],
              "size": [("XS", ""), ("S", ""), ("M", ""), ("L", ""), ("XL", "")],
              "length": [(50, "cm"), (1, "m"), (2, "m"), (5, "m"), (10, "m")]}
OTHER_UNIT = {"ml": ("l", 0.001), "l": ("ml", 1000), "g": ("kg", 0.001), "kg": ("g", 1000), "cm": ("m", 0.01),
              "m": ("cm", 100)}

SPEC = CatalogueSpec.model_validate({"key": "sku", "attributes": {
    "sku": {"type": "text", "identifier": True}, "title": {"type": "text", "importance": 3},
    "brand": {"type": "text"}, "gtin": {"type": "text", "identifier": True, "format": "gtin", "importance": 3},
    "mpn": {"type": "text", "identifier": True}, "price": {"type": "number"},
    "colour": {"type": "enum", "values": COLOURS}},
    "dedupe": {"attributes": {"title": 3, "brand": 1, "gtin": 4, "mpn": 3, "price": 1, "colour": 1},
               "threshold": 80}})


def _gtin(rng: random.Random, used: set[str]) -> str:
    while True:
        body = "50" + "".join(rng.choice("0123456789") for _ in range(10))
        total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
        code = body + str((10 - total % 10) % 10)
        if code not in used:
            used.add(code)
            return code


def _quantity(value, unit: str) -> str:
    return f"{value}{unit}" if unit else str(value)


def _typo(rng: random.Random, title: str) -> str:
    words = title.split()
    long = [k for k, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not long:
        return title
    k = rng.choice(long)
    w = words[k]
    p = rng.randrange(1, len(w) - 1)
    edit = rng.choice(["swap", "drop", "replace", "double"])
    if edit == "swap":
        w = w[:p] + w[p + 1] + w[p] + w[p + 2:]
    elif edit == "drop":
        w = w[:p] + w[p + 1:]
    elif edit == "replace":
        w = w[:p] + rng.choice("aeioustrn") + w[p + 1:]
    else:
        w = w[:p] + w[p] + w[p:]
    words[k] = w
    return " ".join(words)


def make_records(rows: int, seed: int = 7) -> tuple[pd.DataFrame, list[list[str]]]:
    """`rows` records (about one in nine a duplicate) and the true clusters (lists of SKUs, two or more)."""
    rng = random.Random(seed)
    brands = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
                     for _ in range(400)})
    used: set[str] = set()
    records, clusters = [], []
    sku = 0

    def new_sku() -> str:
        nonlocal sku
        sku += 1
        return f"SKU-{sku:07d}"

    while len(records) < rows:
        brand = rng.choice(brands)
        dimension = rng.choice(list(NOUNS))
        noun = rng.choice(NOUNS[dimension])
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(MATERIALS)} {noun}"
        model = rng.choice(["", "", f" {rng.randint(100, 990)}"])
        family = rng.sample(QUANTITIES[dimension], rng.randint(1, 3))
        colours = rng.sample(COLOURS, rng.randint(1, 2))
        for value, unit in family:
            for colour in colours:
                if len(records) >= rows:
                    break
                title = f"{brand} {name.title()}{model} {_quantity(value, unit)}"
                if dimension == "size":
                    title += f" {colour.title()}"
                original = {"sku": new_sku(), "title": title, "brand": brand, "gtin": _gtin(rng, used),
                            "mpn": f"{brand[:2].upper()}-{rng.randint(10000, 99999)}",
                            "price": round(rng.uniform(5, 300), 2), "colour": colour}
                records.append(original)
                if rng.random() < 0.11:
                    copies = [_copy(rng, original, new_sku(), value, unit)
                              for _ in range(2 if rng.random() < 0.2 else 1)]
                    records.extend(copies)
                    clusters.append([original["sku"], *(c["sku"] for c in copies)])
    records = records[:rows]
    present = {r["sku"] for r in records}
    clusters = [[s for s in c if s in present] for c in clusters]
    rng.shuffle(records)  # copies arrive later and from elsewhere: not next to their original
    return pd.DataFrame(records), [c for c in clusters if len(c) > 1]


def _copy(rng: random.Random, original: dict, sku: str, value, unit: str) -> dict:
    copy = dict(original, sku=sku)
    title = copy["title"]
    if unit in OTHER_UNIT and rng.random() < 0.4:
        other, factor = OTHER_UNIT[unit]
        title = title.replace(_quantity(value, unit), f"{value * factor:g} {other.upper()}")
    if rng.random() < 0.5:
        title = _typo(rng, title)
    if rng.random() < 0.4:
        words = title.split()
        a, b = rng.sample(range(len(words)), 2)
        words[a], words[b] = words[b], words[a]
        title = " ".join(words)
    copy["title"] = title
    if rng.random() < 0.5:
        copy["gtin"] = None
    elif rng.random() < 0.3:
        copy["gtin"] = "0" + copy["gtin"]  # GTIN-14 with its leading zero
    r = rng.random()
    copy["mpn"] = None if r < 0.3 else copy["mpn"].replace("-", "").lower() if r < 0.6 else copy["mpn"]
    if rng.random() < 0.2:
        copy["brand"] = rng.choice([copy["brand"].upper(), f"{copy['brand']} Ltd"])
    if rng.random() < 0.3:
        copy["price"] = round(copy["price"] * rng.uniform(0.97, 1.03), 2)
    if rng.random() < 0.2:
        copy["colour"] = None
    return copy


def pairs_of(clusters) -> set[frozenset[str]]:
    return {frozenset(p) for c in clusters for p in combinations(sorted(c), 2)}


def evaluate(rows: int, seed: int) -> dict:
    frame, truth = make_records(rows, seed)
    config = DedupeConfig.from_catalogue(SPEC)
    started, cpu = time.perf_counter(), time.process_time()
    proposals = find_duplicates(frame, config)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    found: dict[str, list[str]] = {}
    for p in proposals:
        found.setdefault(p.cluster, [p.survivor]).append(p.duplicate)
    true_pairs, found_pairs = pairs_of(truth), pairs_of(found.values())
    hit = len(true_pairs & found_pairs)
    precision = hit / len(found_pairs) if found_pairs else 1.0
    recall = hit / len(true_pairs) if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"records": rows, "true_pairs": len(true_pairs), "found_pairs": len(found_pairs), "precision": precision,
            "recall": recall, "f1": f1, "seconds": seconds, "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| records | true pairs | found pairs | precision | recall | F1 (target 0.9) | time (target < 60 s) | CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        r = evaluate(rows, args.seed)
        print(f"| {r['records']:,} | {r['true_pairs']:,} | {r['found_pairs']:,} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['f1']:.3f} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
