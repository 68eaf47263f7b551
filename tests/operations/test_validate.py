"""Validate: each rule a catalogue team relies on, on DataFrames shaped like the file reader's output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batches import batch, catalogue

from claro_dagster.operations.read.common import CELL_DTYPE
from claro_dagster.operations.validate import ERROR_COLUMNS, validate_batch
from claro_dagster.operations.values import (
    AttributeRules,
    canonical_enum,
    gtin_is_valid,
    gtin_problem,
    gtin_validity,
    parse_date,
    parse_number,
    parse_quantity,
)
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec

GS1_VECTORS = Path(__file__).resolve().parents[1] / "contracts" / "gs1" / "gtin-check-digit-vectors.json"






def reasons(result, attribute: str) -> dict[int, str]:
    errors = result.errors[result.errors["attribute"] == attribute]
    return dict(zip(errors["line"], errors["reason"], strict=True))


# --- value rules --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("12.5", 12.5), ("1.299,00", 1299.0), ("1,299.00", 1299.0), ("£12.50", 12.5), ("12 500", 12500.0),
    ("GBP 3.20", 3.2), ("3,20 EUR", 3.2), ("-4", -4.0), ("1,299", 1299.0), ("12,5", 12.5),
    ("1 299,99 €", 1299.99), ("0,500", 0.5), ("1e3", 1000.0), ("1\u202f000", 1000.0), ("1'299.50", 1299.5),
])
def test_parse_number_reads_supplier_formats(text, expected):
    assert parse_number(text) == pytest.approx(expected)


def test_parse_number_ambiguous_grouping_follows_the_locale():
    assert parse_number("1.299") == pytest.approx(1.299)
    assert parse_number("1.299", locale_hint="de_DE") == pytest.approx(1299.0)
    assert parse_number("1,299", locale_hint="de_DE") == pytest.approx(1.299)


@pytest.mark.parametrize("text", ["abc", "1,2,3", "12 kg", "1.2.3,4,5", "nan", "inf", "", "12..5", "1 2"])
def test_parse_number_rejects_with_a_reason(text):
    with pytest.raises(ValueError, match="not a number"):
        parse_number(text)


def test_parse_quantity_converts_to_the_attribute_unit():
    assert parse_quantity("500 g", "kg") == pytest.approx(0.5)
    assert parse_quantity("500g", "kg") == pytest.approx(0.5)
    assert parse_quantity("2 lb", "kg") == pytest.approx(0.90718474)
    assert parse_quantity("1,5 KG", "kg") == pytest.approx(1.5)
    assert parse_quantity("750", "kg") == 750.0  # a bare number is in the attribute's unit
    assert parse_quantity("33 cl", "ml") == pytest.approx(330.0)
    assert parse_quantity("500 gr", "kg") == pytest.approx(0.5)  # "gr" on packaging is grams, not grains
    assert parse_quantity("20 °C", "degF") == pytest.approx(68.0)  # offset scales are not a plain factor


@pytest.mark.parametrize(("text", "message"), [
    ("2 parsecs", "length, not convertible to kg"),
    ("2 blorps", "unknown unit 'blorps'"),
    ("3 pcs", "count, not a unit"),
    ("heavy", "not a quantity"),
])
def test_parse_quantity_names_the_unit_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_quantity(text, "kg")


def test_canonical_enum_matches_case_spacing_and_synonyms():
    colour = AttributeSpec(type="enum", values=["grey", "light blue"], synonyms={"grey": ["Gray", "gry"]})
    assert canonical_enum("GREY", colour) == "grey"
    assert canonical_enum(" gray ", colour) == "grey"
    assert canonical_enum("Light-Blue", colour) == "light blue"
    with pytest.raises(ValueError, match="'purple' is not one of: grey, light blue"):
        canonical_enum("purple", colour)


@pytest.mark.parametrize(("text", "tz", "expected"), [
    ("2025-03-01", None, "2025-03-01"),
    ("01/03/2025", None, "2025-03-01"),  # day first (UK)
    ("1.3.25", None, "2025-03-01"),
    ("1 March 2025", None, "2025-03-01"),
    ("March 1, 2025", None, "2025-03-01"),
    ("2025-03-01 00:00:00", None, "2025-03-01"),  # a spreadsheet date cell
    ("2025-03-01 14:30", "Europe/London", "2025-03-01T14:30:00+00:00"),
    ("2025-07-01T14:30:00", "Europe/London", "2025-07-01T14:30:00+01:00"),
    ("2025-07-01T14:30:00Z", "Europe/Paris", "2025-07-01T16:30:00+02:00"),
    ("01/07/2025 09:05", "Europe/London", "2025-07-01T09:05:00+01:00"),
])
def test_parse_date_gives_iso_8601(text, tz, expected):
    assert parse_date(text, tz) == expected


@pytest.mark.parametrize("text", ["31/02/2025", "13/13/2025", "March 2025", "soon", "12", "2025-02-30"])
def test_parse_date_rejects_impossible_or_incomplete_dates(text):
    with pytest.raises(ValueError, match="date"):
        parse_date(text, None)


def _gs1_vectors() -> list[tuple[str, str, bool]]:
    data = json.loads(GS1_VECTORS.read_text())
    out = [(v["value"], v["type"], v["valid"]) for v in data["gs1_unit_test_vectors"]]
    out += [(v["value"], v["type"], v["valid"]) for v in data["gs1_encoder_test_gtins"]]
    out += [(v["value"], v["type"], v["valid"]) for v in data["not_from_gs1_commonly_cited_examples"]["values"]]
    return out


@pytest.mark.parametrize(("value", "kind", "valid"), _gs1_vectors())
def test_gtin_check_digit_matches_gs1_vectors(value, kind, valid):
    # SSCC-18 shares the check-digit algorithm but is not a GTIN: never valid here.
    expected = valid and not kind.startswith("SSCC")
    assert gtin_is_valid(value) is expected
    assert bool(gtin_validity([value])[0]) is expected
    assert (gtin_problem(value) is None) is expected


def test_gtin_zero_padding_keeps_the_check_digit():
    assert gtin_is_valid("02345673") and gtin_is_valid("00000002345673")


def test_vectorised_gtin_check_agrees_with_stdnum():
    rng = np.random.default_rng(3)
    values = ["".join(map(str, rng.integers(0, 10, n))) for n in rng.choice([7, 8, 12, 13, 14, 15], 3000)]
    values += ["4006381 333931", "4006381-333931", "400638133393١", "", "abc", None, 4006381333931]
    expected = [isinstance(v, str) and gtin_is_valid(v) for v in values]
    assert gtin_validity(values).tolist() == expected
    assert sum(expected) > 100  # the sample holds valid GTINs too


def test_gtin_problem_explains_spreadsheet_damage():
    assert "scientific notation" in gtin_problem("4.00638E+12")
    assert "expected 1, found 2" in gtin_problem("4006381333932")
    assert "has 11 digits" in gtin_problem("40063813339")


# --- the batch ----------------------------------------------------------------------------------

def test_valid_rows_pass_and_keep_their_lines():
    frame = batch(sku=["A-1", "A-2"], title=["Widget", "Gadget"])
    result = validate_batch(frame, catalogue(title=AttributeSpec(type="text", required=True)))
    assert result.errors.empty and list(result.errors.columns) == ERROR_COLUMNS
    assert result.valid["__line__"].tolist() == [2, 3]
    assert result.rejected.empty and "__reasons__" in result.rejected.columns
    assert result.rows_in == 2 and result.error_rate == 0.0


def test_required_blank_is_an_error_unless_there_is_a_default():
    frame = batch(sku=["A-1", "A-2", "A-3"], title=["Widget", "   ", None], status=[None, None, None])
    cat = catalogue(title=AttributeSpec(type="text", required=True),
                    status=AttributeSpec(type="enum", values=["active", "draft"], required=True, default="draft"))
    result = validate_batch(frame, cat)
    assert reasons(result, "title") == {3: "required value is missing", 4: "required value is missing"}
    assert reasons(result, "status") == {}
    assert result.error_rate == pytest.approx(2 / 3)


def test_markup_without_text_counts_as_missing():
    frame = batch(sku=["A-1"], description=["<p> </p>"])
    cat = catalogue(description=AttributeSpec(type="text", strip_html=True, required=True))
    assert reasons(validate_batch(frame, cat), "description") == {2: "required value is missing"}


def test_required_attribute_missing_from_the_batch_fails_every_row():
    result = validate_batch(batch(sku=["A-1"]), catalogue(title=AttributeSpec(type="text", required=True)))
    assert reasons(result, "title") == {2: "required value is missing"}


def test_regex_and_lengths_are_checked_on_the_cleaned_value():
    frame = batch(sku=["ACM-001", "acm-002", "ACM-3", "ACM-004"],
                  title=["Widget", "  Gadget  ", "Go", "x" * 31])
    cat = CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True, regex=r"[A-Z]{3}-\d{3}", casing="upper"),
        "title": AttributeSpec(type="text", min_length=3, max_length=30),
    })
    result = validate_batch(frame, cat)
    # "acm-002" is upper-cased by normalization, "  Gadget  " trimmed: both are fine
    assert reasons(result, "sku") == {4: r"'ACM-3' does not match the pattern [A-Z]{3}-\d{3}"}
    assert reasons(result, "title") == {
        4: "is 2 characters, shorter than the minimum 3",
        5: "is 31 characters, longer than the maximum 30",
    }


def test_numbers_parse_with_units_and_ranges_after_conversion():
    frame = batch(sku=[f"A-{i}" for i in range(7)],
                  weight=["2 lb", "500 g", "2 parsecs", "12 kg", "0.75", "abc", "1,5 kg"],
                  price=["£12.50", "1.299,00", "-1", "12", "", "twelve", "1,299.00"])
    cat = catalogue(weight=AttributeSpec(type="number", unit="kg", min=0.1, max=10),
                    price=AttributeSpec(type="number", min=0))
    result = validate_batch(frame, cat)
    assert reasons(result, "weight") == {
        4: "'2 parsecs': parsecs is a length, not convertible to kg (a mass)",
        5: "12 kg is above the maximum 10 kg",
        7: "'abc' is not a quantity (expected a number, optionally with a unit)",
    }
    assert reasons(result, "price") == {4: "-1 is below the minimum 0", 7: "'twelve' is not a number"}


def test_enum_membership_allows_synonyms():
    frame = batch(sku=["A-1", "A-2", "A-3", "A-4"], colour=["grey", "Gray", "GREY ", "purple"])
    cat = catalogue(colour=AttributeSpec(type="enum", values=["grey", "red"], synonyms={"grey": ["gray"]}))
    assert reasons(validate_batch(frame, cat), "colour") == {5: "'purple' is not one of: grey, red"}


def test_gtin_url_email_and_date_formats():
    frame = batch(sku=["A-1", "A-2", "A-3"],
                  gtin=["4006381333931", "4006381333932", "036000291452"],
                  url=["https://acme.example/p/1", "www.acme.example", "http://localhost:8080/x"],
                  email=["sales@acme.example", "sales@", "a.b@c.co.uk"],
                  released=["01/03/2025", "2025-03-01", "30/02/2025"])
    cat = catalogue(gtin=AttributeSpec(type="text", format="gtin", identifier=True),
                    url=AttributeSpec(type="text", format="url"),
                    email=AttributeSpec(type="text", format="email"),
                    released=AttributeSpec(type="date"))
    result = validate_batch(frame, cat)
    assert reasons(result, "gtin") == {3: "GTIN '4006381333932' has a wrong check digit (expected 1, found 2)"}
    assert reasons(result, "url") == {3: "'www.acme.example' is not a web address (expected http:// or https://)"}
    assert reasons(result, "email") == {3: "'sales@' is not an email address"}
    assert reasons(result, "released") == {4: "'30/02/2025' is not a valid day/month/year date"}


def test_reference_integrity_against_known_keys():
    frame = batch(sku=["A-1", "A-2", "A-3"], brand=["acme", "globex", None])
    cat = catalogue(brand=AttributeSpec(type="reference", target="brands"))
    result = validate_batch(frame, cat, known_references={"brand": {"acme"}})
    assert reasons(result, "brand") == {3: "'globex' is not a key in catalogue 'brands'"}
    assert validate_batch(frame, cat).errors.empty  # no known keys given: not checked


def test_duplicate_key_fails_every_line_naming_all_of_them():
    skus = ["ACM-001", "ACM-002", "ACM-003", "acm-001 ", "ACM-004", "ACM-002", "ACM-002"]
    frame = batch(sku=skus)
    frame["__line__"] = [4, 5, 6, 17, 18, 19, 30]
    cat = CatalogueSpec(key="sku", attributes={"sku": AttributeSpec(type="text", required=True, casing="upper")})
    result = validate_batch(frame, cat)
    assert reasons(result, "sku") == {
        4: "sku 'ACM-001' appears on lines 4 and 17",
        17: "sku 'ACM-001' appears on lines 4 and 17",
        5: "sku 'ACM-002' appears on lines 5, 19 and 30",
        19: "sku 'ACM-002' appears on lines 5, 19 and 30",
        30: "sku 'ACM-002' appears on lines 5, 19 and 30",
    }
    assert result.valid["__line__"].tolist() == [6, 18]  # neither duplicate silently wins


def test_a_key_repeated_many_times_names_the_first_lines():
    result = validate_batch(batch(sku=["A-1"] * 13), catalogue())
    expected = "sku 'A-1' appears on lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 3 more"
    assert set(reasons(result, "sku").values()) == {expected}


def test_rows_matched_to_the_same_record_are_duplicates():
    frame = batch(sku=["ACM-001", None], gtin=["4006381333931", "4006381333931"])
    frame["__record__"] = ["ACM-001", "ACM-001"]  # the second row matched by GTIN
    frame["__match__"] = ["key", "gtin"]
    cat = catalogue(gtin=AttributeSpec(type="text", format="gtin"))
    cat.attributes["sku"].required = False
    result = validate_batch(frame, cat)
    assert reasons(result, "sku") == {2: "sku 'ACM-001' appears on lines 2 and 3",
                                      3: "sku 'ACM-001' appears on lines 2 and 3"}


def test_rejected_rows_keep_all_reasons_and_every_row_is_accounted_for():
    frame = batch(sku=["A-1", None, "A-3"], price=["1", "x", "-5"], extra=["keep", "me", "too"])
    cat = catalogue(price=AttributeSpec(type="number", min=0))
    result = validate_batch(frame, cat)
    assert result.errors["record"].tolist() == [None, None, "A-3"]
    assert result.rejected["__reasons__"].tolist() == [
        "sku: required value is missing; price: 'x' is not a number",
        "price: -5 is below the minimum 0",
    ]
    assert result.rejected["__line__"].tolist() == [3, 4]
    assert list(result.valid.columns) == list(frame.columns)
    assert len(result.valid) + len(result.rejected) == result.rows_in == 3
    assert result.errors["value"].tolist() == [None, "x", "-5"]


def test_identifier_numbers_keep_leading_zeros():
    frame = batch(sku=["A-1"], code=["000123"])
    cat = catalogue(code=AttributeSpec(type="number", identifier=True, regex=r"\d{6}"))
    assert validate_batch(frame, cat).errors.empty


def test_empty_batch():
    result = validate_batch(batch(sku=[]), catalogue())
    assert result.rows_in == 0 and result.error_rate == 0.0 and result.errors.empty


# --- the vectorised paths agree with the scalar rules -----------------------------------------

TRICKY = [
    "Widget", " Widget", "Widget ", "Wid  get", "Wid\tget", "Wid\xa0get", "Wid\u3000get", "Wid\x1cget",
    "line\nbreak", "café au lait", "ACME", "acme", "Straße", "ß", "<b>bold</b>", "fish &amp; chips",
    "", "   ", "https://acme.example/p/1", "https://acme.example/p/1\xa0x", "http://localhost/x",
    "https://acme.example:8080/", "ftp://acme.example", "sales@acme.example", "sales@acme", "a@b.c",
    "4006381333931", "4006381333932", "02345673", "0234567", "2025-03-01", "2025-02-30", "01/03/2025",
    "grey", "Gray", "GREY", "red", "ACM-001", "acm-001", "ACM-01", "x" * 50, "iPhone case", "500 g", "2 lb",
    "12.5", "£1.299,00", "1e3", "1e500", "+5", ".5", "5.", "1E5", " 12 ", "-0", None, float("nan"),
    # markup the column kernels strip themselves, and markup they leave to the HTML parser
    "<p>The <b>Summit</b> tent</p><ul><li>Light</li><li>2 year warranty</li></ul>", "<p></p>", "<br/>",
    "<p> spaced   out </p>\n\n\n<p>next</p>", "a<b>b</b>c", "<div class=x>boxed</div>", "<p>caf\xe9</p>",
    "<script>x</script>kept", "1 < 2", "<p>fish &amp; chips</p>", "<p>a\rb</p>", "<P>Upper</P>", "<p>\u2028</p>",
    "<li>\xa0tab\there</li>", "<p/>x<br>y", "<section\xa0x>s</section>", "<ſection>s</ſection>",
    # quantities the column kernels convert, and ones they leave to pint
    "500 g", "1.2 kg", "3 KG", "1.5kg", "250 mg", "2 lb", "7 parsec", "3 pcs", "5 degC", "1,5 kg", "12 000 g",
    "£12.50", "$3", "€0.5", "¥1.299", "£1,299.00", "£ 4", "£-2", "12.50£", "£0.05", "£007.10",
    "0002025-01-01", "0000-01-01", "2024-02-29", "2023-02-29", "ACM-0012", "ACM-0012\n", "ÀCM-001",
]


@pytest.mark.parametrize("spec", [
    AttributeSpec(type="text", max_length=20, min_length=2),
    AttributeSpec(type="text", strip_html=True, casing="upper"),
    AttributeSpec(type="text", strip_html=True, max_length=30),
    AttributeSpec(type="text", regex=r"^[A-Z]{2,4}-\d{3,4}$"),
    AttributeSpec(type="text", regex=r"(?<=x)y|\w+"),  # a lookbehind: RE2 refuses it, Python `re` decides
    AttributeSpec(type="text", casing="lower", regex=r"[a-z ]+"),
    AttributeSpec(type="text", casing="title"),
    AttributeSpec(type="text", identifier=True, regex=r"[A-Z]{3}-\d{3}", casing="upper"),
    AttributeSpec(type="text", format="gtin"),
    AttributeSpec(type="text", format="url"),
    AttributeSpec(type="text", format="email"),
    AttributeSpec(type="image"),
    AttributeSpec(type="date"),
    AttributeSpec(type="enum", values=["grey", "red"], synonyms={"grey": ["gray"]}),
    AttributeSpec(type="number", unit="kg", max=1000),
    AttributeSpec(type="number", min=0),
    AttributeSpec(type="number", min=0, max=10),
    AttributeSpec(type="reference"),
], ids=lambda s: f"{s.type}-{s.format or s.casing or s.unit or s.regex or ''}")
@pytest.mark.parametrize("by_value", [True, False], ids=["per-distinct-value", "whole-column"])
@pytest.mark.parametrize("dtype", [object, CELL_DTYPE], ids=["object", "arrow"])
def test_column_evaluation_matches_value_by_value_evaluation(spec, by_value, dtype):
    rules = AttributeRules("attr", spec)
    values = TRICKY * 3 + [f"value {i}" for i in range(100)]  # > 64 unique values: vectorised paths run
    column = pd.Series(values, dtype=object)
    if dtype is CELL_DTYPE:  # as batch_raw reads them: text cells, NaN for empty ones
        column = pd.Series([v if isinstance(v, str) else None for v in values], dtype=CELL_DTYPE)
        values = column.tolist()
    outcome = rules.evaluate_column(column, len(values), by_value=by_value)
    for i, raw in enumerate(values):
        value, change, problem, blank = rules.evaluate(raw)
        got = (outcome.values[i], outcome.change[i], outcome.problem[i], bool(outcome.blank[i]))
        assert got == (value, change, problem, blank) or (
            isinstance(value, float) and np.isnan(value) and problem == got[2]), raw
        assert (bool(outcome.changed[i]), bool(outcome.failed[i])) == (change is not None, problem is not None), raw


def test_a_source_speaking_for_one_supplier_rejects_other_suppliers_rows():
    from claro_dagster.operations.validate import Ownership

    cat = catalogue(supplier=AttributeSpec(type="reference", target="suppliers"), title=AttributeSpec(type="text"))
    frame = batch(sku=["A1", "B2", "C3", "D4", None], supplier=["SUP-1", "SUP-1", "SUP-2", None, "SUP-1"],
                  title=["Mug", "Cup", "Jug", "Bowl", "Plate"])
    owned = Ownership("supplier", "SUP-1", {"B2": "SUP-2", "D4": "SUP-1", "A1": "SUP-1"})
    result = validate_batch(frame, cat, ownership=owned)
    assert reasons(result, "supplier") == {4: "names supplier 'SUP-2': this source sends the products of 'SUP-1' "
                                              "only"}
    assert reasons(result, "sku") == {3: "sku 'B2' is a product of supplier 'SUP-2', not of 'SUP-1': send your own "
                                         "products only", 6: "required value is missing"}
    assert sorted(result.rejected["__line__"]) == [3, 4, 6]
    plain = validate_batch(frame, cat)  # without ownership: only the missing key
    assert sorted(plain.rejected["__line__"]) == [6]
