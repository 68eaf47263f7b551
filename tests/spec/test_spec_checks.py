"""Cross-reference checks: each problem names the line and key path and says what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from claro_dagster.spec import SpecError, load_spec

# Lines 1-6; cases append attributes (indented under `attributes:`) or top-level sections from line 7.
BASE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
"""
SUPPLIERS = """\
  suppliers:
    key: supplier_id
    attributes:
      supplier_id: {type: text}
"""


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attributes: str = "",
             rest: str = "") -> list[str]:
    monkeypatch.chdir(tmp_path)
    attrs = textwrap.indent(textwrap.dedent(attributes), " " * 6)
    Path("claro.yaml").write_text(BASE + attrs + rest, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec("claro.yaml")
    return str(info.value).splitlines()


ATTRIBUTE_CASES = {
    "reference_without_target": (
        "supplier: {type: reference}\n",
        "claro.yaml:7 catalogues.products.attributes.supplier.target: a reference attribute needs "
        "'target': the catalogue whose keys it holds (one of products)"),
    "reference_unknown_target": (
        "supplier: {type: reference, target: supplier}\n",
        "claro.yaml:7 catalogues.products.attributes.supplier.target: 'supplier' is not a catalogue "
        "(defined: products)"),
    "enum_without_values": (
        "size:\n  type: enum\n  ordered: true\n",
        "claro.yaml:7 catalogues.products.attributes.size.values: an enum attribute needs a non-empty "
        "'values' list of its canonical values"),
    "enum_empty_values": (
        "size: {type: enum, values: []}\n",
        "claro.yaml:7 catalogues.products.attributes.size.values: an enum attribute needs a non-empty "
        "'values' list of its canonical values"),
    "synonym_of_unknown_value": (
        "colour:\n  type: enum\n  values: [grey, black]\n  synonyms:\n    gray: [gry]\n",
        "claro.yaml:11 catalogues.products.attributes.colour.synonyms.gray: 'gray' is not one of the "
        "values of 'colour', did you mean 'grey'? (defined: grey, black)"),
    "enum_default_not_a_value": (
        "status: {type: enum, values: [active, draft], default: drafted}\n",
        "claro.yaml:7 catalogues.products.attributes.status.default: 'drafted' is not one of the values "
        "of 'status', did you mean 'draft'? (defined: active, draft)"),
    "bad_unit": (
        "weight:\n  type: number\n  unit: kilo\n",
        "claro.yaml:9 catalogues.products.attributes.weight.unit: 'kilo' is not a unit pint understands "
        "(e.g. kg, g, cm, mm, l, ml, day; leave it out for plain numbers such as prices)"),
    "bad_timezone": (
        "launch: {type: date, timezone: Europe/Londn}\n",
        "claro.yaml:7 catalogues.products.attributes.launch.timezone: 'Europe/Londn' is not an IANA "
        "timezone, did you mean 'Europe/London'?"),
    "bad_regex": (
        "code: {type: text, regex: '[A-Z'}\n",
        "claro.yaml:7 catalogues.products.attributes.code.regex: '[A-Z' is not a valid regular "
        "expression: unterminated character set at position 0"),
    "min_above_max": (
        "price: {type: number, min: 10, max: 1.5}\n",
        "claro.yaml:7 catalogues.products.attributes.price.min: min (10) is greater than max (1.5)"),
    "min_length_above_max_length": (
        "code:\n  type: text\n  min_length: 9\n  max_length: 3\n",
        "claro.yaml:9 catalogues.products.attributes.code.min_length: min_length (9) is greater than "
        "max_length (3)"),
    "attribute_override_breaks_order": (
        "price: {type: number, thresholds: {review: 95}}\n",
        "claro.yaml:7 catalogues.products.attributes.price.thresholds: with this override the thresholds "
        "become reject=50, review=95, auto_apply=90; they must satisfy reject <= review <= auto_apply"),
}


@pytest.mark.parametrize("case", ATTRIBUTE_CASES)
def test_attribute_checks(tmp_path, monkeypatch, case: str) -> None:
    attributes, expected = ATTRIBUTE_CASES[case]
    assert problems(tmp_path, monkeypatch, attributes=attributes) == [expected]


SECTION_CASES = {
    "key_not_an_attribute": (
        SUPPLIERS.replace("key: supplier_id", "key: supplierid"),
        "claro.yaml:8 catalogues.suppliers.key: 'supplierid' is not an attribute of catalogue "
        "'suppliers', did you mean 'supplier_id'? (defined: supplier_id)"),
    "reverse_clashes": (
        SUPPLIERS + "      name: {type: text}\n"
        "      link: {type: reference, target: products, reverse: title}\n",
        "claro.yaml:12 catalogues.suppliers.attributes.link.reverse: reverse link 'title' clashes with "
        "attribute 'title' of catalogue 'products'; choose another name"),
    "source_unknown_catalogue": (
        "sources:\n  acme: {catalogue: product, kind: inbox, path: inbox/acme}\n",
        "claro.yaml:8 sources.acme.catalogue: 'product' is not a catalogue, did you mean 'products'? "
        "(defined: products)"),
    "inbox_without_path": (
        "sources:\n  acme:\n    catalogue: products\n    kind: inbox\n",
        "claro.yaml:8 sources.acme.path: an inbox source needs 'path': the folder suppliers drop files into"),
    "pipeline_unknown_source": (
        "sources:\n  acme: {catalogue: products}\npipelines:\n  onboard:\n    catalogue: products\n"
        "    sources:\n      - acme\n      - globex\n",
        "claro.yaml:14 pipelines.onboard.sources[1]: 'globex' is not a source (defined: acme)"),
    "pipeline_unknown_catalogue": (
        "pipelines:\n  onboard: {catalogue: suppliers}\n",
        "claro.yaml:8 pipelines.onboard.catalogue: 'suppliers' is not a catalogue (defined: products)"),
    "pipeline_unknown_destination": (
        "destinations:\n  dump: {kind: s3, catalogue: products, bucket: b}\n"
        "pipelines:\n  onboard: {catalogue: products, destinations: [dump, warehous]}\n",
        "claro.yaml:10 pipelines.onboard.destinations[1]: 'warehous' is not a destination "
        "(defined: dump)"),
    "pipeline_source_of_other_catalogue": (
        SUPPLIERS + "sources:\n  acme: {catalogue: suppliers}\n"
        "pipelines:\n  onboard: {catalogue: products, sources: [acme]}\n",
        "claro.yaml:14 pipelines.onboard.sources[0]: source 'acme' feeds catalogue 'suppliers', "
        "not 'products'"),
    "destination_unknown_catalogue": (
        "destinations:\n  dump: {kind: s3, catalogue: produce, bucket: b}\n",
        "claro.yaml:8 destinations.dump.catalogue: 'produce' is not a catalogue, did you mean "
        "'products'? (defined: products)"),
    "postgres_without_table": (
        "destinations:\n  wh: {kind: postgres, catalogue: products, url_env: WH_URL}\n",
        "claro.yaml:8 destinations.wh.table: a postgres destination needs 'table'"),
    "threshold_source_unknown": (
        "thresholds:\n  sources:\n    globex: {auto_apply: 99}\n",
        "claro.yaml:9 thresholds.sources.globex: 'globex' is not a source (none defined)"),
    "operation_override_breaks_order": (
        "thresholds:\n  default: {auto_apply: 90, review: 60, reject: 40}\n  operations:\n"
        "    enrich: {reject: 80}\n",
        "claro.yaml:10 thresholds.operations.enrich: with this override the thresholds become reject=80, "
        "review=60, auto_apply=90; they must satisfy reject <= review <= auto_apply"),
    "schedule_every_and_cron": (
        "schedules:\n  nightly: {target: products/analyse, every: daily, cron: '0 2 * * *'}\n",
        "claro.yaml:8 schedules.nightly: a schedule needs exactly one of 'every' (hourly, daily, weekly) "
        "or 'cron'"),
    "schedule_neither_every_nor_cron": (
        "schedules:\n  nightly: {target: products/analyse}\n",
        "claro.yaml:8 schedules.nightly: a schedule needs exactly one of 'every' (hourly, daily, weekly) "
        "or 'cron'"),
    "bad_cron": (
        "schedules:\n  nightly:\n    target: products/analyse\n    cron: '0 25 * * *'\n",
        "claro.yaml:10 schedules.nightly.cron: '0 25 * * *' is not a valid cron expression (five fields: "
        "minute hour day-of-month month day-of-week, e.g. '0 * * * *', or @hourly/@daily/@weekly)"),
    "schedule_bad_timezone": (
        "schedules:\n  nightly:\n    target: products/analyse\n    every: daily\n    timezone: London\n",
        "claro.yaml:11 schedules.nightly.timezone: 'London' is not an IANA timezone, did you mean "
        "'Europe/London'?"),
    "schedule_nonsense_timezone": (
        "schedules:\n  nightly: {target: products/analyse, every: daily, timezone: Mars/Olympus}\n",
        "claro.yaml:8 schedules.nightly.timezone: 'Mars/Olympus' is not an IANA timezone (use an IANA "
        "name such as 'Europe/London' or 'UTC')"),
    "schedule_unknown_operation": (
        "destinations:\n  dump: {kind: s3, catalogue: products, bucket: b}\n"
        "schedules:\n  nightly: {target: products/analyze, every: daily}\n",
        "claro.yaml:10 schedules.nightly.target: 'analyze' is not an operation that can be scheduled on "
        "'products', did you mean 'analyse'? (one of: analyse, export, enrich, dedupe, dump)"),
    "schedule_unknown_catalogue": (
        "schedules:\n  nightly: {target: suppliers/analyse, every: daily}\n",
        "claro.yaml:8 schedules.nightly.target: 'suppliers' is not a catalogue (defined: products)"),
    "schedule_unknown_pipeline": (
        "pipelines:\n  onboarding: {catalogue: products}\n"
        "schedules:\n  nightly: {target: onboard, every: daily}\n",
        "claro.yaml:10 schedules.nightly.target: 'onboard' is neither a pipeline (onboarding) nor "
        "'<catalogue>/<operation>'"),
    "slack_channel_without_hash": (
        "notifications:\n  slack_token_env: SLACK_BOT_TOKEN\n  slack:\n    - channel: catalogue-alerts\n",
        "claro.yaml:10 notifications.slack[0].channel: 'catalogue-alerts' is not a Slack channel: write "
        "'#name' or a channel id such as 'C0123456789'"),
    "slack_without_token_env": (
        "notifications:\n  slack:\n    - channel: '#alerts'\n",
        "claro.yaml:7 notifications.slack_token_env: slack routes need 'slack_token_env': the environment "
        "variable that holds the Slack bot token"),
    "webhook_scheduled_without_cron": (
        "notifications:\n  webhooks:\n    erp:\n      url: https://erp.example.com/hook\n"
        "      events: [change.applied]\n      secret_env: ERP_SECRET\n      mode: scheduled\n",
        "claro.yaml:9 notifications.webhooks.erp.cron: a webhook in 'scheduled' mode needs 'cron'"),
}


@pytest.mark.parametrize("case", SECTION_CASES)
def test_section_checks(tmp_path, monkeypatch, case: str) -> None:
    rest, expected = SECTION_CASES[case]
    assert problems(tmp_path, monkeypatch, rest=rest) == [expected]


def test_valid_cross_references_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    attributes = (
        "      supplier: {type: reference, target: suppliers, reverse: products}\n"
        "      weight: {type: number, unit: g, min: 0, max: 100000}\n"
    )
    rest = textwrap.dedent("""\
        destinations:
          feed: {kind: s3, catalogue: products, bucket: b}
        pipelines:
          onboard: {catalogue: products, destinations: [feed]}
        schedules:
          a: {target: onboard, every: hourly}
          b: {target: products/feed, cron: '*/15 * * * *', timezone: America/New_York}
        notifications:
          slack_token_env: SLACK_BOT_TOKEN
          slack: [{channel: C0123456789}, {channel: '#alerts', pipelines: [onboard]}]
    """)
    Path("claro.yaml").write_text(BASE + attributes + SUPPLIERS + rest, encoding="utf-8")
    spec = load_spec("claro.yaml")
    assert spec.catalogues["products"].attributes["weight"].unit == "g"
    assert spec.schedules["b"].target == "products/feed"


def test_all_cross_reference_problems_are_reported_together(tmp_path, monkeypatch) -> None:
    lines = problems(tmp_path, monkeypatch, attributes="w: {type: number, unit: stone-ish}\n",
                     rest="sources:\n  acme: {catalogue: nope}\n")
    assert [line.split(" ")[0:2] for line in lines] == [
        ["claro.yaml:7", "catalogues.products.attributes.w.unit:"],
        ["claro.yaml:9", "sources.acme.catalogue:"],
    ]


def test_route_to_an_undefined_channel_and_pipeline_rules(tmp_path, monkeypatch):
    rest = textwrap.dedent("""\
        sources:
          feed: {catalogue: products}
        pipelines:
          onboarding:
            catalogue: products
            sources: [feed]
            routing:
              - {sources: [fed], notify: "#ops"}
          again:
            catalogue: products
            operations: [validate]
        notifications:
          slack_token_env: SLACK_BOT_TOKEN
          channels: ["#ops"]
          slack:
            - channel: "#opps"
        """)
    found = problems(tmp_path, monkeypatch, rest=rest)
    assert "claro.yaml:14 pipelines.onboarding.routing[0].sources[0]: 'fed' is not a source of this pipeline, did " \
           "you mean 'feed'? (sources: feed)" in found
    assert any(line.startswith("claro.yaml:17 pipelines.again.operations: 'operations' run when the pipeline is "
                               "triggered") for line in found)
    assert "claro.yaml:22 notifications.slack[0].channel: '#opps' is not a channel of notifications.channels, did " \
           "you mean '#ops'? (channels: #ops)" in found


@pytest.mark.parametrize("kind", ["webhook"])
def test_a_destination_kind_that_is_not_built_is_refused(tmp_path, monkeypatch, kind: str) -> None:
    rest = f"destinations:\n  shop:\n    kind: {kind}\n    catalogue: products\n"
    assert problems(tmp_path, monkeypatch, rest=rest) == [
        f"claro.yaml:9 destinations.shop.kind: destination kind {kind!r} is not available yet (available now: s3, "
        "postgres, shopify, amazon, bigquery, sheets, supabase, rest); remove this destination or change its kind"]


def test_every_kind_claro_check_accepts_does_something() -> None:
    """The kinds `claro check` lets through are exactly those with an implementation behind them."""
    from typing import get_args

    from claro_dagster.assets.catalogue_ops import build_destination
    from claro_dagster.spec.checks import AVAILABLE_DESTINATION_KINDS, AVAILABLE_SOURCE_KINDS
    from claro_dagster.spec.models import DestinationSpec, SourceSpec

    for kind in get_args(DestinationSpec.model_fields["kind"].annotation):
        dest = DestinationSpec(kind=kind, catalogue="products", bucket="b", url_env="X", table="t")
        assert (build_destination("d", dest, []) is not None) == (kind in AVAILABLE_DESTINATION_KINDS), kind
    assert set(get_args(SourceSpec.model_fields["kind"].annotation)) == set(AVAILABLE_SOURCE_KINDS)


def test_the_bundled_demo_passes_claro_check() -> None:
    from claro_dagster.spec import DEMO_DIR

    assert load_spec(DEMO_DIR / "claro.yaml").destinations


def test_a_source_speaking_for_a_supplier_needs_a_reference_attribute_naming_it(tmp_path, monkeypatch):
    found = problems(tmp_path, monkeypatch, rest="sources:\n  portal:\n    catalogue: products\n    kind: upload\n"
                                                 "    supplier: SUP-0001\n")
    assert found == ["claro.yaml:8 sources.portal.supplier_attribute: 'supplier' is not a reference attribute of "
                     "catalogue 'products'; 'supplier' needs the attribute that names a record's supplier (reference "
                     "attributes: none)"]
