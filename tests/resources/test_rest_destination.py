"""The custom REST destination (resources/rest_destination.py) and its authentication (resources/http_auth.py)
against real local HTTP servers (tests/http_fakes.py RecordingServer) standing in for a proprietary system."""

from __future__ import annotations

import base64
import json
import types

import pytest
import sqlalchemy as sa
from http_fakes import RecordingServer

from claro_dagster.catalogue.channels import ChannelError, ChannelState
from claro_dagster.resources import http_auth
from claro_dagster.resources.http import HttpClient
from claro_dagster.resources.rest_destination import (
    RestDestinationClient,
    client_from_env,
    failure_of,
    idempotency_key,
    push,
    render_body,
    render_url,
)
from claro_dagster.spec.models import DestinationSpec

RECORDS = [{"sku": "A-1", "title": "Tent", "price": 99.5, "brand": "Acme"},
           {"sku": "B/2", "title": "Stove", "price": float("nan"), "brand": "Acme"}]


def spec(url: str, **extra) -> DestinationSpec:
    return DestinationSpec(kind="rest", catalogue="products", url=url,
                           body={"id": "sku", "name": {"attribute": "title"}, "pricing": {"amount": "price"},
                                 "source": {"value": "claro"}, "active": True}, **extra)


@pytest.fixture
def state(tmp_path):
    return ChannelState(types.SimpleNamespace(engine=sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")))


def client(auth=None) -> RestDestinationClient:
    return RestDestinationClient(HttpClient(sleep=lambda s: None, max_attempts=3), auth or http_auth.HttpAuth())


def test_body_template_renders_attributes_literals_and_nulls():
    body = render_body(spec("http://x/{sku}").body, RECORDS[1])
    assert body == {"id": "B/2", "name": "Stove", "pricing": {"amount": None}, "source": "claro", "active": True}
    assert render_body(None, {"sku": "A", "n": 1}) == {"sku": "A", "n": 1}
    import numpy as np
    import pandas as pd

    assert render_body(["a", "b", "c", "d"], {"a": pd.NA, "b": np.int64(3), "c": pd.Timestamp("2026-01-02"),
                                              "d": pd.NaT}) == [None, 3, "2026-01-02T00:00:00", None]
    assert render_body([{"attribute": "sku"}, "title", 3], RECORDS[0]) == ["A-1", "Tent", 3]
    assert render_url("https://erp.example/api/items/{sku}", RECORDS[1]) == "https://erp.example/api/items/B%2F2"
    with pytest.raises(ValueError, match="needs 'sku'"):
        render_url("https://erp.example/{sku}", {"title": "x"})


def test_success_rule_status_error_path_and_ok_path():
    def answer(status, body):
        response = types.SimpleNamespace(status_code=status, content=json.dumps(body).encode(),
                                         encoding="utf-8")
        response.json = lambda: body
        return response

    rule = spec("http://x/{sku}").success
    assert failure_of(answer(200, {"ok": True}), rule) is None
    assert failure_of(answer(200, {"error": None}), rule) is None
    assert failure_of(answer(200, {"error": "SKU locked"}), rule) == "HTTP 200 with error: SKU locked"
    assert failure_of(answer(422, {"message": "bad"}), rule).startswith("HTTP 422")
    strict = spec("http://x/{sku}", success={"status": [200], "error_path": "result.errors",
                                             "ok_path": "result.state", "ok_value": "saved"}).success
    assert failure_of(answer(200, {"result": {"state": "saved", "errors": []}}), strict) is None
    assert failure_of(answer(200, {"result": {"state": "queued"}}), strict) == (
        'HTTP 200 with result.state = "queued", expected "saved"')
    assert "result.errors" in failure_of(answer(200, {"result": {"errors": [{"field": "price"}]}}), strict)
    assert failure_of(answer(201, {}), strict).startswith("HTTP 201")


def test_per_record_push_sends_changed_records_only_and_keeps_errors(state):
    def receiver(request):
        if "B%2F2" in request.path:
            return (200, {}, {"error": "price is required"})  # a 200 that is a failure per the success rule
        return (200, {}, {"id": 7})

    with RecordingServer(receiver) as server:
        dest = spec(server.url + "/api/items/{sku}")
        plan = push(client(), state, "erp", dest, RECORDS, "sku")
        assert (plan.create, plan.failed) == (["A-1"], {"B/2": "HTTP 200 with error: price is required"})
        assert [(r.method, r.path) for r in server.requests] == [("PUT", "/api/items/A-1"),
                                                                 ("PUT", "/api/items/B%2F2")]
        assert server.requests[0].json() == {"id": "A-1", "name": "Tent", "pricing": {"amount": 99.5},
                                             "source": "claro", "active": True}
        saved = state.get("erp")
        assert (saved["A-1"].status, saved["B/2"].status, saved["B/2"].error) == (
            "pushed", "failed", "HTTP 200 with error: price is required")
        first_key = server.requests[1].headers["Idempotency-Key"]
        server.requests.clear()
        again = push(client(), state, "erp", dest, RECORDS, "sku")  # A-1 unchanged; B/2 sent again, same key
        assert (again.unchanged, list(again.failed)) == (["A-1"], ["B/2"])
        assert [r.headers["Idempotency-Key"] for r in server.requests] == [first_key]
        server.requests.clear()
        changed = push(client(), state, "erp", dest, [{**RECORDS[0], "price": 89.0}], "sku")
        assert changed.update == ["A-1"] and changed.changes["A-1"] == ['pricing: {"amount": 99.5} -> '
                                                                        '{"amount": 89.0}']
        assert server.requests[0].headers["Idempotency-Key"] != idempotency_key("erp", [])


def test_idempotency_key_is_the_same_on_the_http_layers_retry(state):
    with RecordingServer() as server:
        server.answer((503, {"Retry-After": "0"}, {"message": "busy"}), (502, {}, b""), (201, {}, b""))
        plan = push(client(), state, "erp", spec(server.url + "/items/{sku}", method="POST"), RECORDS[:1], "sku")
        assert plan.create == ["A-1"] and not plan.failed
        keys = {r.headers["Idempotency-Key"] for r in server.requests}
        assert len(server.requests) == 3 and len(keys) == 1


def test_per_batch_sends_json_arrays_and_fails_the_whole_batch(state):
    records = [{"sku": f"S{i}", "title": f"T{i}", "price": float(i), "brand": "x"} for i in range(5)]
    with RecordingServer() as server:
        server.answer((200, {}, {"ok": True}), (200, {}, {"error": {"code": "LOCKED"}}), (200, {}, {}))
        plan = push(client(), state, "erp", spec(server.url + "/bulk", method="POST", per="batch", batch_size=2),
                    records, "sku")
        assert [len(r.json()) for r in server.requests] == [2, 2, 1]
        assert server.requests[0].json()[1]["id"] == "S1"
        assert plan.failed == {"S2": 'HTTP 200 with error: {"code": "LOCKED"}',
                               "S3": 'HTTP 200 with error: {"code": "LOCKED"}'}
        assert sorted(plan.create) == ["S0", "S1", "S4"]


def test_refused_credentials_stop_the_push(state):
    with RecordingServer() as server:
        server.answer((401, {}, {"message": "bad token"}))
        with pytest.raises(ChannelError, match="refused the credentials"):
            push(client(http_auth.BearerAuth("nope")), state, "erp", spec(server.url + "/i/{sku}"), RECORDS, "sku")


# ------------------------------------------------------------------------------------------------ auth modes
@pytest.mark.parametrize("auth, env, check", [
    ({"type": "bearer", "token_env": "T"}, {"T": "tok"},
     lambda r: r.headers["Authorization"] == "Bearer tok"),
    ({"type": "basic", "username_env": "U", "password_env": "P"}, {"U": "me", "P": "pw"},
     lambda r: r.headers["Authorization"] == "Basic " + base64.b64encode(b"me:pw").decode()),
    ({"type": "api_key", "key_env": "K", "name": "X-Erp-Key"}, {"K": "k1"},
     lambda r: r.headers["X-Erp-Key"] == "k1"),
    ({"type": "api_key", "key_env": "K", "name": "api_key", "in": "query"}, {"K": "k1"},
     lambda r: r.path == "/i/A-1?api_key=k1"),
])
def test_static_auth_modes(state, monkeypatch, auth, env, check):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with RecordingServer() as server:
        dest = spec(server.url + "/i/{sku}", auth=auth)
        plan = push(client_from_env(dest), state, "erp", dest, RECORDS[:1], "sku")
        assert plan.create == ["A-1"] and check(server.requests[0])


def test_missing_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("ERP_TOKEN", raising=False)
    with pytest.raises(ChannelError, match="'ERP_TOKEN' .* is not set"):
        client_from_env(spec("http://127.0.0.1/i/{sku}", auth={"type": "bearer", "token_env": "ERP_TOKEN"}))


def test_oauth2_token_cached_until_expiry_and_refetched_once_after_a_401(state, monkeypatch):
    issued = []

    def handler(request):
        if request.path == "/token":
            assert request.body.decode() == "grant_type=client_credentials&scope=items"
            assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()
            issued.append(f"tok{len(issued) + 1}")
            return (200, {}, {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 300})
        return (200, {}, {}) if request.headers["Authorization"] == f"Bearer {issued[-1]}" else (401, {}, {})

    now = [1000.0]
    with RecordingServer(handler) as server:
        auth = http_auth.OAuth2ClientCredentials(server.url + "/token", "cid", "csecret", "items",
                                                 http=HttpClient(sleep=lambda s: None), clock=lambda: now[0])
        dest = spec(server.url + "/i/{sku}")
        records = [{**RECORDS[0], "sku": f"R{i}"} for i in range(3)]
        push(client(auth), state, "erp", dest, records[:2], "sku")
        assert auth.fetches == 1  # cached between the two records
        now[0] += 290  # within 30 s of expiry: fetched again before use
        push(client(auth), state, "erp", dest, records[2:], "sku")
        assert auth.fetches == 2
        issued.append("rotated-on-the-server")  # the server no longer accepts tok2: one 401, a new token, sent again
        plan = push(client(auth), state, "erp", dest, [{**records[0], "title": "changed"}], "sku")
        assert plan.update == ["R0"] and auth.fetches == 3
        paths = [r.path for r in server.requests]
        assert paths[-3:] == ["/i/R0", "/token", "/i/R0"]


# ------------------------------------------------------------------------------------------------ claro check
CATALOGUE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
      price: {type: number}
"""


def spec_problems(tmp_path, monkeypatch, text: str) -> list[str]:
    from claro_dagster.spec import SpecError, load_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "claro.yaml").write_text(CATALOGUE + text, encoding="utf-8")
    try:
        load_spec("claro.yaml")
    except SpecError as error:
        return str(error).splitlines()
    return []


def test_claro_check_accepts_a_good_rest_destination(tmp_path, monkeypatch):
    assert spec_problems(tmp_path, monkeypatch, """\
destinations:
  erp:
    kind: rest
    catalogue: products
    url: https://erp.example/api/items/{sku}
    body: {id: sku, name: {attribute: title}, price: {amount: price, currency: {value: GBP}}}
    auth: {type: oauth2_client_credentials, token_url: https://erp.example/token, client_id_env: ID,
           client_secret_env: SECRET}
    success: {status: [200], error_path: result.error}
""") == []


def test_claro_check_names_unknown_attributes_and_missing_auth_keys(tmp_path, monkeypatch):
    found = spec_problems(tmp_path, monkeypatch, """\
destinations:
  erp:
    kind: rest
    catalogue: products
    url: https://erp.example/api/items/{code}
    per: record
    body: {id: sku, colour: colour}
    auth: {type: basic, username_env: ERP_USER}
""")
    assert any("destinations.erp.url: the url template names {code}, which is not an attribute of products" in line
               for line in found), found
    assert any("destinations.erp.body: the body names 'colour', which is not an attribute of products" in line
               for line in found), found
    assert any("destinations.erp.auth.password_env: auth type basic needs 'password_env'" in line
               for line in found), found
    batch = spec_problems(tmp_path, monkeypatch, """\
destinations:
  erp:
    kind: rest
    catalogue: products
    url: https://erp.example/api/items/{sku}
    per: batch
""")
    assert any("with per: batch the url cannot hold {attribute} placeholders" in line for line in batch), batch


def test_a_5xx_that_outlasts_the_retries_fails_the_record_and_a_dead_endpoint_stops_the_push(state):
    with RecordingServer() as server:
        server.answer(*[(503, {"Retry-After": "0"}, {"error": "maintenance"})] * 3, (200, {}, {}))
        plan = push(client(), state, "erp", spec(server.url + "/i/{sku}"), RECORDS, "sku")
        assert plan.failed["A-1"] == 'HTTP 503: {"error": "maintenance"}' and len(server.requests) == 4
        assert plan.create == ["B/2"] and state.get("erp")["A-1"].status == "failed"
        server.answer("hang")
        slow = RestDestinationClient(HttpClient(timeout=0.2, max_attempts=1), http_auth.HttpAuth())
        with pytest.raises(ChannelError, match="timed out.*check the endpoint is up"):
            push(slow, state, "erp", spec(server.url + "/i/{sku}"), [{**RECORDS[0], "title": "x"}], "sku")
        server.release.set()
        assert state.get("erp")["B/2"].status == "pushed"  # what was accepted before is kept


def test_oauth2_from_the_spec_with_a_relative_url_under_url_env(state, monkeypatch):
    def handler(request):
        if request.path == "/oauth/token":
            return (200, {}, {"access_token": "t-1", "expires_in": 3600})
        return (201, {}, b"") if request.headers.get("Authorization") == "Bearer t-1" else (401, {}, {})

    with RecordingServer(handler) as server:
        for name, value in {"ERP_BASE": server.url, "ERP_TOKEN_URL": server.url + "/oauth/token", "ERP_ID": "cid",
                            "ERP_SECRET": "sec"}.items():
            monkeypatch.setenv(name, value)
        dest = spec("/api/items/{sku}", url_env="ERP_BASE", auth={
            "type": "oauth2_client_credentials", "token_url_env": "ERP_TOKEN_URL", "client_id_env": "ERP_ID",
            "client_secret_env": "ERP_SECRET"})
        plan = push(client_from_env(dest), state, "erp", dest, RECORDS, "sku")
        assert plan.create == ["A-1", "B/2"] and not plan.failed
        assert [r.path for r in server.requests] == ["/oauth/token", "/api/items/A-1", "/api/items/B%2F2"]
        from claro_dagster.resources.sales_channels import required_env

        assert required_env(dest) == ["ERP_BASE", "ERP_ID", "ERP_SECRET", "ERP_TOKEN_URL"]
