"""`monitors:` in the spec: `claro check` names the monitor, the key and the line of every mistake, including an
unknown attribute or code in an absolute rule's expression; schedules and `after:` chains may target monitors."""

from __future__ import annotations

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
      price: {type: number}
      cost: {type: number}
      colour: {type: enum, values: [red]}
  suppliers:
    key: id
    attributes:
      id: {type: text}
sources:
  feed: {catalogue: products, kind: upload}
  rival_pages:
    catalogue: products
    kind: scrape
    url_template: "https://rival.example/p/{sku}"
    extract: {price: price}
pipelines:
  onboarding:
    catalogue: products
    sources: [feed]
  after_prices:
    catalogue: products
    after: {catalogue: products, operation: prices}
    operations: [%(chained)s]
schedules:
  daily_prices:
    target: %(target)s
    every: daily
monitors:
  prices:
    kind: price
    catalogue: products
    price: price
    observe:
      - file: rivals.csv
      - source: rival_pages
    rules:
      - kind: absolute
        expression: "%(expression)s"
      - {kind: competitor_gap, percent: 10}
  quality:
    kind: drift
    catalogue: products
"""


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rivals.csv").write_text("competitor,gtin,price\n", encoding="utf-8")


def load(expression: str = "price < cost * 1.1", target: str = "products/prices", chained: str = "quality",
         extra: str = ""):
    path = Path("claro.yaml")
    path.write_text(BASE % {"expression": expression, "target": target, "chained": chained} + extra,
                    encoding="utf-8")
    return load_spec(path)


def errors(**kw) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(**kw)
    return str(info.value).splitlines()


def test_a_valid_spec_with_monitors_loads_and_schedules_and_chains_may_target_them():
    spec = load()
    assert set(spec.monitors) == {"prices", "quality"}
    assert spec.monitors["prices"].rules[1].percent == 10
    assert spec.pipelines["after_prices"].operations == ["quality"]


def test_an_unknown_attribute_in_an_absolute_expression_is_an_error_naming_the_monitor():
    assert errors(expression="price < cots * 1.1") == [
        "claro.yaml:43 monitors.prices.rules[0].expression: monitor 'prices': expression 'price < cots * 1.1': "
        "'cots' is not an attribute of 'products', did you mean 'cost'? (attributes: sku, title, price, cost, "
        "colour)"]


@pytest.mark.parametrize("expression, said", [
    ("__import__('os').system('touch pwned')", "Call is not allowed"),
    ("price.__class__ == 1", "Attribute is not allowed"),
    ("price < ", "does not parse"),
])
def test_code_in_an_expression_is_refused_by_claro_check_and_never_run(expression, said, tmp_path):
    [line] = errors(expression=expression)
    assert line.startswith("claro.yaml:43 monitors.prices.rules[0].expression: monitor 'prices': ") and said in line
    assert not (tmp_path / "pwned").exists()


def test_schedule_and_chain_targets_name_the_monitors_there_are():
    [line] = errors(target="products/pricez")
    assert "schedules.daily_prices.target: 'pricez' is not an operation that can be scheduled on 'products', did " \
           "you mean 'prices'?" in line and "quality" in line
    [line] = errors(chained="qualty")
    assert "pipelines.after_prices.operations[0]: 'qualty' is not an operation of 'products' a chained pipeline " \
           "can run, did you mean 'quality'?" in line


def test_monitor_mistakes_name_the_monitor_and_the_key():
    extra = """\
  bad:
    kind: price
    catalogue: products
    price: title
    observe:
      - {file: rivals.xlsx}
      - {source: feed}
      - {channel: nowhere}
      - {file: rivals.csv, source: rival_pages}
    rules:
      - {kind: threshold}
      - {kind: anomaly, expression: "price > 1"}
  export:
    kind: drift
    catalogue: products
    rules: [{kind: threshold, percent: 5}]
"""
    lines = errors(extra=extra)
    text = "\n".join(lines)
    assert "monitors.bad.price: monitor 'bad': 'title' is a text attribute; prices are numbers" in text
    assert "monitors.bad.observe[0].file: monitor 'bad': 'rivals.xlsx' is not a .csv file" in text
    assert "monitors.bad.observe[1].source: monitor 'bad': source 'feed' is of kind upload" in text
    assert "monitors.bad.observe[2].channel: monitor 'bad': 'nowhere' is not a destination" in text
    assert "monitors.bad.observe[3]: monitor 'bad': each 'observe' entry needs exactly one of" in text
    assert "monitors.bad.rules[0].percent: monitor 'bad': a threshold rule needs 'percent'" in text
    assert "monitors.bad.rules[1].expression: monitor 'bad': 'expression' is for absolute rules" in text
    assert "monitors.export: monitor 'export': the asset products/export would clash with an operation" in text
    assert "monitors.export.rules: monitor 'export': 'rules' is for price monitors" in text
    assert all(line.startswith("claro.yaml:") for line in lines)
