"""The spec loader: the demo loads, and every error names file, line and key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from claro_dagster.spec import (
    ATTRIBUTE_TYPES,
    DEMO_DIR,
    ProjectSpec,
    SpecError,
    SpecProblem,
    default_spec_path,
    load_spec,
    summarize,
)


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a spec to ./claro.yaml in a temp dir, so messages read `claro.yaml:LINE ...`."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str) -> str:
        Path("claro.yaml").write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return "claro.yaml"

    return _write


def errors(path: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value).splitlines()


# --- the demo -------------------------------------------------------------------------------------

def test_demo_loads_and_covers_every_attribute_type() -> None:
    spec = load_spec(DEMO_DIR / "claro.yaml")
    products = spec.catalogues["products"]
    assert products.key == "sku"
    assert {a.type for a in products.attributes.values()} == set(ATTRIBUTE_TYPES)
    assert products.attributes["supplier"].target == "suppliers"
    assert products.attributes["title"].casing is None  # `casing: none` in the YAML
    assert products.attributes["colour"].synonyms["grey"] == ["gray", "gry"]
    assert spec.catalogues["suppliers"].key == "supplier_id"
    assert spec.pipelines["products_onboarding"].destinations == ["shopify_store", "amazon_listings", "catalogue_dump",
                                                                  "warehouse"]
    assert spec.schedules["hourly_active_export"].paused is True
    assert spec.notifications.webhooks["erp"].secret_env == "CLARO_WEBHOOK_SECRET_ERP"
    assert spec.spec_path == (DEMO_DIR / "claro.yaml").resolve()
    assert spec.base_dir == DEMO_DIR.resolve()


def test_summarize_demo() -> None:
    spec = load_spec(DEMO_DIR / "claro.yaml")
    assert summarize(spec) == (
        "claro.yaml: OK — 2 catalogues (products: 17 attributes, suppliers: 5), 3 sources, "
        "4 pipelines, 6 schedules, 4 destinations"
    )


def test_default_spec_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLARO_SPEC", raising=False)
    assert default_spec_path() == DEMO_DIR / "claro.yaml"
    (tmp_path / "claro.yaml").write_text("catalogues: {}\n")
    assert default_spec_path() == Path("claro.yaml")
    monkeypatch.setenv("CLARO_SPEC", "/somewhere/else.yaml")
    assert default_spec_path() == Path("/somewhere/else.yaml")


# --- pydantic errors mapped to lines --------------------------------------------------------------

def test_literal_error_lists_allowed_values(write) -> None:
    path = write("""
        name: shop
        catalogues:
          products:
            key: sku
            attributes:
              sku: {type: text}
              price:
                type: money
        """)
    assert errors(path) == [
        "claro.yaml:8 catalogues.products.attributes.price.type: 'money' is not one of text, number, "
        "image, date, enum, reference"
    ]


def test_problem_fields(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes:
              sku: {type: txt}
        """)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.problems == [SpecProblem(
        file="claro.yaml", line=5, path="catalogues.products.attributes.sku.type",
        message="'txt' is not one of text, number, image, date, enum, reference")]


def test_misspelt_key_did_you_mean(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            atributes:
              sku: {type: text}
        """)
    assert errors(path) == [
        "claro.yaml:2 catalogues.products.attributes: required key 'attributes' is missing",
        "claro.yaml:4 catalogues.products.atributes: unknown key 'atributes', did you mean 'attributes'?",
    ]


def test_unknown_key_without_close_match_lists_allowed(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes:
              sku: {type: text}
            colour_scheme: dark
        """)
    assert errors(path) == [
        "claro.yaml:6 catalogues.products.colour_scheme: unknown key 'colour_scheme' "
        "(allowed keys: key, description, attributes, dedupe)"
    ]


def test_missing_required_key_reports_parent_line_and_choices(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes:
              sku: {required: true}
        """)
    assert errors(path) == [
        "claro.yaml:5 catalogues.products.attributes.sku.type: required key 'type' is missing "
        "(one of text, number, image, date, enum, reference)"
    ]


def test_webhook_without_secret_env(write) -> None:
    path = write("""
        catalogues:
          products: {key: sku, attributes: {sku: {type: text}}}
        notifications:
          webhooks:
            erp:
              url: http://127.0.0.1:8099/hooks
              events: [change.applied]
        """)
    assert errors(path) == [
        "claro.yaml:5 notifications.webhooks.erp.secret_env: webhook 'erp' has no secret_env: name the "
        "environment variable that holds its signing secret"
    ]


def test_slack_api_url_defaults_to_slacks_own_and_must_be_an_http_url(write) -> None:
    base = """
        catalogues:
          products: {key: sku, attributes: {sku: {type: text}}}
        notifications:
          slack_token_env: SLACK_BOT_TOKEN
        """
    assert load_spec(write(base)).notifications.slack_api_url == "https://slack.com/api/"
    gateway = load_spec(write(base + "  slack_api_url: http://127.0.0.1:8070/api\n"))
    assert gateway.notifications.slack_api_url == "http://127.0.0.1:8070/api/"
    assert errors(write(base + "  slack_api_url: slack.example/api\n")) == [
        "claro.yaml:5 notifications.slack_api_url: 'slack.example/api' is not an http(s) URL; Slack's own is "
        "https://slack.com/api/"]


def test_bound_and_type_errors(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes:
              sku: {type: text, min_length: -1}
              price: {type: number, importance: high}
              size: {type: enum, values: S}
        pipelines:
          p: {catalogue: products, error_budget: 2}
        """)
    assert errors(path) == [
        "claro.yaml:5 catalogues.products.attributes.sku.min_length: should be greater than or equal "
        "to 0, got -1",
        "claro.yaml:6 catalogues.products.attributes.price.importance: should be a valid number, "
        "unable to parse string as a number, got 'high'",
        "claro.yaml:7 catalogues.products.attributes.size.values: expected a list, got 'S'",
        "claro.yaml:9 pipelines.p.error_budget: should be less than or equal to 1, got 2",
    ]


def test_union_errors_are_merged(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes:
              sku: {type: text, default: [a, b]}
        """)
    assert errors(path) == [
        "claro.yaml:5 catalogues.products.attributes.sku.default: should be a valid string, a valid "
        "number, a valid integer or a valid boolean, got a list"
    ]


def test_list_items_are_located(write) -> None:
    path = write("""
        catalogues:
          products: {key: sku, attributes: {sku: {type: text}}}
        notifications:
          slack_token_env: SLACK_BOT_TOKEN
          slack:
            - channel: "#ok"
            - channel: "#also-ok"
              verbosity: loud
        """)
    assert errors(path) == [
        "claro.yaml:8 notifications.slack[1].verbosity: 'loud' is not one of summary, per_record"
    ]


def test_null_section(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes:
        """)
    assert errors(path) == [
        "claro.yaml:4 catalogues.products.attributes: expected a mapping (key: value), got an empty value"
    ]


def test_reject_above_review_is_rejected(write) -> None:
    path = write("""
        catalogues:
          products: {key: sku, attributes: {sku: {type: text}}}
        thresholds:
          default:
            auto_apply: 90
            review: 50
            reject: 70
        """)
    assert errors(path) == [
        "claro.yaml:4 thresholds.default: thresholds must satisfy reject <= review <= auto_apply, "
        "got reject=70.0, review=50.0, auto_apply=90.0"
    ]


# --- file-level errors ----------------------------------------------------------------------------

def test_yaml_syntax_error_has_line(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
           attributes: {}
        """)
    [line] = errors(path)
    assert line.startswith("claro.yaml:4: YAML syntax error: ")


def test_unclosed_flow_sequence(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes: {sku: {type: text}}
        pipelines:
          p: {catalogue: products, sources: [a, b}
        """)
    [line] = errors(path)
    assert line.startswith("claro.yaml:6: YAML syntax error: ")


def test_duplicate_key(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            key: id
            attributes: {sku: {type: text}}
        """)
    assert errors(path) == ["claro.yaml:4: duplicate key 'key' in the mapping that starts on line 3"]


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n"])
def test_empty_file(write, text: str) -> None:
    path = write(text)
    assert errors(path) == [
        "claro.yaml:1: the file is empty: a project spec needs at least a 'catalogues:' section"
    ]


def test_top_level_not_a_mapping(write) -> None:
    path = write("- products\n- suppliers\n")
    assert errors(path) == [
        "claro.yaml:1: the top level must be a mapping of sections (name, catalogues, thresholds, "
        "reviewers, sources, pipelines, schedules, destinations, notifications, retention, monitors, api), got a list"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert errors(str(path)) == [f"{path}: file not found"]


def test_problems_are_sorted_by_line(write) -> None:
    path = write("""
        catalogues:
          products:
            key: sku
            attributes:
              sku: {type: txt}
        sources:
          acme: {catalogue: products, kind: ftp}
        name: [x]
        """)
    assert [line.split(" ")[0] for line in errors(path)] == ["claro.yaml:5", "claro.yaml:7", "claro.yaml:8"]


# --- threshold resolution ---------------------------------------------------------------------------

def test_thresholds_for_resolution_order() -> None:
    spec = ProjectSpec.model_validate({
        "catalogues": {"products": {"key": "sku", "attributes": {
            "sku": {"type": "text"},
            "price": {"type": "number", "thresholds": {"auto_apply": 98, "reject": 30}},
        }}},
        "thresholds": {
            "default": {"auto_apply": 90, "review": 60, "reject": 40},
            "operations": {"enrich": {"auto_apply": 95, "review": 70, "reject": 20}},
            "sources": {"globex": {"auto_apply": 99}},
        },
        "sources": {"globex": {"catalogue": "products"}},
    })
    price = spec.catalogues["products"].attributes["price"]
    got = lambda *a: spec.thresholds_for(*a).model_dump()  # noqa: E731
    assert got("normalize") == {"auto_apply": 90, "review": 60, "reject": 40}
    assert got("enrich") == {"auto_apply": 95, "review": 70, "reject": 20}
    # attribute beats operation, key by key; unset keys fall through
    assert got("enrich", price) == {"auto_apply": 98, "review": 70, "reject": 30}
    # source beats attribute
    assert got("enrich", price, "globex") == {"auto_apply": 99, "review": 70, "reject": 30}
    assert got("normalize", None, "globex") == {"auto_apply": 99, "review": 60, "reject": 40}


def test_demo_threshold_overrides() -> None:
    spec = load_spec(DEMO_DIR / "claro.yaml")
    price = spec.catalogues["products"].attributes["price"]
    assert spec.thresholds_for("normalize").model_dump() == {"auto_apply": 90, "review": 60, "reject": 40}
    assert spec.thresholds_for("enrich").auto_apply == 95
    assert spec.thresholds_for("enrich", price).auto_apply == 98
    assert spec.thresholds_for("enrich", price, "globex_xlsx").auto_apply == 97
