"""Normalize: canonical, typed values and a change log a reviewer can read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from batches import batch, catalogue

from claro_dagster.operations.normalize import CHANGE_COLUMNS, normalize_batch
from claro_dagster.operations.values import clean_text, strip_html
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec


def changes_for(result, attribute: str) -> list[tuple]:
    rows = result.changes[result.changes["attribute"] == attribute]
    return list(rows[["line", "old", "new", "reason"]].itertuples(index=False, name=None))


def test_text_whitespace_is_trimmed_and_collapsed():
    frame = batch(sku=["A-1", "A-2", "A-3"], title=["  Blue   widget ", "Tidy title", "Tab\there"])
    result = normalize_batch(frame, catalogue(title=AttributeSpec(type="text")))
    assert result.frame["title"].tolist() == ["Blue widget", "Tidy title", "Tab here"]
    assert changes_for(result, "title") == [
        (2, "  Blue   widget ", "Blue widget", "trimmed whitespace"),
        (4, "Tab\there", "Tab here", "trimmed whitespace"),
    ]
    assert list(result.changes.columns) == CHANGE_COLUMNS
    assert result.changes["record"].tolist() == ["A-1", "A-3"]


def test_paragraphs_survive_whitespace_cleaning():
    assert clean_text("First  line \n\n\n\n second line ")[0] == "First line\n\nsecond line"


@pytest.mark.parametrize(("casing", "text", "expected"), [
    ("upper", "acm-001", "ACM-001"),
    ("lower", "Steel WOOL", "steel wool"),
    ("title", "ACME WIDGET FOR KIDS", "Acme Widget for Kids"),
    ("title", "the iPhone case 500ml", "The iPhone Case 500ml"),
    ("title", "kids-zone play mat", "Kids-Zone Play Mat"),
    ("sentence", "BLUE WIDGET. GREAT VALUE", "Blue widget. great value"),
    ("sentence", "blue Widget by ACME", "Blue Widget by ACME"),
])
def test_casing_rules(casing, text, expected):
    result = normalize_batch(batch(sku=["A-1"], name=[text]),
                             catalogue(name=AttributeSpec(type="text", casing=casing)))
    assert result.frame["name"].tolist() == [expected]
    assert changes_for(result, "name") == [(2, text, expected, f"{casing} casing")]


def test_enum_synonyms_become_canonical():
    frame = batch(sku=["A-1", "A-2", "A-3", "A-4"], colour=["Gray", "GREY", "grey", "purple"])
    cat = catalogue(colour=AttributeSpec(type="enum", values=["grey", "red"], synonyms={"grey": ["gray"]}))
    result = normalize_batch(frame, cat)
    assert result.frame["colour"].tolist() == ["grey", "grey", "grey", "purple"]  # purple left as it was
    assert changes_for(result, "colour") == [
        (2, "Gray", "grey", "synonym 'Gray' -> 'grey'"),
        (3, "GREY", "grey", "canonical value 'GREY' -> 'grey'"),
    ]


def test_units_are_converted_to_the_attribute_unit():
    frame = batch(sku=["A-1", "A-2", "A-3", "A-4", "A-5"], weight=["500 g", "2 lb", "0.75", "1.2 kg", None])
    result = normalize_batch(frame, catalogue(weight=AttributeSpec(type="number", unit="kg")))
    assert result.frame["weight"].dtype == float
    assert result.frame["weight"].tolist()[:4] == pytest.approx([0.5, 0.90718474, 0.75, 1.2])
    assert np.isnan(result.frame["weight"].iloc[4])
    assert [(line, reason) for line, _, _, reason in changes_for(result, "weight")] == [
        (2, "converted 500 g to kg"), (3, "converted 2 lb to kg"), (5, "removed unit 'kg'"),
    ]


def test_numbers_with_locale_separators_become_floats():
    frame = batch(sku=["A-1", "A-2", "A-3", "A-4"], price=["1.299,00", "£12.50", "12.5", "1 299"])
    result = normalize_batch(frame, catalogue(price=AttributeSpec(type="number")))
    assert result.frame["price"].tolist() == [1299.0, 12.5, 12.5, 1299.0]
    assert changes_for(result, "price") == [
        (2, "1.299,00", 1299.0, "parsed '1.299,00' as 1299"),
        (3, "£12.50", 12.5, "parsed '£12.50' as 12.5"),
        (5, "1 299", 1299.0, "parsed '1 299' as 1299"),
    ]


def test_locale_hint_settles_ambiguous_grouping():
    frame = batch(sku=["A-1"], price=["1.299"])
    cat = catalogue(price=AttributeSpec(type="number"))
    assert normalize_batch(frame, cat).frame["price"].tolist() == [1.299]
    assert normalize_batch(frame, cat, locale_hint="de_DE").frame["price"].tolist() == [1299.0]


def test_values_that_cannot_be_normalized_are_left_as_they_were():
    frame = batch(sku=["A-1", "A-2"], weight=["2 parsecs", "1 kg"], released=["31/02/2025", "01/03/2025"])
    cat = catalogue(weight=AttributeSpec(type="number", unit="kg"), released=AttributeSpec(type="date"))
    result = normalize_batch(frame, cat)
    assert result.frame["weight"].tolist() == ["2 parsecs", 1.0]
    assert result.frame["released"].tolist() == ["31/02/2025", "2025-03-01"]
    assert result.changes["line"].tolist() == [3, 3]  # only line 3 changed


def test_dates_become_iso_with_the_attribute_timezone():
    frame = batch(sku=["A-1", "A-2", "A-3"],
                  released=["01/03/2025", "2025-03-01", "1 March 2025"],
                  updated=["2025-07-01 14:30", "2025-07-01T13:30:00Z", "01/07/2025 14:30"])
    cat = catalogue(released=AttributeSpec(type="date"),
                    updated=AttributeSpec(type="date", timezone="Europe/London"))
    result = normalize_batch(frame, cat)
    assert result.frame["released"].tolist() == ["2025-03-01"] * 3
    assert result.frame["updated"].tolist() == ["2025-07-01T14:30:00+01:00"] * 3
    assert changes_for(result, "released")[0] == (2, "01/03/2025", "2025-03-01", "date '01/03/2025' -> 2025-03-01")


def test_html_is_stripped_where_the_attribute_says_so():
    html = "<p>Strong &amp; light</p><script>alert(1)</script><ul><li>Steel</li><li>Oak</li></ul>"
    frame = batch(sku=["A-1", "A-2"], description=[html, "Plain & simple"], notes=["<b>kept</b>", None])
    cat = catalogue(description=AttributeSpec(type="text", strip_html=True), notes=AttributeSpec(type="text"))
    result = normalize_batch(frame, cat)
    assert result.frame["description"].tolist() == ["Strong & light\n\nSteel\n\nOak", "Plain & simple"]
    assert result.frame["notes"].tolist() == ["<b>kept</b>", None]
    assert changes_for(result, "description") == [(2, html, "Strong & light\n\nSteel\n\nOak", "stripped HTML")]


def test_strip_html_decodes_entities_and_leaves_plain_text_alone():
    assert strip_html("Fish &amp; chips &pound;5") == "Fish & chips £5"
    assert strip_html("5 < 6 and plain") == "5 < 6 and plain"
    assert strip_html("no markup") == "no markup"


def test_identifiers_are_never_numerically_reformatted():
    frame = batch(sku=[" 000123 ", "1.5E+12"], gtin=["00012345678905", " 4006381333931"],
                  code=["007", "1,000"])
    cat = CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", identifier=True),
        "gtin": AttributeSpec(type="text", format="gtin"),
        "code": AttributeSpec(type="number", identifier=True),
    })
    result = normalize_batch(frame, cat)
    assert result.frame["sku"].tolist() == ["000123", "1.5E+12"]
    assert result.frame["gtin"].tolist() == ["00012345678905", "4006381333931"]
    assert result.frame["code"].tolist() == ["007", "1,000"]
    assert set(result.changes["reason"]) == {"trimmed whitespace"}


def test_an_absent_column_stays_absent_and_blanks_stay_blank_even_with_a_default():
    # Issue 7 item 1: a blank column added here was written over existing records' values by the store.
    # Absent means "no information"; the store fills defaults, and only on the records it creates.
    frame = batch(sku=["A-1", "A-2"], title=["Mug", "Cup"])
    cat = catalogue(title=AttributeSpec(type="text"),
                    status=AttributeSpec(type="enum", values=["active", "draft"], default="draft"))
    result = normalize_batch(frame, cat)
    assert "status" not in result.frame.columns
    assert result.changes.empty
    blanks = normalize_batch(batch(sku=["A-1", "A-2"], status=[None, "Active"]), cat)
    assert blanks.frame["status"].tolist() == [None, "active"]


def test_line_numbers_and_other_columns_pass_through():
    frame = batch(sku=["A-1", "A-2"], title=["x", "y"], unmapped=["keep", "this"])
    result = normalize_batch(frame, catalogue(title=AttributeSpec(type="text", casing="upper")))
    assert list(result.frame.columns) == list(frame.columns)
    assert result.frame["__line__"].tolist() == [2, 3]
    assert result.frame["unmapped"].tolist() == ["keep", "this"]
    assert result.frame.index.equals(frame.index)


def test_nothing_to_change_gives_an_empty_change_log():
    result = normalize_batch(batch(sku=["A-1"], price=["12.5"]), catalogue(price=AttributeSpec(type="number")))
    assert result.changes.empty and list(result.changes.columns) == CHANGE_COLUMNS
    assert result.frame["price"].tolist() == [12.5]


def test_many_unique_values_take_the_vectorised_path_with_the_same_result():
    titles = [f"  acme   widget {i} " for i in range(500)] + [f"Clean title {i}" for i in range(500)]
    frame = batch(sku=[f"A-{i}" for i in range(1000)], title=titles)
    result = normalize_batch(frame, catalogue(title=AttributeSpec(type="text")))
    assert result.frame["title"].tolist() == [" ".join(t.split()) for t in titles]
    assert len(result.changes) == 500


@pytest.mark.parametrize("fragment", [
    "<p>The <b>Summit tent</b>, model 7.</p><ul><li>Built to last</li><li>2 year warranty</li></ul>",
    "<P>Upper</P><BR/>case<br>tags", "<div class=box>Inline <em>and</em> block</div>", "a < b and c > d",
    '<a href="x>y">quoted attribute</a>', "<!-- note -->kept", "<script>x()</script>text", "Fish &amp; chips",
    "<p>  lots   of\n\n\n space </p>", "<h2>Title</h2><p>para</p><hr><p>after</p>", "<li>one<li>two", "<x-y>odd</x-y>",
])
def test_strip_html_fast_path_agrees_with_the_parser(fragment):
    from claro_dagster.operations.values import _clean_whitespace, _TextExtractor, strip_html

    parser = _TextExtractor()
    parser.feed(fragment)
    parser.close()
    assert strip_html(fragment) == _clean_whitespace("".join(parser.parts))


def _supplier_batch(rows: int = 300):
    """A batch with every kind of change and some invalid rows, as batch_raw reads it (text cells)."""
    from claro_dagster.operations.read.common import CELL_DTYPE

    i = np.arange(rows)
    frame = batch(
        sku=[f"ACM-{n:04d}" if n % 41 else f" acm-{n:04d}" for n in i],
        title=[f"  Summit   tent {n}" if n % 3 else ("" if n % 37 == 0 else f"Tent {n}") for n in i],
        description=[f"<p>The <b>tent</b> {n}</p><ul><li>Light</li></ul>" if n % 4 == 0 else
                     "<p></p>" if n % 53 == 0 else f"Plain {n}" for n in i],
        weight=["500 g" if n % 5 == 0 else "2 lb" if n % 7 == 0 else "heavy" if n % 43 == 0 else f"{n / 10:g}"
                for n in i],
        colour=["Gray" if n % 2 else "purple" if n % 47 == 0 else "grey" for n in i],
        launch=["01/03/2025" if n % 6 == 0 else "2025-02-30" if n % 59 == 0 else "2025-03-01" for n in i],
        gtin=["4006381333931" if n % 61 else "4006381333932" for n in i],
    )
    for name in frame.columns[1:]:
        frame[name] = frame[name].astype(CELL_DTYPE)
    frame["__record__"] = np.nan
    cat = catalogue(
        title=AttributeSpec(type="text", required=True), description=AttributeSpec(type="text", strip_html=True),
        weight=AttributeSpec(type="number", unit="kg", min=0),
        colour=AttributeSpec(type="enum", values=["grey", "red"], synonyms={"grey": ["gray"]}),
        launch=AttributeSpec(type="date"), gtin=AttributeSpec(type="text", format="gtin"))
    cat.attributes["sku"] = AttributeSpec(type="text", identifier=True, required=True, casing="upper")
    return frame, cat


def test_a_validated_batch_is_normalized_from_what_validation_carries(tmp_path):
    from claro_dagster.operations import values
    from claro_dagster.operations.validate import validate_batch

    frame, cat = _supplier_batch()
    validation = validate_batch(frame, cat)
    assert 0 < len(validation.rejected) < len(frame)
    expected = normalize_batch(validation.valid, cat)  # every rule evaluated again, on the rows that passed
    carried = validation.carried()
    # as the IO manager stores a stage between runs
    carried.to_parquet(tmp_path / "validated.parquet", index=False)
    stored = pd.read_parquet(tmp_path / "validated.parquet")

    evaluations = []
    original = values.AttributeRules.evaluate_column
    values.AttributeRules.evaluate_column = lambda self, *a, **k: evaluations.append(self.name) or original(
        self, *a, **k)
    try:
        for validated in (carried, stored):
            result = normalize_batch(validated, cat)
            assert evaluations == []  # nothing evaluated a second time
            pd.testing.assert_frame_equal(result.changes.reset_index(drop=True),
                                          expected.changes.reset_index(drop=True))
            assert list(result.frame.columns) == list(frame.columns)
            assert result.frame["__line__"].tolist() == expected.frame["__line__"].tolist()
            for name in cat.attributes:
                got, want = result.frame[name].tolist(), expected.frame[name].tolist()
                assert [None if pd.isna(v) else v for v in got] == [None if pd.isna(v) else v for v in want], name
    finally:
        values.AttributeRules.evaluate_column = original
    assert set(expected.changes["attribute"]) == {"sku", "title", "description", "weight", "colour", "launch"}


def test_outcomes_handed_over_give_the_same_result_as_evaluating_again():
    from claro_dagster.operations.validate import validate_batch

    frame, cat = _supplier_batch()
    validation = validate_batch(frame, cat)
    handed = {n: o.take(~validation.failed) for n, o in validation.outcomes.items()}
    again, reused = normalize_batch(validation.valid, cat), normalize_batch(validation.valid, cat, outcomes=handed)
    pd.testing.assert_frame_equal(reused.changes, again.changes)
    pd.testing.assert_frame_equal(reused.frame, again.frame)
