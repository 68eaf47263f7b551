"""`claro check` of the attributes' `enrich:` blocks: each problem names the line and key path and says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from claro_dagster.spec import SpecError, load_spec

BASE = """\
catalogues:
  suppliers:
    key: supplier_id
    attributes:
      supplier_id: {type: text}
      country: {type: enum, values: [GB, DE]}
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
      supplier: {type: reference, target: suppliers}
      weight: {type: number, unit: kg}
      notes: {type: text}
      origin:
        type: enum
        values: [GB, DE]
        enrich:
          methods:
            - %s
"""

CASES = {
    "rules_without_from": (
        "{method: rules}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0]: a rules method needs 'from': the "
        "attributes whose text it reads, e.g. [title, description]"),
    "rules_bad_pattern": (
        "{method: rules, from: [title], patterns: ['(unclosed']}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0].patterns[0]: '(unclosed' is not a "
        "valid regular expression: missing ), unterminated subpattern at position 0"),
    "key_of_another_method": (
        "{method: similar, url_env: X}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0].url_env: 'url_env' is a key of "
        "model methods, not of similar; keys of similar: match_on, min_records, min_similarity"),
    "lookup_via_not_a_reference": (
        "{method: lookup, via: title, field: country}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0].via: 'title' is a text attribute; "
        "'via' names a reference attribute (type: reference, with a target catalogue)"),
    "lookup_unknown_field_of_target": (
        "{method: lookup, via: supplier, field: land}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0].field: 'land' is not an attribute "
        "of catalogue 'suppliers'; attributes are: supplier_id, country"),
    "lookup_file_not_csv": (
        "{method: lookup, file: prefixes.xlsx, key: title, field: country}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0].file: 'prefixes.xlsx': reference "
        "files are CSV (a header row, then one row per key)"),
    "lookup_both_sources": (
        "{method: lookup, via: supplier, file: x.csv, key: title, field: country}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0]: a lookup method needs exactly one "
        "of 'via' (a reference attribute: read another catalogue) or 'file' (a CSV reference file)"),
    "model_without_url_env": (
        "{method: model, model: gpt-4o-mini}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0]: a model method needs 'url_env': "
        "the environment variable holding the base URL of an OpenAI-compatible API (e.g. "
        "https://api.openai.com/v1)"),
    "model_unknown_placeholder": (
        "{method: model, url_env: U, model: m, prompt: 'Origin of {titel}?'}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0].prompt: placeholder {titel} is not "
        "an attribute of this catalogue; attributes are: sku, title, supplier, weight, notes, origin"),
    "unknown_method": (
        "{method: guess}",
        "claro.yaml:20 catalogues.products.attributes.origin.enrich.methods[0].method: 'guess' is not one of "
        "rules, lookup, similar, model"),
}


@pytest.mark.parametrize("case", CASES)
def test_enrich_problems_name_line_and_what_to_do(tmp_path: Path, case: str) -> None:
    method, expected = CASES[case]
    (tmp_path / "claro.yaml").write_text(BASE % method, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "claro.yaml")
    lines = [line.replace(str(tmp_path / "claro.yaml"), "claro.yaml") for line in str(info.value).splitlines()]
    assert expected in lines


def test_rules_on_text_need_patterns_and_a_valid_block_passes(tmp_path: Path) -> None:
    spec = BASE % "{method: rules, from: [title]}"
    spec = spec.replace("      notes: {type: text}\n", "      notes:\n        type: text\n        enrich:\n"
                                                        "          methods: [{method: rules, from: [title]}]\n")
    (tmp_path / "claro.yaml").write_text(spec, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "claro.yaml")
    assert "'notes' is a text attribute: give 'patterns' (regular expressions whose group 'value' is the value)" \
        in str(info.value)
    (tmp_path / "prefixes.csv").write_text("prefix,country\n5060123,GB\n", encoding="utf-8")
    ok = BASE % ("{method: lookup, file: prefixes.csv, key: title, key_column: prefix, field: country, "
                 "prefix_lengths: [7]}")
    (tmp_path / "claro.yaml").write_text(ok, encoding="utf-8")
    assert load_spec(tmp_path / "claro.yaml").catalogues["products"].attributes["origin"].enrich.methods[0].file \
        == "prefixes.csv"


def test_batch_enrichment_needs_attributes_to_enrich(tmp_path: Path) -> None:
    spec = (BASE % "{method: rules, from: [title]}").replace(
        "        enrich:\n          methods:\n            - {method: rules, from: [title]}\n", "")
    spec += "pipelines:\n  onboarding:\n    catalogue: products\n    batch_enrichment: true\n"
    (tmp_path / "claro.yaml").write_text(spec, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "claro.yaml")
    assert "pipelines.onboarding.batch_enrichment: no attribute of catalogue 'products' has 'enrich' methods: " \
           "add them (attributes.<name>.enrich.methods) or remove batch_enrichment" in str(info.value)
