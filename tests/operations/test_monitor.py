"""Pure monitor logic: the safe expression evaluator, price rules, MAD outliers, competitor matching, drift."""

from __future__ import annotations

import math

import pytest

from claro_dagster.operations.monitor import (
    DriftTolerance,
    ExpressionError,
    Listing,
    Observation,
    Profile,
    competitor_gaps,
    compile_expression,
    drift,
    expression_names,
    match_listings,
    modified_z,
    outliers,
    price_changes,
)


def test_absolute_expressions_evaluate_arithmetic_and_comparisons_over_a_record():
    below_cost = compile_expression("price < cost * 1.2 + 0.5")
    assert below_cost({"price": 10, "cost": 9}) is True
    assert below_cost({"price": 12, "cost": 9}) is False
    assert below_cost({"price": 10, "cost": None}) is None  # an empty attribute: no verdict, no detection
    assert compile_expression("price / cost < 1 and not status == 'draft'")({"price": 1, "cost": 0,
                                                                            "status": "x"}) is None  # 1/0
    assert compile_expression("price <= 0 or brand == 'Acme'")({"price": 5, "brand": "Acme"}) is True
    assert compile_expression("0 < price < 5")({"price": 3}) is True
    assert expression_names("price < cost * (1 + margin)") == ["price", "cost", "margin"]


@pytest.mark.parametrize("text, said", [
    ("__import__('os').system('true')", "Call is not allowed"),
    ("price.real < 1", "Attribute is not allowed"),
    ("price[0] < 1", "Subscript is not allowed"),
    ("(lambda: 1)() == 1", "not allowed"),
    ("price < cost *", "does not parse"),
    ("price * 2", "is not a condition"),
    ("price < True", "only numbers and quoted text"),
    ("", "empty"),
])
def test_anything_but_arithmetic_and_comparisons_is_refused_before_it_runs(text, said):
    with pytest.raises(ExpressionError, match=said.replace("(", r"\(")):
        compile_expression(text)


def obs(record, price, at, source="catalogue", listing="", i=None):
    return Observation(record, source, price, f"2026-01-{at:02d}T00:00:00.000000Z", listing, id=i)


def test_threshold_compares_each_new_observation_with_the_one_before_it_in_its_series():
    history = [obs("A", 10, 1), obs("A", 11.5, 2), obs("B", 10, 1), obs("B", 10.5, 2),
               obs("A", 20, 1, source="rival", listing="r:1"), obs("A", 10, 3, source="rival", listing="r:1")]
    new = history[1:2] + history[3:4] + history[5:6]
    found = price_changes(history, new, 10)
    assert [(d.record, d.source, d.reference, d.value) for d in found] == [("A", "catalogue", 10, 11.5),
                                                                           ("A", "rival", 20, 10)]
    assert found[0].detail["change_percent"] == 15.0 and "+15.0%" in found[0].message
    assert price_changes(history[:1], history[:1], 10) == []  # a first observation has nothing to move from


def test_modified_z_is_robust_and_handles_a_history_without_spread():
    assert modified_z(10, [10, 10, 11, 9, 10]) == 0
    # MAD is 0 here (three of five equal the median): the mean absolute deviation (0.4) stands in
    assert modified_z(30, [10, 10, 11, 9, 10]) == pytest.approx((30 - 10) / (1.253314 * 0.4))
    assert modified_z(14, [10, 12, 11, 9, 13]) == pytest.approx(0.6745 * 3 / 1)
    assert math.isinf(modified_z(11, [10, 10, 10])) and modified_z(10, [10, 10, 10]) == 0


def test_anomaly_flags_an_outlier_against_that_records_own_history_only():
    history = [obs("A", p, d) for d, p in enumerate([10, 10.5, 9.5, 10.2, 9.8, 10.1], start=1)]
    history += [obs("A", 25, 7), obs("B", 25, 7)]
    found = outliers(history, history[-2:], max_z=3.5, min_history=5)
    assert [(d.record, d.value, d.reference) for d in found] == [("A", 25, 10.05)]  # B has no history yet
    assert outliers(history, history[-2:], min_history=7) == []
    calm = history[:6] + [obs("A", 10.4, 7)]
    assert outliers(calm, calm[-1:]) == []


RECORDS = [
    {"sku": "S1", "gtin": "04006381333931", "mpn": "MX-1", "title": "Trail Runner 2", "brand": "Acme"},
    {"sku": "S2", "gtin": None, "mpn": "ab-22", "title": "Canvas Tote Bag", "brand": "Globex"},
    {"sku": "S3", "gtin": None, "mpn": None, "title": "Steel Water Bottle 750ml", "brand": "Initech"},
    {"sku": "S4", "gtin": None, "mpn": "AB22", "title": "Other", "brand": "Umbrella"},
]


def test_listings_match_by_gtin_then_mpn_then_name_and_brand():
    listings = [
        Listing("rival", 9.0, gtin="4006381333931"),  # the same GTIN without its leading zero
        Listing("rival", 5.0, mpn="AB-22", brand="Globex"),  # MPN shared by S2 and S4: the brand decides
        Listing("rival", 7.0, name="water bottle steel 750 ml", brand="INITECH"),
        Listing("rival", 7.0, name="steel water bottle 750ml", brand="Other brand"),  # brand differs: no match
        Listing("rival", 1.0, mpn="AB22"),  # no brand: S2 and S4 both fit, so neither is guessed
    ]
    matches = match_listings(RECORDS, listings, key="sku", name_similarity=80)
    assert [(m.record, m.by, m.listing.price) for m in matches] == [("S1", "gtin", 9.0), ("S2", "mpn", 5.0),
                                                                    ("S3", "name+brand", 7.0)]
    assert matches[0].listing.id == "rival:4006381333931"


def test_competitor_gap_is_a_competitor_cheaper_by_more_than_the_percentage():
    latest = [obs("A", 8, 2, "file", "r:1"), obs("B", 9.5, 2, "file", "r:2"), obs("C", 1, 2)]
    found = competitor_gaps({"A": 10, "B": 10, "C": 10}, latest, 10)
    assert [(d.record, d.detail["gap_percent"]) for d in found] == [("A", 20.0)]


def profile(score, fills, colours):
    return Profile(score, 10, fills, {"colour": colours})


def test_drift_compares_with_the_previous_runs_and_says_nothing_without_them():
    now = profile(80, {"title": 0.7, "price": 1.0}, {"red": 0.5, "teal": 0.5})
    assert drift(now, [], DriftTolerance()) == []  # no history: this run is the baseline
    before = [profile(90, {"title": 0.95, "price": 1.0}, {"red": 1.0})]
    found = {d.rule: d for d in drift(now, before, DriftTolerance(fill_rate=0.05, score=2, distribution=0.2))}
    assert set(found) == {"score", "fill_rate", "new_value", "distribution"}
    assert found["fill_rate"].detail == {"attribute": "title"} and found["fill_rate"].reference == 0.95
    assert found["new_value"].detail["values"] == ["teal"]
    assert found["distribution"].value == 0.5
    assert drift(now, before, DriftTolerance(fill_rate=0.3, score=15, distribution=0.6, new_values=False)) == []
    # the baseline is the median over the previous runs: one bad run in the past does not set it
    runs = [profile(90, {"title": 0.9}, {}), profile(50, {"title": 0.2}, {}), profile(90, {"title": 0.9}, {})]
    assert [d.rule for d in drift(profile(85, {"title": 0.8}, {}), runs, DriftTolerance())] == ["score", "fill_rate"]
