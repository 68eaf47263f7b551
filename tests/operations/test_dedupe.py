"""Find Duplicates' pure logic: blocking, scoring, clusters, survivors and the values a merge keeps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from claro_dagster.operations.dedupe import DedupeConfig, compare, find_duplicates, normalise_gtin, normalise_text
from claro_dagster.spec.models import CatalogueSpec

SPEC = CatalogueSpec.model_validate({"key": "sku", "attributes": {
    "sku": {"type": "text", "identifier": True}, "title": {"type": "text", "importance": 3},
    "brand": {"type": "text"}, "gtin": {"type": "text", "identifier": True, "format": "gtin"},
    "mpn": {"type": "text", "identifier": True}, "price": {"type": "number"},
    "colour": {"type": "enum", "values": ["red", "blue"]}},
    "dedupe": {"attributes": {"title": 3, "brand": 1, "gtin": 4, "mpn": 3, "price": 1, "colour": 1}}})
CONFIG = DedupeConfig.from_catalogue(SPEC)


def frame(*rows: dict) -> pd.DataFrame:
    columns = list(SPEC.attributes)
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)


def pairs(proposals) -> set[frozenset[str]]:
    return {frozenset((p.survivor, p.duplicate)) for p in proposals}


def test_quantities_and_gtins_normalise_to_one_form():
    assert normalise_text("Acme Flask 0.5 L") == normalise_text("acme   FLASK 500ml") == "acme flask 500ml"
    assert normalise_text("Rope 2 m, Blue!") == "rope 2000mm blue"
    assert normalise_gtin("00012345678905") == normalise_gtin("012345678905") == "12345678905"


def test_same_gtin_pairs_records_whatever_their_titles():
    found = find_duplicates(frame(
        {"sku": "A", "title": "Acme steel bottle 500ml", "brand": "Acme", "gtin": "5012345678900", "price": 10},
        {"sku": "B", "title": "Stainless bottle by Acme (0.5 L)", "brand": "ACME", "gtin": "05012345678900",
         "price": 10.2}), CONFIG)
    assert pairs(found) == {frozenset("AB")}
    assert "gtin" in found[0].blocked_by
    assert found[0].similarity["gtin"] == 100.0 and found[0].similarity["colour"] is None


def test_typos_reordered_words_and_units_without_gtin_are_found_by_brand_and_title():
    found = find_duplicates(frame(
        {"sku": "A", "title": "Acme Trail Merino Jacket 840", "brand": "Acme", "gtin": "5012345678900",
         "mpn": "AC-1234", "price": 120, "colour": "red"},
        {"sku": "B", "title": "Acme Merino Trial Jacket 840", "brand": "Acme Ltd", "price": 119},
        {"sku": "C", "title": "Globex Desk Lamp", "brand": "Globex", "gtin": "5098765432109", "price": 30}), CONFIG)
    assert pairs(found) == {frozenset("AB")}
    assert found[0].blocked_by == ("brand+title",)
    assert found[0].score >= CONFIG.threshold


def test_variants_of_one_product_are_not_duplicates():
    found = find_duplicates(frame(
        {"sku": "A", "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900", "price": 10},
        {"sku": "B", "title": "Acme Steel Bottle 750ml", "brand": "Acme", "price": 12},
        {"sku": "C", "title": "Acme Steel Bottle 0.75 l", "brand": "Acme", "gtin": "5011111111116", "price": 12}),
        CONFIG)
    assert pairs(found) == {frozenset("BC")}  # the two 750 ml bottles, not the 500 ml one


def test_survivor_is_the_most_complete_record_and_fills_its_gaps_from_the_duplicate():
    found = find_duplicates(frame(
        {"sku": "A", "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900"},
        {"sku": "B", "title": "Acme Steel Bottle 500 ml", "brand": "Acme", "gtin": "5012345678900",
         "mpn": "AC-1", "price": 10, "colour": "red"}), CONFIG)
    (p,) = found
    assert (p.survivor, p.duplicate) == ("B", "A")
    assert p.keep["title"].value == "Acme Steel Bottle 500 ml" and "B survives" in p.keep["title"].reason
    assert p.fills() == {}  # A has nothing B lacks
    again = find_duplicates(frame(
        {"sku": "A", "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900", "mpn": "AC-1",
         "price": 10},
        {"sku": "B", "title": "Acme Steel Bottle", "brand": "Acme", "gtin": "5012345678900", "colour": "red"}),
        CONFIG)
    assert again[0].survivor == "A"
    assert again[0].fills() == {"colour": "red"}
    assert again[0].keep["colour"].reason == "filled from B: A has none"


def test_a_rejected_pair_is_never_proposed_even_through_a_third_record():
    rows = frame(*({"sku": s, "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900"}
                   for s in "ABC"))
    assert pairs(find_duplicates(rows, CONFIG)) == {frozenset("AB"), frozenset("AC")}
    found = find_duplicates(rows, CONFIG, exclude=[("B", "A")])
    assert frozenset("AB") not in pairs(found)
    assert pairs(found)  # A and C are still proposed


def test_compare_scores_one_pair_as_the_operation_does():
    a = {"sku": "A", "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900"}
    b = {"sku": "B", "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900"}
    assert compare(a, b, CONFIG)[0] == 100.0
    assert compare(a, {**b, "gtin": "5011111111116"}, CONFIG)[0] < CONFIG.threshold


def test_defaults_compare_the_identifier_title_and_brand_attributes():
    bare = CatalogueSpec.model_validate({"key": "sku", "attributes": {
        "sku": {"type": "text"}, "title": {"type": "text"}, "brand": {"type": "text"},
        "ean": {"type": "text", "format": "gtin"}}})
    config = DedupeConfig.from_catalogue(bare)
    assert (config.gtin, config.mpn, config.title, config.brand) == ("ean", None, "title", "brand")
    assert dict(config.weights) == {"ean": 4.0, "title": 3.0, "brand": 1.0}


def test_quality_on_the_labelled_synthetic_set_meets_the_target():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "dedupe.py"
    spec = importlib.util.spec_from_file_location("dedupe_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.evaluate(3000, seed=11)
    assert result["true_pairs"] > 300
    assert result["precision"] >= 0.9 and result["recall"] >= 0.9 and result["f1"] >= 0.9
