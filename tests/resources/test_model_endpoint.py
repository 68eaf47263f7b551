"""The model endpoint client (resources/model_endpoint.py) against a local OpenAI-compatible fake
(tests/openai_fake.py: every request validated against OpenAI's OpenAPI description of POST /chat/completions):
structured output and log-probabilities, prose and out-of-enum answers, 429 with Retry-After, timeouts, a
server that is down."""

import json
import math

import pandas as pd
import pytest
from http_fakes import closed_port
from openai_fake import FakeChatCompletions, rate_limited

from claro_dagster.operations.enrich import ModelUnavailable, enrich_records
from claro_dagster.resources.model_endpoint import ChatCompletionsClient
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, EnrichMethodSpec, EnrichSpec


def method(**overrides) -> EnrichMethodSpec:
    return EnrichMethodSpec.model_validate({"method": "model", "url_env": "TEST_MODEL_URL",
                                            "api_key_env": "TEST_MODEL_KEY", "model": "gpt-4o-mini",
                                            "prompt": "Category of {title}?", **overrides})


def catalogue(m: EnrichMethodSpec) -> CatalogueSpec:
    return CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text"), "title": AttributeSpec(type="text"),
        "category": AttributeSpec(type="enum", values=["apparel", "footwear"], enrich=EnrichSpec(methods=[m]))})


@pytest.fixture
def fake():
    with FakeChatCompletions() as server:
        yield server


def client(fake, sleeps=None) -> ChatCompletionsClient:
    env = {"TEST_MODEL_URL": fake.base_url, "TEST_MODEL_KEY": "sk-test"}
    return ChatCompletionsClient(env, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def enrich(fake, m=None, sleeps=None, titles=("Trail running shoe",)):
    m = m or method()
    cat = catalogue(m)
    frame = pd.DataFrame({"sku": [f"S{i}" for i in range(len(titles))], "title": list(titles),
                          "category": [None] * len(titles)})
    return enrich_records(frame, cat, wanted={"category": list(frame["sku"])}, model=client(fake, sleeps))


def test_a_request_follows_the_contract_and_the_answer_becomes_a_proposal_with_certainty(fake):
    fake.says(json.dumps({"value": "footwear"}))
    result = enrich(fake)
    assert fake.invalid == []
    [body] = fake.bodies()
    assert body["model"] == "gpt-4o-mini" and body["logprobs"] is True
    assert body["response_format"]["json_schema"]["schema"]["properties"]["value"]["enum"] == ["apparel", "footwear"]
    assert body["messages"][-1] == {"role": "user", "content": "Category of Trail running shoe?"}
    assert fake.requests[0].headers["Authorization"] == "Bearer sk-test"
    [p] = result.proposals
    assert p.value == "footwear" and p.confidence == round(70 * 0.9, 1)  # reliability x the answer's probability
    assert p.model.startswith("gpt-4o-mini prompt:") and "p=0.90" in p.citation


def test_without_log_probabilities_the_certainty_is_the_documented_default():
    with FakeChatCompletions(logprobs=False) as fake:
        fake.says(json.dumps({"value": "apparel"}))
        [p] = enrich(fake).proposals
    assert p.confidence == 63 and "no log-probabilities" in p.citation


def test_prose_instead_of_json_is_rejected_with_the_reason(fake):
    fake.says("It is probably footwear, judging by the title.")
    result = enrich(fake)
    assert result.proposals == []
    [r] = result.rejections
    assert r.reason.startswith("the model answered prose, not JSON: 'It is probably footwear")


def test_a_value_outside_the_enum_is_rejected_never_proposed(fake):
    fake.says(json.dumps({"value": "shoes"}))
    result = enrich(fake)
    assert result.proposals == []
    assert result.rejections[0].reason == ("the model answered 'shoes', which is not one of the allowed values "
                                           "(apparel, footwear)")


def test_429_is_retried_after_retry_after(fake):
    fake.answer(rate_limited(retry_after=2))
    fake.says(json.dumps({"value": "apparel"}))
    sleeps: list[float] = []
    [p] = enrich(fake, sleeps=sleeps).proposals
    assert p.value == "apparel" and sleeps == [2.0] and len(fake.requests) == 2


def test_a_rate_limit_that_does_not_end_fails_the_run_clearly(fake):
    fake.answer(*[rate_limited(1)] * 3)
    with pytest.raises(ModelUnavailable, match=r"TEST_MODEL_URL .* did not answer: .*HTTP 429.*Nothing was written"):
        enrich(fake, method(max_attempts=3))
    assert len(fake.requests) == 3


def test_a_timeout_fails_the_run_clearly(fake):
    fake.answer("hang")
    with pytest.raises(ModelUnavailable, match="did not answer"):
        enrich(fake, method(timeout_seconds=0.3, max_attempts=1))


def test_an_endpoint_that_is_down_fails_the_run_clearly():
    env = {"TEST_MODEL_URL": f"http://127.0.0.1:{closed_port()}/v1", "TEST_MODEL_KEY": "k"}
    cat = catalogue(method(max_attempts=2))
    frame = pd.DataFrame({"sku": ["S0"], "title": ["Boot"], "category": [None]})
    with pytest.raises(ModelUnavailable, match=r"model endpoint TEST_MODEL_URL \(http://127\.0\.0\.1:\d+/v1\) did "
                                               r"not answer"):
        enrich_records(frame, cat, wanted={"category": ["S0"]},
                       model=ChatCompletionsClient(env, sleep=lambda s: None))


def test_an_endpoint_whose_variable_is_unset_is_skipped_offline(fake):
    cat = catalogue(method())
    frame = pd.DataFrame({"sku": ["S0"], "title": ["Boot"], "category": [None]})
    result = enrich_records(frame, cat, wanted={"category": ["S0"]}, model=ChatCompletionsClient({}))
    assert result.proposals == [] and result.skipped_model == {"category"} and fake.requests == []


def test_model_numbers_come_with_the_attribute_unit(fake):
    m = method(prompt="Weight of {title}?")
    cat = CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text"), "title": AttributeSpec(type="text"),
        "weight": AttributeSpec(type="number", unit="kg", enrich=EnrichSpec(methods=[m]))})
    fake.says(json.dumps({"value": 1.2, "unit": "kg"}))
    frame = pd.DataFrame({"sku": ["S0"], "title": ["Boot"], "weight": [math.nan]})
    [p] = enrich_records(frame, cat, wanted={"weight": ["S0"]}, model=client(fake)).proposals
    assert p.value == 1.2 and fake.invalid == []
    assert fake.bodies()[0]["response_format"]["json_schema"]["schema"]["properties"]["unit"]["enum"] == ["kg"]
