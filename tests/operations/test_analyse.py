"""Analyse: the data-quality report, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from stdnum import ean

from claro_dagster.operations.analyse import analyse_catalogue, gtin_is_valid, rate
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec


def spec(**attributes: AttributeSpec) -> CatalogueSpec:
    return CatalogueSpec(key="sku", attributes=attributes)


CATALOGUE = spec(
    title=AttributeSpec(type="text", required=True, importance=3),
    brand=AttributeSpec(type="text", importance=1),
    gtin=AttributeSpec(type="text", format="gtin", identifier=True, importance=1),
    price=AttributeSpec(type="number", required=True, importance=2, min=0),
    colour=AttributeSpec(type="enum", values=["red", "blue"], synonyms={"red": ["Red"]}, importance=0),
)


def records() -> pd.DataFrame:
    """Five records; the expected numbers below are worked out from this table by hand."""
    return pd.DataFrame(
        {
            "sku": ["A1", "A2", "A2", "A4", "A5"],
            "title": ["Blue Shirt", "blue shirt!", "Hat", None, "Scarf"],
            "brand": ["Acme", "ACME", None, "Zed", "Zed"],
            "gtin": ["4006381333931", "4006381333932", None, "  ", "96385074"],
            "price": [10.0, 20.0, np.nan, 30.0, 40.0],
            "colour": ["red", "Red", "blue", None, "blue"],
        }
    )


def by_attribute(report):
    return {f.attribute: f for f in report.fields}


def test_fill_rates_uniqueness_and_validity_match_the_hand_count():
    report = analyse_catalogue(records(), CATALOGUE, name="products")
    fields = by_attribute(report)

    assert report.records == 5
    assert report.columns_analysed == 5
    # blank GTIN "  " is not filled
    assert {a: f.fill_rate for a, f in fields.items()} == {
        "title": 0.8, "brand": 0.8, "gtin": 0.6, "price": 0.8, "colour": 0.8}
    # brand: Acme, ACME, Zed, Zed -> 3 distinct of 4; colour: red, Red, blue, blue -> 3 of 4
    assert {a: f.uniqueness for a, f in fields.items()} == {
        "title": 1.0, "brand": 0.75, "gtin": 1.0, "price": 1.0, "colour": 0.75}
    # one GTIN fails its check digit, one colour is outside the list
    assert fields["gtin"].invalid == 1 and fields["gtin"].validity == pytest.approx(2 / 3)
    assert fields["colour"].invalid == 1 and fields["colour"].validity == 0.75
    assert fields["gtin"].quality == pytest.approx(0.4)
    assert fields["colour"].quality == pytest.approx(0.6)
    assert {a: f.rating for a, f in fields.items()} == {
        "title": "fair", "brand": "fair", "gtin": "poor", "price": "fair", "colour": "poor"}


def test_text_length_spread_and_numeric_stats():
    fields = by_attribute(analyse_catalogue(records(), CATALOGUE, name="products"))
    # title lengths 10, 11, 3, 5: mean 7.25, population variance 44.75 / 4
    assert fields["title"].length_cv == pytest.approx(math.sqrt(44.75 / 4) / 7.25)
    assert fields["price"].length_cv is None
    assert fields["title"].stats is None
    # prices 10, 20, 30, 40; std is the sample std (n - 1)
    assert fields["price"].stats == pytest.approx(
        {"mean": 25.0, "median": 25.0, "std": math.sqrt(500 / 3), "min": 10.0, "max": 40.0})


def test_duplicates_count_repeated_keys_and_near_duplicate_title_and_brand():
    report = analyse_catalogue(records(), CATALOGUE, name="products")
    # A2 repeats (record 3); "blue shirt!"/"ACME" normalises to record 1's "Blue Shirt"/"Acme"
    assert report.key_duplicates == 1
    assert report.near_duplicates == 1
    assert report.duplicate_estimate == 2
    assert report.unique_entries == 3


def test_key_in_the_index_counts_the_same_duplicates():
    report = analyse_catalogue(records().set_index("sku"), CATALOGUE, name="products")
    assert (report.key_duplicates, report.near_duplicates) == (1, 1)


def test_a_record_repeating_both_key_and_title_counts_once():
    frame = pd.DataFrame({"sku": ["A", "A", "B"], "title": ["Hat", "Hat", "Cap"]})
    report = analyse_catalogue(frame, spec(title=AttributeSpec(type="text")), name="p")
    assert (report.key_duplicates, report.near_duplicates, report.duplicate_estimate) == (1, 0, 1)


def test_near_duplicates_ignore_case_punctuation_and_accents_stay_letters():
    frame = pd.DataFrame({
        "sku": ["1", "2", "3", "4", "5"],
        "title": ["Crème Brûlée", "crème-brûlée!", "Creme Brulee", "Hat", None],
        "brand": [None, None, None, "X", None],
    })
    report = analyse_catalogue(frame, spec(title=AttributeSpec(type="text")), name="p")
    # 2 repeats 1; "Creme" without accents is a different spelling; a missing title never matches
    assert report.near_duplicates == 1


def test_score_is_weighted_by_importance():
    frame = pd.DataFrame({"sku": ["1", "2"], "a": ["x", "y"], "b": [None, None]})

    def score(importance_a: float, importance_b: float) -> float:
        catalogue = spec(a=AttributeSpec(type="text", importance=importance_a),
                         b=AttributeSpec(type="text", importance=importance_b))
        return analyse_catalogue(frame, catalogue, name="p").score

    assert score(3, 1) == 75.0
    assert score(1, 3) == 25.0
    assert score(0, 0) == 50.0  # no weights at all: plain mean


def test_score_of_the_hand_made_frame():
    # (3 x 0.8 + 1 x 0.8 + 1 x 0.4 + 2 x 0.8 + 0 x 0.6) / 7 = 0.742857...
    assert analyse_catalogue(records(), CATALOGUE, name="products").score == 74.3


@pytest.mark.parametrize(
    ("filled", "rating"),
    [(50, "excellent"), (49, "excellent"), (48, "good"), (45, "good"), (44, "fair"), (35, "fair"), (34, "poor")],
)
def test_ratings_at_their_boundaries(filled, rating):
    frame = pd.DataFrame({"sku": [str(i) for i in range(50)],
                          "title": ["t"] * filled + [None] * (50 - filled)})
    report = analyse_catalogue(frame, spec(title=AttributeSpec(type="text")), name="p")
    assert report.fields[0].rating == rating


def test_rate_thresholds_are_inclusive():
    assert [rate(q) for q in (1.0, 0.98, 0.9799, 0.9, 0.8999, 0.7, 0.6999, 0.0)] == [
        "excellent", "excellent", "good", "good", "fair", "fair", "poor", "poor"]


def test_critical_issues_name_the_follow_up_operation():
    report = analyse_catalogue(records(), CATALOGUE, name="products")
    critical = {(i.attribute, i.follow_up) for i in report.issues if i.severity == "critical"}
    assert critical == {
        ("title", "enrich"),   # required, 80 % filled
        ("price", "enrich"),   # required, 80 % filled
        ("gtin", "validate"),  # check digit
        ("colour", "normalize"),  # "Red" outside the list
        (None, "dedupe"),
    }
    warnings = {(i.attribute, i.follow_up) for i in report.issues if i.severity == "warning"}
    assert warnings == {("gtin", "enrich")}  # optional, 60 % filled; brand at 80 % is fine
    assert [i.severity for i in report.issues] == sorted((i.severity for i in report.issues),
                                                          key=lambda s: s != "critical")
    colour = next(i for i in report.issues if i.attribute == "colour")
    assert "'Red'" in colour.message and "1 of them known synonyms" in colour.message


def test_numbers_outside_the_range_and_text_in_number_columns_are_invalid():
    catalogue = spec(weight=AttributeSpec(type="number", min=0, max=100))
    frame = pd.DataFrame({"sku": ["1", "2", "3", "4"], "weight": ["5", "500", "heavy", None]})
    report = analyse_catalogue(frame, catalogue, name="p")
    field = report.fields[0]
    assert (field.fill_rate, field.invalid) == (0.75, 2)
    assert {(i.follow_up, i.severity) for i in report.issues} == {("validate", "warning"), ("normalize", "warning")}
    assert field.stats["max"] == 500.0


def test_urls_emails_and_lengths_are_checked():
    catalogue = spec(
        image=AttributeSpec(type="image", format="url"),
        contact=AttributeSpec(type="text", format="email"),
        code=AttributeSpec(type="text", min_length=2, max_length=3),
    )
    frame = pd.DataFrame({
        "sku": ["1", "2"],
        "image": ["https://cdn.example.com/a.jpg", "cdn/a.jpg"],
        "contact": ["sales@example.com", "sales at example"],
        "code": ["ab", "abcd"],
    })
    fields = by_attribute(analyse_catalogue(frame, catalogue, name="p"))
    assert [fields[a].invalid for a in ("image", "contact", "code")] == [1, 1, 1]


def test_attribute_missing_from_the_records_is_zero_filled():
    catalogue = spec(title=AttributeSpec(type="text", required=True))
    report = analyse_catalogue(pd.DataFrame({"sku": ["1"]}), catalogue, name="p")
    assert report.fields[0].fill_rate == 0.0
    assert "no such column" in report.issues[0].message


def test_zero_records():
    report = analyse_catalogue(records().iloc[:0], CATALOGUE, name="products", filter='brand == "None"')
    assert (report.records, report.score, report.duplicate_estimate, report.issues) == (0, 0.0, 0, [])
    assert all(f.fill_rate == 0.0 and f.rating == "poor" for f in report.fields)
    markdown = report.to_markdown()
    assert "No records to analyse match the filter." in markdown
    assert report.fields_table().shape[0] == 5


def test_markdown_has_headline_tables_and_follow_ups():
    report = analyse_catalogue(records(), CATALOGUE, name="products", filter='brand == "Acme"')
    markdown = report.to_markdown()
    assert markdown.startswith("## Data quality: products")
    assert 'Filter: `brand == "Acme"`' in markdown
    assert "| **74.3** / 100 | 5 | 3 | 2 | 5 | 5 |" in markdown
    for follow_up in ("enrich", "validate", "normalize", "dedupe"):
        assert f"Next: run `{follow_up}`." in markdown
    assert "| title | text | 3 | 80.0% | 100.0% | 100.0% | 0.46 | fair |" in markdown
    assert "| price | 25.00 | 25.00 | 12.91 | 10.00 | 40.00 |" in markdown


def test_fields_table_has_one_row_per_attribute():
    table = analyse_catalogue(records(), CATALOGUE, name="products").fields_table()
    assert list(table["attribute"]) == ["title", "brand", "gtin", "price", "colour"]
    assert table.set_index("attribute").loc["price", "mean"] == 25.0
    assert {"fill_rate", "uniqueness", "length_cv", "rating", "quality"} <= set(table.columns)


GS1_VECTORS = {  # from GS1's own syntax-engine tests (tests/contracts/gs1/gtin-check-digit-vectors.json)
    "02345673": True, "12345673": False, "416000336108": True, "416000336109": False,
    "1234567890128": True, "1234567890129": False, "12345678901231": True, "12345678901232": False,
    "123456789012345675": False,  # an SSCC, not a GTIN
    "": False,
}


def test_gtin_check_agrees_with_gs1_vectors_and_stdnum():
    values = list(GS1_VECTORS)
    assert gtin_is_valid(pa.array(values)).tolist() == list(GS1_VECTORS.values())
    rng = np.random.default_rng(7)
    sample = [str(v).zfill(int(n)) for v, n in zip(rng.integers(0, 10**14, 2000), rng.choice([8, 12, 13, 14], 2000),
                                                  strict=True)]
    assert gtin_is_valid(pa.array(sample)).tolist() == [ean.is_valid(v) for v in sample]
    # stdnum drops spaces and dashes before checking; a catalogue GTIN with them is not clean
    assert gtin_is_valid(pa.array(["4006381 333931", "4006-381333931", "96385074 ", "٤٠٠٦٣٨١٣٣٣٩٣١"])).tolist() == [
        False, False, False, False]


def test_numeric_gtin_column_and_mixed_object_text_are_read_as_text():
    catalogue = spec(gtin=AttributeSpec(type="text", format="gtin"), note=AttributeSpec(type="text"))
    frame = pd.DataFrame({"sku": [1, 2], "gtin": [4006381333931.0, np.nan], "note": [12, "x"]})
    fields = by_attribute(analyse_catalogue(frame, catalogue, name="p"))
    assert (fields["gtin"].fill_rate, fields["gtin"].invalid) == (0.5, 0)
    assert fields["note"].fill_rate == 1.0
