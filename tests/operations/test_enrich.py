"""Bulk Enrichment's methods on small frames (operations/enrich.py): rules, lookup, similar records, the model
answer's checks, and the confidence factors."""

import json
import math

import pandas as pd
import pytest

from claro_dagster.operations.enrich import (
    AGREEMENT_BONUS,
    DISAGREEMENT_PENALTY,
    ModelAnswer,
    ReferenceTable,
    answer_schema,
    enrich_records,
    prompt_hash,
)
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, EnrichMethodSpec, EnrichSpec

COLOURS = dict(type="enum", values=["black", "red", "blue", "navy", "grey"],
               synonyms={"navy": ["navy blue", "dark blue"], "grey": ["gray"]})


def methods(*specs: dict, weak_below=None) -> EnrichSpec:
    return EnrichSpec(methods=[EnrichMethodSpec.model_validate(s) for s in specs], weak_below=weak_below)


def products(**attributes: AttributeSpec) -> CatalogueSpec:
    attrs = {"sku": AttributeSpec(type="text"), "title": AttributeSpec(type="text"),
             "description": AttributeSpec(type="text"), "brand": AttributeSpec(type="text")}
    attrs.update(attributes)
    return CatalogueSpec(key="sku", attributes=attrs)


def frame(rows: list[dict], cat: CatalogueSpec) -> pd.DataFrame:
    return pd.DataFrame([{a: r.get(a) for a in cat.attributes} for r in rows])


def test_rules_read_colour_words_and_synonyms_and_cite_the_matched_text():
    cat = products(colour=AttributeSpec(**COLOURS, enrich=methods({"method": "rules", "from": ["title",
                                                                                              "description"]})))
    rows = frame([{"sku": "A", "title": "Rain jacket, Navy Blue"},
                  {"sku": "B", "title": "Rain jacket", "description": "A dark gray shell"},
                  {"sku": "C", "title": "Red and blue scarf"},
                  {"sku": "D", "title": "Plain mug"}], cat)
    result = enrich_records(rows, cat, wanted={"colour": ["A", "B", "C", "D"]})
    got = {p.record: p for p in result.proposals}
    assert set(got) == {"A", "B"}  # C names two colours: not a rule's call; D none
    assert got["A"].value == "navy" and "Navy Blue" in got["A"].citation and got["A"].citation.startswith("title:")
    assert got["B"].value == "grey" and got["B"].citation.startswith("description:")
    # a match in the first `from` attribute is better evidence than one in a later attribute
    assert got["A"].confidence == 80 and got["B"].confidence == 72


def test_rules_read_weights_with_units_through_pint():
    cat = products(weight=AttributeSpec(type="number", unit="kg", enrich=methods({"method": "rules",
                                                                                 "from": ["title"]})))
    rows = frame([{"sku": "A", "title": "Dumbbell 2.5 kg"}, {"sku": "B", "title": "Kettle 1500 g"},
                  {"sku": "C", "title": "Box 30 cm"}, {"sku": "D", "title": "Bag 1 lb"}], cat)
    got = {p.record: p for p in enrich_records(rows, cat, wanted={"weight": ["A", "B", "C", "D"]}).proposals}
    assert got["A"].value == 2.5 and got["B"].value == 1.5
    assert got["D"].value == pytest.approx(0.453592)
    assert "C" not in got  # a length is not a weight
    assert got["B"].confidence < got["A"].confidence  # converted from another unit


def test_rules_with_patterns_take_the_value_group():
    cat = products(length=AttributeSpec(type="number", unit="cm", enrich=methods(
        {"method": "rules", "from": ["description"], "patterns": [r"(?i)length:?\s*(?P<value>[\d.]+\s*\w+)"]})))
    rows = frame([{"sku": "A", "description": "Width 20 cm, length: 0.3 m"}], cat)
    (p,) = enrich_records(rows, cat, wanted={"length": ["A"]}).proposals
    assert p.value == pytest.approx(30.0) and "0.3 m" in p.citation


def test_lookup_through_a_reference_cites_the_source_record():
    cat = products(supplier=AttributeSpec(type="reference", target="suppliers"),
                   origin=AttributeSpec(type="enum", values=["GB", "DE"], enrich=methods(
                       {"method": "lookup", "via": "supplier", "field": "country"})))
    table = ReferenceTable("catalogue suppliers", {"SUP-1": {"supplier_id": "SUP-1", "country": "DE"}})
    rows = frame([{"sku": "A", "supplier": "SUP-1"}, {"sku": "B", "supplier": "SUP-9"}], cat)
    result = enrich_records(rows, cat, wanted={"origin": ["A", "B"]}, references={"origin:0": table})
    (p,) = result.proposals
    assert (p.record, p.value, p.confidence) == ("A", "DE", 95)
    assert p.citation == "catalogue suppliers record 'SUP-1': supplier_id=SUP-1, country=DE"


def test_lookup_by_gtin_company_prefix_in_a_reference_file_cites_its_line():
    cat = products(gtin=AttributeSpec(type="text"), brand=AttributeSpec(type="text", enrich=methods(
        {"method": "lookup", "key": "gtin", "field": "brand", "prefix_lengths": [9, 7]})))
    table = ReferenceTable("prefixes.csv", {"5012345": {"prefix": "5012345", "brand": "Acme"}}, {"5012345": 3})
    rows = frame([{"sku": "A", "gtin": "5012345678900"}, {"sku": "B", "gtin": "4000000000000"}], cat)
    (p,) = enrich_records(rows, cat, wanted={"brand": ["A", "B"]}, references={"brand:0": table}).proposals
    assert p.value == "Acme" and p.citation.startswith("prefixes.csv line 3:")
    assert p.confidence == 81  # 90 for a file x 0.9 for a prefix match


def test_similar_records_agree_and_are_cited():
    cat = products(colour=AttributeSpec(**COLOURS, enrich=methods({"method": "similar", "min_records": 2})))
    rows = frame([{"sku": "A", "title": "Trail Runner 2", "brand": "Acme"},
                  {"sku": "B", "title": "Trail Runner 2", "brand": "Acme", "colour": "black"},
                  {"sku": "C", "title": "Trail runner 2", "brand": "ACME", "colour": "black"},
                  {"sku": "D", "title": "Trail Runner 2", "brand": "Acme", "colour": "red"},
                  {"sku": "E", "title": "Trail Walker", "brand": "Acme", "colour": "blue"}], cat)
    (p,) = enrich_records(rows, cat, wanted={"colour": ["A"]}).proposals
    assert p.value == "black" and p.method == "similar"
    assert p.citation == "records B, C agree on 'black'"
    assert p.confidence == round(75 * (2 / 3) * 0.9, 1)


def test_agreement_between_methods_raises_and_disagreement_lowers_confidence():
    spec = methods({"method": "rules", "from": ["title"]}, {"method": "similar", "min_records": 1})
    cat = products(colour=AttributeSpec(**COLOURS, enrich=spec))
    base = [{"sku": "B", "title": "Storm Shell", "brand": "Acme", "colour": "red"}]
    agree = frame([{"sku": "A", "title": "Storm Shell red", "brand": "Acme"}, *base], cat)
    differ = frame([{"sku": "A", "title": "Storm Shell blue", "brand": "Acme"}, *base], cat)
    agree_rows = frame([{"sku": "A", "title": "Storm Shell", "brand": "Acme"}, *base], cat)
    # rules read the colour in A's title; `similar` compares A as the pool holds it with B, which is red
    (p,) = enrich_records(agree, cat, wanted={"colour": ["A"]}, pool=agree_rows).proposals
    assert p.value == "red" and p.confidence == 80 + AGREEMENT_BONUS
    (q,) = enrich_records(differ, cat, wanted={"colour": ["A"]}, pool=agree_rows).proposals
    assert q.value == "blue" and q.confidence == 80 - DISAGREEMENT_PENALTY


class FakeModel:
    def __init__(self, content, logprobs=None):
        self.content, self.logprobs, self.asked = content, logprobs, []

    def available(self, method):
        return True

    def complete(self, method, messages, schema):
        self.asked.append((messages, schema))
        return ModelAnswer(self.content, self.logprobs, "fake-1")


def model_catalogue(prompt="Category of {title}?"):
    return products(category=AttributeSpec(type="enum", values=["apparel", "footwear"], enrich=methods(
        {"method": "model", "url_env": "X_URL", "model": "fake-1", "prompt": prompt})))


def test_model_answer_in_the_enum_is_proposed_with_model_prompt_hash_and_certainty():
    cat = model_catalogue()
    model = FakeModel(json.dumps({"value": "footwear"}), logprobs=[-0.05, -0.05])
    (p,) = enrich_records(frame([{"sku": "A", "title": "Trail shoe"}], cat), cat, wanted={"category": ["A"]},
                          model=model).proposals
    assert p.value == "footwear" and p.model == f"fake-1 prompt:{prompt_hash('Category of {title}?')}"
    assert p.confidence == round(70 * math.exp(-0.1), 1)
    messages, schema = model.asked[0]
    assert messages[-1]["content"] == "Category of Trail shoe?"
    assert schema["properties"]["value"]["enum"] == ["apparel", "footwear"]


@pytest.mark.parametrize("content, reason", [
    ("I think it is footwear.", "prose, not JSON"),
    (json.dumps({"value": "shoes"}), "not one of the allowed values"),
    (json.dumps({"answer": "footwear"}), "has no 'value'"),
])
def test_model_answers_that_cannot_be_used_are_rejected_with_the_reason(content, reason):
    cat = model_catalogue()
    result = enrich_records(frame([{"sku": "A", "title": "Trail shoe"}], cat), cat, wanted={"category": ["A"]},
                            model=FakeModel(content))
    assert result.proposals == []
    (r,) = result.rejections
    assert reason in r.reason and r.record == "A" and r.model.startswith("fake-1 prompt:")


def test_model_is_not_asked_when_an_earlier_method_found_a_value_and_skipped_without_endpoint():
    cat = products(colour=AttributeSpec(**COLOURS, enrich=methods(
        {"method": "rules", "from": ["title"]}, {"method": "model", "url_env": "X_URL", "model": "m"})))
    model = FakeModel(json.dumps({"value": "black"}))
    rows = frame([{"sku": "A", "title": "red mug"}, {"sku": "B", "title": "mug"}], cat)
    result = enrich_records(rows, cat, wanted={"colour": ["A", "B"]}, model=model)
    assert len(model.asked) == 1  # only B
    assert {p.record: p.method for p in result.proposals} == {"A": "rules", "B": "model"}
    offline = enrich_records(rows, cat, wanted={"colour": ["A", "B"]}, model=None)
    assert [p.record for p in offline.proposals] == ["A"] and offline.skipped_model == {"colour"}


def test_answer_schema_for_numbers_names_the_unit():
    schema = answer_schema("weight", AttributeSpec(type="number", unit="kg"))
    assert schema["required"] == ["value", "unit"] and schema["properties"]["unit"]["enum"] == ["kg"]


def test_a_reference_value_that_is_not_a_key_of_its_target_is_rejected():
    cat = products(gtin=AttributeSpec(type="text"), supplier=AttributeSpec(type="reference", target="suppliers",
                                                                            enrich=methods(
        {"method": "lookup", "key": "gtin", "field": "supplier"})))
    table = ReferenceTable("prefixes.csv", {"111": {"gtin": "111", "supplier": "SUP-9"},
                                            "222": {"gtin": "222", "supplier": "SUP-1"}}, {"111": 2, "222": 3})
    rows = frame([{"sku": "A", "gtin": "111"}, {"sku": "B", "gtin": "222"}], cat)
    result = enrich_records(rows, cat, wanted={"supplier": ["A", "B"]}, references={"supplier:0": table},
                            reference_keys={"supplier": ["SUP-1"]})
    assert [(p.record, p.value) for p in result.proposals] == [("B", "SUP-1")]
    [r] = result.rejections
    assert r.record == "A" and r.reason.startswith("'SUP-9' is not a record of catalogue 'suppliers'")
