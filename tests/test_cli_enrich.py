"""`claro enrich` through the real entry point: dry run, per-attribute counts, the review list showing confidence,
citations and reviewers, `claro rollback --run` undoing the run, a model endpoint that is down, `claro check`
on a broken `enrich:` block."""

import json
import re

import pandas as pd
import pytest
from cli_project import claro
from http_fakes import closed_port
from openai_fake import FakeChatCompletions

from claro_dagster.catalogue.opening import open_store
from claro_dagster.spec import load_spec

SPEC = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
      colour:
        type: enum
        values: [black, red, navy]
        enrich:
          methods:
            - {method: rules, from: [title]}
      category:
        type: enum
        values: [apparel, footwear]
        enrich:
          methods:
            - {method: model, url_env: TEST_MODEL_URL, api_key_env: TEST_MODEL_KEY, model: fake-mini}
thresholds:
  default: {auto_apply: 90, review: 60, reject: 40}
  operations:
    enrich: {auto_apply: 75}
reviewers:
  merchandising: [max@example.com]
pipelines:
  products_enrichment:
    catalogue: products
    after: {catalogue: products, operation: records}
    operations: [enrich]
    routing:
      - {operations: [enrich], confidence_below: 85, reviewers: [merchandising]}
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_MODEL_URL", raising=False)
    spec = tmp_path / "claro.yaml"
    spec.write_text(SPEC)
    home = tmp_path / "home"
    home.mkdir()
    store = open_store(load_spec(spec), home=home)
    store.import_records("products", pd.DataFrame({"sku": ["A", "B", "C"],
                                                   "title": ["Red boot", "Mug", "Black tee"]}), change_set_id="p")
    store.dispose()
    return spec, home


def test_enrich_dry_run_then_run_then_rollback(project):
    spec, home = project
    dry = claro("enrich", "--dry-run", home=home, spec=spec)
    assert dry.returncode == 0, dry.stderr
    assert "colour: 3 missing" not in dry.stdout
    assert "products: 6 missing or weak value(s); 2 would be filled" in dry.stdout
    assert "category: the model method was skipped: TEST_MODEL_URL is not set" in dry.stdout
    assert "dry run: nothing written" in dry.stdout

    ran = claro("enrich", "--attribute", "colour", home=home, spec=spec)
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"│ colour\s+│ 3\s+│ 2\s+│ 0\s+│ 0", ran.stdout), ran.stdout
    run_id = re.search(r"undo with `claro rollback --run (enrich-cli-\w+)`", ran.stdout).group(1)
    records = {r["sku"]: r["colour"] for r in json.loads(claro("records", "--format", "json", home=home,
                                                               spec=spec).stdout)}
    assert records == {"A": "red", "B": None, "C": "black"}

    undone = claro("rollback", "--run", run_id, home=home, spec=spec)
    assert undone.returncode == 0, undone.stderr
    assert "restored 2 field values" in undone.stdout
    records = {r["sku"]: r["colour"] for r in json.loads(claro("records", "--format", "json", home=home,
                                                               spec=spec).stdout)}
    assert records == {"A": None, "B": None, "C": None}


def test_model_proposals_show_confidence_citation_and_reviewers_in_review_list(project, monkeypatch):
    spec, home = project
    with FakeChatCompletions() as fake:
        monkeypatch.setenv("TEST_MODEL_URL", fake.base_url)
        monkeypatch.setenv("TEST_MODEL_KEY", "sk-test")
        fake.says(*[json.dumps({"value": v}) for v in ("footwear", "apparel", "shirts")])
        ran = claro("enrich", "-a", "category", home=home, spec=spec)
        assert fake.invalid == []
    assert ran.returncode == 0, ran.stderr
    assert "rejected C · category (model): the model answered 'shirts', which is not one of the allowed values" \
        in ran.stdout
    items = json.loads(claro("review", "list", "--operation", "enrich", "--format", "json", home=home,
                             spec=spec).stdout)
    assert {(i["record"], i["new"], i["confidence"], i["reviewers"]) for i in items} == {
        ("A", "footwear", 63.0, "merchandising"), ("B", "apparel", 63.0, "merchandising")}
    assert all(i["citation"].startswith("model fake-mini prompt:") and i["model"].startswith("fake-mini prompt:")
               for i in items)


def test_a_model_endpoint_that_is_down_fails_clearly_and_nothing_is_written(project, monkeypatch):
    spec, home = project
    monkeypatch.setenv("TEST_MODEL_URL", f"http://127.0.0.1:{closed_port()}/v1")
    monkeypatch.setenv("TEST_MODEL_KEY", "sk-test")
    ran = claro("enrich", home=home, spec=spec)
    assert ran.returncode == 1
    last = ran.stderr.strip().splitlines()[-1]  # after the HTTP layer's retry warnings
    assert last.startswith("error: products: model endpoint TEST_MODEL_URL (http://127.0.0.1:"), ran.stderr
    assert "Nothing was written" in last and "Traceback" not in ran.stderr
    records = json.loads(claro("records", "--format", "json", home=home, spec=spec).stdout)
    assert all(r["colour"] is None for r in records)  # the rules' values were not written either


def test_check_names_the_line_of_a_broken_enrich_block(tmp_path):
    spec = tmp_path / "claro.yaml"
    spec.write_text(SPEC.replace("{method: rules, from: [title]}", "{method: rules, from: [titel], via: sku}"))
    checked = claro("check", home=tmp_path, spec=spec)
    assert checked.returncode == 1
    assert "claro.yaml:12 catalogues.products.attributes.colour.enrich.methods[0].from[0]: 'titel' is not an " \
           "attribute of this catalogue" in checked.stderr + checked.stdout
    assert "'via' is a key of lookup methods, not of rules" in checked.stderr + checked.stdout
