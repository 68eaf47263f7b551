"""Bulk Enrichment against the store (catalogue/enrichment.py): the `enrich` thresholds gate each value, routing
rules assign reviewers, provenance keeps confidence, citation and model, `rollback --run` undoes a run, a model
endpoint that fails leaves nothing half-applied, and unusable model answers are never applied."""

import json

import pandas as pd
import pytest
from openai_fake import FakeChatCompletions

from claro_dagster.catalogue.enrichment import run_enrichment
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.operations.enrich import ModelUnavailable
from claro_dagster.resources.model_endpoint import ChatCompletionsClient
from claro_dagster.spec import load_spec

SPEC = """\
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
      brand: {type: text}
      supplier: {type: reference, target: suppliers}
      colour:
        type: enum
        values: [black, red, navy]
        synonyms: {navy: [navy blue]}
        enrich:
          methods:
            - {method: rules, from: [title]}
      origin:
        type: enum
        values: [GB, DE]
        enrich:
          methods:
            - {method: lookup, via: supplier, field: country, reliability: 80}
      category:
        type: enum
        values: [apparel, footwear]
        enrich:
          weak_below: 50
          methods:
            - {method: model, url_env: TEST_MODEL_URL, api_key_env: TEST_MODEL_KEY, model: fake-mini,
               prompt: "Category of {title}?"}
thresholds:
  default: {auto_apply: 90, review: 60, reject: 40}
  operations:
    enrich: {auto_apply: 85, review: 60}
reviewers:
  merchandising: [max@example.com]
pipelines:
  products_enrichment:
    catalogue: products
    after: {catalogue: products, operation: records}
    operations: [enrich]
    routing:
      - {operations: [enrich], confidence_below: 85, reviewers: [merchandising], notify: "#merchandising"}
"""


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "claro.yaml"
    path.write_text(SPEC)
    s = CatalogueStore(load_spec(path), f"sqlite:///{tmp_path / 'store.db'}")
    s.import_records("suppliers", pd.DataFrame({"supplier_id": ["SUP-1"], "country": ["DE"]}), change_set_id="s")
    s.import_records("products", pd.DataFrame({
        "sku": ["A", "B", "C"], "title": ["Shell jacket navy blue", "Red boot", "Mug"],
        "brand": ["Acme"] * 3, "supplier": ["SUP-1", "SUP-1", None]}), change_set_id="p", run_id="import")
    yield s
    s.dispose()


@pytest.fixture
def model():
    with FakeChatCompletions() as fake:
        yield fake, ChatCompletionsClient({"TEST_MODEL_URL": fake.base_url, "TEST_MODEL_KEY": "k"},
                                          sleep=lambda s: None)


def test_values_are_gated_by_the_enrich_thresholds_routed_and_carry_provenance(store, model):
    fake, client = model
    fake.says(json.dumps({"value": "apparel"}), json.dumps({"value": "footwear"}), "no idea")
    report = run_enrichment(store, "products", run_id="run-1", model=client)
    assert fake.invalid == []
    # rules: 80 for the title, under 85: queued for the merchandisers; lookup 80 x 1.0: queued too
    assert report.counts["colour"] == {"wanted": 3, "filled": 0, "queued": 2, "rejected": 0, "unchanged": 0,
                                       "already_proposed": 0}
    assert report.counts["origin"]["queued"] == 2
    # model: 70 x 0.9 = 63, queued; C's prose answer rejected with its reason, never applied
    assert report.counts["category"] == {"wanted": 3, "filled": 0, "queued": 2, "rejected": 1, "unchanged": 0,
                                         "already_proposed": 0}
    [rejected] = report.result.rejections
    assert rejected.record == "C" and "prose, not JSON" in rejected.reason
    items = {(i.record, i.field): i for i in ReviewQueue(store).list(operation="enrich")}
    navy = items[("A", "colour")]
    assert navy.new == "navy" and navy.reviewers == ("merchandising",) and navy.run_id == "run-1"
    assert navy.citation == "title: \"Shell jacket navy blue\" (matched 'navy blue')"
    assert "confidence 80 = reliability 80 x evidence 1.00" in navy.reason
    assert items[("B", "origin")].citation == "catalogue suppliers record 'SUP-1': supplier_id=SUP-1, country=DE"
    shoe = items[("B", "category")]
    assert shoe.new == "footwear" and shoe.model.startswith("fake-mini prompt:") and shoe.confidence == 63
    assert ("C", "category") not in items and store.record("products", "C")["category"] is None
    # a second run proposes nothing twice
    again = run_enrichment(store, "products", run_id="run-2", model=client)
    assert again.counts["colour"]["already_proposed"] == 2 and again.change_sets == []


def test_values_above_auto_apply_are_filled_with_provenance_and_rolled_back_by_run(store, tmp_path):
    spec = store.spec.model_copy(deep=True)
    spec.thresholds.operations["enrich"].auto_apply = 75  # rules at 80 now go straight in
    relaxed = CatalogueStore(spec, store.url)
    try:
        report = run_enrichment(relaxed, "products", run_id="run-fill", attributes=["colour"])
        assert report.counts["colour"]["filled"] == 2
        assert relaxed.record("products", "A")["colour"] == "navy"
        prov = relaxed.provenance("products", "A", "colour")
        assert prov.operation == "enrich" and prov.confidence == 80 and prov.run_id == "run-fill"
        assert "navy blue" in prov.citation
        undone = relaxed.rollback("run-fill")
        assert undone.restored == 2
        assert relaxed.record("products", "A")["colour"] is None
    finally:
        relaxed.dispose()


def test_a_model_endpoint_that_is_down_fails_the_run_and_writes_nothing(store, closed_port):
    client = ChatCompletionsClient({"TEST_MODEL_URL": f"http://127.0.0.1:{closed_port}/v1", "TEST_MODEL_KEY": "k"},
                                   sleep=lambda s: None)
    before = store.records("products")
    with pytest.raises(ModelUnavailable, match="did not answer"):
        run_enrichment(store, "products", run_id="run-down", model=client)
    pd.testing.assert_frame_equal(store.records("products"), before)
    assert ReviewQueue(store).list(operation="enrich") == []  # the rules' proposals were not written either
    with pytest.raises(Exception, match="no change set was written by run 'run-down'"):
        store.rollback("run-down")


def test_dry_run_writes_nothing_and_weak_values_are_enriched(store, model):
    fake, client = model
    # B's category was written with confidence 30: weak (under weak_below 50); A's and C's are missing
    store.import_records("products", pd.DataFrame({"sku": ["B"], "category": ["apparel"]}), change_set_id="weak",
                         confidence=30, overwrite_confidence=30)
    fake.says(*[json.dumps({"value": "footwear"})] * 3)
    dry = run_enrichment(store, "products", run_id="dry", attributes=["category"], dry_run=True, model=client)
    assert dry.counts["category"]["wanted"] == 3 and dry.change_sets == []
    assert ReviewQueue(store).list(operation="enrich") == []


def test_unknown_or_unconfigured_attributes_are_refused(store):
    with pytest.raises(Exception, match="attribute 'title' of products has no 'enrich' methods"):
        run_enrichment(store, "products", run_id="x", attributes=["title"])
    with pytest.raises(Exception, match="unknown attribute 'nope'"):
        run_enrichment(store, "products", run_id="x", attributes=["nope"])


def test_a_reference_file_missing_at_run_time_skips_its_lookup_with_a_note(tmp_path):
    spec_text = SPEC.replace("{method: lookup, via: supplier, field: country, reliability: 80}",
                             "{method: lookup, file: reference/origins.csv, key: supplier, key_column: id, "
                             "field: country}")
    (tmp_path / "claro.yaml").write_text(spec_text)
    s = CatalogueStore(load_spec(tmp_path / "claro.yaml"), f"sqlite:///{tmp_path / 'store.db'}")
    try:
        s.import_records("products", pd.DataFrame({"sku": ["A"], "supplier": ["SUP-1"]}), change_set_id="p")
        report = run_enrichment(s, "products", run_id="r", attributes=["origin"])
        assert report.notes == [f"origin: the lookup in reference/origins.csv was skipped: no file at "
                                f"{tmp_path / 'reference' / 'origins.csv'} (paths are relative to the spec's "
                                "folder; copy the file beside the spec)"]
        (tmp_path / "reference").mkdir()
        (tmp_path / "reference" / "origins.csv").write_text("id,country\nSUP-1,GB\n")
        report = run_enrichment(s, "products", run_id="r2", attributes=["origin"])
        assert report.counts["origin"]["filled"] == 1  # 90 for a file, above the enrich gate's 85
        assert s.record("products", "A")["origin"] == "GB"
        assert s.provenance("products", "A", "origin").citation == "reference/origins.csv line 2: id=SUP-1, country=GB"
    finally:
        s.dispose()
