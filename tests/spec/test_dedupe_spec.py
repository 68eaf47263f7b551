"""`catalogues.<c>.dedupe` in claro.yaml: `claro check` names the line and what is allowed; dedupe can be
scheduled and chained."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from claro_dagster.spec import SpecError, load_spec

BASE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
      status: {type: enum, values: [active, archived]}
"""


def load(tmp_path: Path, dedupe: str, rest: str = ""):
    path = tmp_path / "claro.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(dedupe), "    ") + rest, encoding="utf-8")
    return load_spec(path)


def problems(tmp_path: Path, dedupe: str, rest: str = "") -> str:
    with pytest.raises(SpecError) as info:
        load(tmp_path, dedupe, rest)
    return str(info.value)


def test_a_complete_dedupe_block_loads(tmp_path):
    spec = load(tmp_path, """\
        dedupe:
          attributes: {title: 3}
          threshold: 75
          blocking: {title: title}
          retire_attribute: status
          retire_value: archived
        """, "schedules:\n  weekly: {target: products/dedupe, every: weekly}\n")
    dedupe = spec.catalogues["products"].dedupe
    assert (dedupe.attributes, dedupe.threshold, dedupe.blocking.title) == ({"title": 3}, 75, "title")
    assert spec.schedules["weekly"].target == "products/dedupe"


@pytest.mark.parametrize(("block", "expected"), [
    ("dedupe:\n  attributes: {titel: 3}\n", "claro.yaml:9 catalogues.products.dedupe.attributes.titel: 'titel' is "
                                            "not an attribute of catalogue 'products', did you mean 'title'?"),
    ("dedupe:\n  attributes: {title: 0}\n", "claro.yaml:9 catalogues.products.dedupe.attributes.title: weight 0 "
                                            "must be above 0"),
    ("dedupe:\n  attributes: {sku: 1}\n", "'sku' is the catalogue key"),
    ("dedupe:\n  blocking: {brand: maker}\n", "catalogues.products.dedupe.blocking.brand: 'maker' is not an "
                                              "attribute"),
    ("dedupe:\n  retire_attribute: status\n", "catalogues.products.dedupe.retire_value: 'retire_attribute' and "
                                              "'retire_value' go together"),
    ("dedupe:\n  retire_attribute: status\n  retire_value: gone\n",
     "catalogues.products.dedupe.retire_value: 'gone' is not a value of 'status' (values: active, archived)"),
    ("dedupe:\n  threshold: 120\n", "catalogues.products.dedupe.threshold"),
])
def test_claro_check_names_the_line_and_the_fix(tmp_path, block, expected):
    assert expected in problems(tmp_path, block)


def test_dedupe_can_be_chained_after_another_operation(tmp_path):
    spec = load(tmp_path, "", """\
pipelines:
  recheck_duplicates:
    catalogue: products
    after: {catalogue: products, operation: records}
    operations: [dedupe]
""")
    assert spec.pipelines["recheck_duplicates"].operations == ["dedupe"]
