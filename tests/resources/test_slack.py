"""Slack alerts against a local HTTP server standing in for Slack's Web API.

Every chat.postMessage request the notifier sends is checked against Slack's published contract,
`tests/contracts/slack/chat.postMessage.openapi-excerpt.json` (the `/chat.postMessage` operation of
slackapi/slack-api-specs `web-api/slack_web_openapi_v2.json`, OpenAPI 2.0), and against the message
limits in `tests/contracts/slack/slack-limits.json`. The fake server answers as those documents say:
the success schema `{ok, channel, ts, message}`, errors as HTTP 200 with `{"ok": false, "error": ...}`,
and rate limiting as HTTP 429 with `Retry-After` (seconds) and `{"ok": false, "error": "ratelimited"}`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import dagster as dg
import pytest
from http_fakes import RecordingServer, Request

from claro_dagster.resources import slack
from claro_dagster.resources.slack import Alert, SlackNotifier, build_messages, routes_for
from claro_dagster.spec.loader import load_spec
from claro_dagster.spec.models import NotificationsSpec, SlackRoute

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts" / "slack"
OPENAPI = json.loads((CONTRACTS / "chat.postMessage.openapi-excerpt.json").read_text())
LIMITS = json.loads((CONTRACTS / "slack-limits.json").read_text())
BLOCK_KIT = LIMITS["block_kit"]


# ---------------------------------------------------------------------------------------------- contract
def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return OPENAPI["definitions"][ref.rsplit("/", 1)[1]] if ref else schema


def _blocks_problems(blocks: Any) -> list[str]:
    """Check `blocks` against the excerpt's `definitions.blocks` (an array of objects with a string type)."""
    schema = OPENAPI["definitions"]["blocks"]
    if not isinstance(blocks, list):
        return [f"blocks must be a {schema['type']}, got {type(blocks).__name__}"]
    item = schema["items"]
    problems = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            problems.append(f"blocks[{i}] must be an object")
            continue
        problems += [f"blocks[{i}] lacks {key!r}" for key in item["required"] if key not in block]
        if not isinstance(block.get("type"), str):
            problems.append(f"blocks[{i}].type must be a string")
    return problems


def postmessage_problems(request: Request) -> list[str]:
    """Problems of one chat.postMessage request under the OpenAPI 2.0 operation in the excerpt."""
    op = OPENAPI["operation"]
    problems: list[str] = []
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type not in op["consumes"]:
        problems.append(f"Content-Type {content_type!r} is not one of {op['consumes']}")
    if content_type == "application/json":
        body = json.loads(request.body)
    else:
        body = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    params = {p["name"]: p for p in op["parameters"]}
    for name, param in params.items():
        if param["in"] == "header" and param.get("required"):
            # The `token` header parameter: slack_sdk and Slack's docs send it as a Bearer token.
            auth = request.headers.get("Authorization", "")
            if not re.fullmatch(r"Bearer \S+", auth):
                problems.append(f"required header parameter {name!r} missing (Authorization: Bearer ...)")
        if param["in"] == "formData" and param.get("required") and name not in body:
            problems.append(f"required parameter {name!r} missing")
    for name, value in body.items():
        param = params.get(name)
        if param is None or param["in"] != "formData":
            problems.append(f"parameter {name!r} is not in the contract")
            continue
        if name in ("blocks", "attachments"):
            # "A JSON-based array ... presented as a URL-encoded string" in a form; a JSON body may carry the array.
            decoded = json.loads(value) if isinstance(value, str) else value
            if name == "blocks":
                problems += _blocks_problems(decoded)
        elif param["type"] == "string" and not isinstance(value, str):
            problems.append(f"{name} must be a string, got {type(value).__name__}")
        elif param["type"] == "boolean" and not (isinstance(value, bool) if content_type == "application/json"
                                                 else value in ("true", "false", "1", "0")):
            problems.append(f"{name} must be a boolean, got {value!r}")
    if not any(k in body for k in ("text", "blocks", "attachments")):
        problems.append("one of text, blocks or attachments is required (text_usage)")
    if "thread_ts" in body and not re.fullmatch(_resolve({"$ref": "#/definitions/defs_ts"})["pattern"],
                                                str(body["thread_ts"])):
        problems.append(f"thread_ts {body['thread_ts']!r} is not a Slack ts")
    return problems


def success_problems(answer: dict[str, Any]) -> list[str]:
    """The fake's own answers must match the excerpt's success schema."""
    schema = OPENAPI["operation"]["responses"]["200"]["schema"]
    problems = [f"answer lacks {k!r}" for k in schema["required"] if k not in answer]
    for key in ("channel", "ts"):
        pattern = _resolve(schema["properties"][key])["pattern"]
        if not re.fullmatch(pattern, str(answer.get(key))):
            problems.append(f"{key} {answer.get(key)!r} does not match {pattern}")
    message = OPENAPI["definitions"]["objs_message"]
    problems += [f"message lacks {k!r}" for k in message["required"] if k not in answer.get("message", {})]
    return problems


def _text_chars(block: dict[str, Any]) -> int:
    total = 0
    for key in ("text", "fields", "elements"):
        value = block.get(key)
        for item in value if isinstance(value, list) else [value] if value else []:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                total += len(item["text"])
    return total


def limit_problems(payload: dict[str, Any]) -> list[str]:
    """A message against slack-limits.json."""
    problems = []
    blocks = payload.get("blocks", [])
    if len(blocks) > BLOCK_KIT["max_blocks_per_message"]["value"]:
        problems.append(f"{len(blocks)} blocks")
    for block in blocks:
        if block["type"] == "section":
            if "text" in block and len(block["text"]["text"]) > BLOCK_KIT["section.text_max_chars"]["value"]:
                problems.append(f"section text of {len(block['text']['text'])} characters")
            fields = block.get("fields", [])
            if len(fields) > BLOCK_KIT["section.fields_max_items"]["value"]:
                problems.append(f"{len(fields)} fields")
            problems += [f"field of {len(f['text'])} characters" for f in fields
                         if len(f["text"]) > BLOCK_KIT["section.fields_item_max_chars"]["value"]]
    total = sum(_text_chars(b) for b in blocks)
    # observed_aggregate_limit: msg_blocks_too_long at ~13,200 characters; markdown_block_max_chars 12,000.
    if total > BLOCK_KIT["markdown_block_max_chars"]["value"]:
        problems.append(f"{total} characters of block text in one message")
    if len(payload.get("text", "")) > LIMITS["chat.postMessage"]["text_recommended_max"]["value"]:
        problems.append(f"text of {len(payload['text'])} characters")
    return problems


# ---------------------------------------------------------------------------------------------- fake Slack
class FakeSlack(RecordingServer):
    """Slack's Web API on 127.0.0.1: records requests; answers what is queued with `answer(...)`, then success."""

    def __init__(self) -> None:
        self.answer_problems: list[str] = []
        self.channel_errors: dict[str, str] = {}  # channel -> Slack error code to answer with
        self._ts = itertools.count(1)
        super().__init__(self._reply)

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/"

    def posts(self) -> list[Request]:
        return [r for r in self.requests if r.path.rsplit("/", 1)[-1] == "chat.postMessage"]

    @staticmethod
    def channel_id(channel: str) -> str:
        return "C" + hashlib.sha1(channel.encode()).hexdigest()[:10].upper()

    def _reply(self, request: Request) -> tuple[int, dict[str, str], dict[str, Any]]:
        n = next(self._ts)
        payload = request.json()
        error = self.channel_errors.get(payload.get("channel"))
        if error:
            return 200, {}, {"ok": False, "error": error}
        ts = f"{1764300000 + n}.{n:06d}"
        answer = {"ok": True, "channel": self.channel_id(payload["channel"]), "ts": ts,
                  "message": {"type": "message", "subtype": "bot_message", "text": payload.get("text", ""),
                              "ts": ts, "bot_id": "B0123456789"}}
        if "thread_ts" in payload:
            answer["message"]["thread_ts"] = payload["thread_ts"]
        self.answer_problems += success_problems(answer)
        return 200, {}, answer


@pytest.fixture
def fake_slack():
    with FakeSlack() as fake:
        yield fake
    assert fake.answer_problems == []
    for request in fake.posts():
        assert postmessage_problems(request) == [], request.json()
        assert limit_problems(request.json()) == [], request.json()


# ---------------------------------------------------------------------------------------------- data
NOTIFICATIONS = NotificationsSpec(slack_token_env="SLACK_BOT_TOKEN", slack=[
    SlackRoute(channel="#everything"),
    SlackRoute(channel="#products", catalogues=["products"]),
    SlackRoute(channel="#validation", operations=["validate"]),
    SlackRoute(channel="#onboarding", pipelines=["products_onboarding"]),
    SlackRoute(channel="#failures", events=["run.failed", "batch.halted"]),
    SlackRoute(channel="#changes", events=["change.*"]),
    SlackRoute(channel="#supplier-failures", catalogues=["suppliers"], events=["run.failed"],
               verbosity="per_record"),
])


def alert(**overrides: Any) -> Alert:
    values: dict[str, Any] = dict(
        event="run.failed", title="Validation failed for batch acme-2026-11-28", catalogue="products",
        operation="validate", pipeline="products_onboarding", stage="batch_validated",
        run_id="4f1d2c3b-aaaa-bbbb-cccc-0123456789ab", batch="acme-2026-11-28",
        error="23 of 500 rows failed validation (error budget 5%)\nrow 12: price 'abc' is not a number",
        counts={"rows": 500, "failed": 23})
    values.update(overrides)
    return Alert(**values)


def notifier(base_url: str, **kwargs: Any) -> SlackNotifier:
    return SlackNotifier(token="xoxb-test-token", base_url=base_url, webserver_url="http://dagster.test:3000",
                         **kwargs)


# ---------------------------------------------------------------------------------------------- limits
def test_limit_constants_are_slacks_published_limits():
    assert slack.MAX_BLOCKS == BLOCK_KIT["max_blocks_per_message"]["value"]
    assert slack.SECTION_TEXT_MAX == BLOCK_KIT["section.text_max_chars"]["value"]
    assert slack.SECTION_FIELDS_MAX == BLOCK_KIT["section.fields_max_items"]["value"]
    assert slack.SECTION_FIELD_MAX == BLOCK_KIT["section.fields_item_max_chars"]["value"]
    assert slack.MESSAGE_BLOCK_CHARS_MAX <= BLOCK_KIT["markdown_block_max_chars"]["value"]
    assert slack.TEXT_RECOMMENDED_MAX == LIMITS["chat.postMessage"]["text_recommended_max"]["value"]


# ---------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize(("event", "where", "channels"), [
    ("run.failed", dict(catalogue="products", operation="validate", pipeline="products_onboarding"),
     ["#everything", "#products", "#validation", "#onboarding", "#failures"]),
    ("run.completed", dict(catalogue="products", operation="analyse"), ["#everything", "#products"]),
    ("run.failed", dict(catalogue="suppliers", operation="export"),
     ["#everything", "#failures", "#supplier-failures"]),
    ("run.completed", dict(catalogue="suppliers", operation="export"), ["#everything"]),
    ("batch.halted", dict(catalogue="suppliers", pipeline="suppliers_onboarding"), ["#everything", "#failures"]),
    ("change.applied", dict(catalogue="suppliers"), ["#everything", "#changes"]),
    ("change.queued_for_review", dict(catalogue="products"), ["#everything", "#products", "#changes"]),
    # a route that names operations does not hear about an alert that has no operation
    ("review.queued", dict(catalogue="products"), ["#everything", "#products"]),
])
def test_a_route_matches_when_each_of_its_lists_contains_the_value(event, where, channels):
    assert [r.channel for r in routes_for(NOTIFICATIONS, event=event, **where)] == channels


def test_no_routes_means_no_messages(fake_slack):
    report = notifier(fake_slack.base_url).notify(NotificationsSpec(), alert())
    assert report.channels == [] and report.ok and fake_slack.requests == []


# ---------------------------------------------------------------------------------------------- messages
def test_summary_message_names_where_it_failed_and_links_the_run():
    route = SlackRoute(channel="#products")
    a = alert(error="price <0 & stock >5 rejected", records=["SKU-1", "SKU-2"])
    [message] = build_messages(route, a, webserver_url="http://dagster.test:3000/")
    assert message["channel"] == "#products" and "thread_ts" not in message
    assert "Validation failed" in message["text"] and "products/validate" in message["text"]
    types = [b["type"] for b in message["blocks"]]
    assert types[0] == "header" and "section" in types and types[-1] == "actions"
    facts = "\n".join(f["text"] for f in message["blocks"][1]["fields"])
    assert "*Catalogue*\nproducts" in facts and "*Operation*\nvalidate" in facts and "*Stage*\nbatch_validated" in facts
    everything = json.dumps(message["blocks"])
    assert "price &lt;0 &amp; stock &gt;5 rejected" in everything  # mrkdwn control characters escaped
    assert "SKU-1" in everything and "SKU-2" in everything
    [button] = message["blocks"][-1]["elements"]
    assert button["url"] == "http://dagster.test:3000/runs/4f1d2c3b-aaaa-bbbb-cccc-0123456789ab"
    assert limit_problems(message) == []


def test_a_huge_error_and_title_are_cut_to_slacks_limits():
    [message] = build_messages(SlackRoute(channel="#x"), alert(title="T" * 400, error="E" * 50_000))
    assert limit_problems(message) == []
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    assert message["blocks"][2]["text"]["text"].endswith("…```")


def test_per_record_splits_500_records_into_threaded_replies_within_limits():
    records = [f"SKU-{i:05d}: price is missing and the GTIN check digit is wrong" for i in range(500)]
    messages = build_messages(SlackRoute(channel="#p", verbosity="per_record"), alert(records=records))
    parent, replies = messages[0], messages[1:]
    assert "thread_ts" not in parent and len(replies) >= 2
    assert all(r["thread_ts"] is None for r in replies)
    assert [limit_problems(m) for m in messages] == [[]] * len(messages)
    listed = [line[2:] for r in replies for b in r["blocks"] if b["type"] == "section"
              for line in b["text"]["text"].split("\n")]
    assert listed == records  # every record once, in order
    assert replies[0]["blocks"][0]["elements"][0]["text"].startswith("Records 1–")
    assert replies[-1]["blocks"][0]["elements"][0]["text"].startswith("Records ")
    assert "of 500" in replies[-1]["blocks"][0]["elements"][0]["text"]


def test_per_record_long_records_are_clipped_and_a_flood_is_capped():
    long_records = ["L" * 5000, *("M" * 2990 for _ in range(30)), "short"]
    messages = build_messages(SlackRoute(channel="#p", verbosity="per_record"), alert(records=long_records))
    assert [limit_problems(m) for m in messages] == [[]] * len(messages)
    sections = [b["text"]["text"] for m in messages[1:] for b in m["blocks"] if b["type"] == "section"]
    assert sections[0].endswith("…") and sections[-1].endswith("• short")

    flood = [f"SKU-{i}" for i in range(100_000)]
    messages = build_messages(SlackRoute(channel="#p", verbosity="per_record"), alert(records=flood))
    assert len(messages) == 1 + slack.MAX_RECORD_REPLIES + 1
    assert "more records" in messages[-1]["text"] and [limit_problems(m) for m in messages] == [[]] * len(messages)


def test_summary_verbosity_never_threads():
    messages = build_messages(SlackRoute(channel="#p"), alert(records=[f"r{i}" for i in range(500)]))
    assert len(messages) == 1 and "and 495 more" in json.dumps(messages[0]["blocks"])


# ---------------------------------------------------------------------------------------------- delivery
def test_notify_posts_to_every_matching_route_as_the_contract_says(fake_slack):
    spec = NotificationsSpec(slack=[SlackRoute(channel="#products", catalogues=["products"]),
                                    SlackRoute(channel="C0123456789", events=["run.failed"]),
                                    SlackRoute(channel="#suppliers", catalogues=["suppliers"])])
    report = notifier(fake_slack.base_url).notify(spec, alert())
    assert report.ok and report.channels == ["#products", "C0123456789"]
    posts = fake_slack.posts()
    assert [p.json()["channel"] for p in posts] == ["#products", "C0123456789"]
    assert all(p.headers["Authorization"] == "Bearer xoxb-test-token" for p in posts)
    assert [d.ts for d in report.delivered] == [f"{1764300000 + n}.{n:06d}" for n in (1, 2)]
    assert "2 message(s) posted" in report.summary()


def test_per_record_replies_are_threaded_under_the_summary(fake_slack):
    records = [f"SKU-{i:05d}: weight 'heavy' is not a number" for i in range(500)]
    spec = NotificationsSpec(slack=[SlackRoute(channel="#p", verbosity="per_record"),
                                    SlackRoute(channel="#s")])
    report = notifier(fake_slack.base_url).notify(spec, alert(records=records))
    assert report.ok
    posts = fake_slack.posts()
    to_p = [p.json() for p in posts if p.json()["channel"] == "#p"]
    to_s = [p.json() for p in posts if p.json()["channel"] == "#s"]
    assert len(to_s) == 1 and "thread_ts" not in to_s[0]
    parent_ts = report.delivered[0].ts
    assert "thread_ts" not in to_p[0] and len(to_p) >= 3
    assert {p["thread_ts"] for p in to_p[1:]} == {parent_ts}
    listed = [line[2:] for p in to_p[1:] for b in p["blocks"] if b["type"] == "section"
              for line in b["text"]["text"].split("\n")]
    assert listed == records


def test_a_429_is_retried_after_retry_after(fake_slack):
    # slack-limits.json rate_limits.when_exceeded: HTTP 429, `Retry-After: <seconds>` and
    # {"ok": false, "error": "ratelimited"}
    fake_slack.answer((429, {"Retry-After": "1"}, {"ok": False, "error": "ratelimited"}))
    report = notifier(fake_slack.base_url).notify(
        NotificationsSpec(slack=[SlackRoute(channel="#p")]), alert())
    assert report.ok and len(report.delivered) == 1
    first, second = fake_slack.posts()
    assert first.body == second.body
    assert second.received_at - first.received_at >= 1.0  # measured by the server, not slept by the test


def test_rate_limited_beyond_the_retries_is_reported_not_raised(fake_slack, caplog):
    fake_slack.answer(*[(429, {"Retry-After": "0"}, {"ok": False, "error": "ratelimited"})] * 2)
    report = notifier(fake_slack.base_url, rate_limit_retries=1).notify(
        NotificationsSpec(slack=[SlackRoute(channel="#p")]), alert())
    assert not report.ok and [d.error for d in report.failed] == ["ratelimited"]
    assert len(fake_slack.posts()) == 2


@pytest.mark.parametrize("trouble", ["connection refused", "HTTP 503", "invalid_auth", "channel_not_found"])
def test_slack_being_down_is_logged_and_reported_never_raised(trouble, fake_slack, closed_port, caplog):
    spec = NotificationsSpec(slack=[SlackRoute(channel="#p", verbosity="per_record"), SlackRoute(channel="#q")])
    base_url = fake_slack.base_url
    if trouble == "connection refused":
        base_url = f"http://127.0.0.1:{closed_port}/api/"
    elif trouble == "HTTP 503":
        # what a load balancer in front of Slack answers: an HTML page, not JSON
        fake_slack.answer(*[(503, {"Content-Type": "text/html"}, b"<html>503 Service Unavailable</html>")] * 2)
    elif trouble == "invalid_auth":
        fake_slack.answer((200, {}, {"ok": False, "error": "invalid_auth"}))
    else:
        fake_slack.channel_errors["#p"] = "channel_not_found"
    with caplog.at_level(logging.WARNING, logger="claro_dagster.resources.slack"):
        report = notifier(base_url).notify(spec, alert(records=["SKU-1", "SKU-2"]))
    assert not report.ok
    assert "could not post" in caplog.text and "#p" in caplog.text
    first_error = report.failed[0].error
    if trouble == "connection refused":
        # Slack unreachable: one attempt plus one retry, then nothing more is tried.
        assert first_error == "connection" and report.skipped == 2 and len(report.failed) == 1
    elif trouble == "HTTP 503":
        # retried once (503 is retryable); the thread cannot follow a summary that never arrived
        assert first_error == "http_503" and len(fake_slack.posts()) == 3
        assert [d.channel for d in report.delivered] == ["#q"] and report.skipped == 1
    elif trouble == "invalid_auth":
        # a bad token fails every call: stop after the first
        assert first_error == "invalid_auth" and len(fake_slack.posts()) == 1 and report.skipped == 2
        assert "check the bot token" in caplog.text
    else:
        # one archived or unknown channel does not keep the alert from the others
        assert first_error == "channel_not_found" and [d.channel for d in report.delivered] == ["#q"]
    assert first_error in report.summary()


def test_in_a_dagster_run_the_token_comes_from_the_env_var_and_slack_trouble_does_not_fail_it(
        fake_slack, closed_port, monkeypatch):
    monkeypatch.setenv("CLARO_TEST_SLACK_TOKEN", "xoxb-from-env")
    spec = NotificationsSpec(slack_token_env="CLARO_TEST_SLACK_TOKEN", slack=[SlackRoute(channel="#p")])
    reports: list[slack.NotifyReport] = []

    @dg.asset
    def validated(slack: SlackNotifier) -> None:
        reports.append(slack.notify(spec, alert()))

    for base_url in (fake_slack.base_url, f"http://127.0.0.1:{closed_port}/api/"):
        resource = SlackNotifier(token=dg.EnvVar(spec.slack_token_env), base_url=base_url)
        result = dg.materialize([validated], resources={"slack": resource})
        assert result.success
    assert [r.ok for r in reports] == [True, False]
    [post] = fake_slack.posts()
    assert post.headers["Authorization"] == "Bearer xoxb-from-env"


# ---------------------------------------------------------------------------------- notifications.slack_api_url
def test_the_code_location_sends_alerts_to_the_specs_slack_api_url(fake_slack, tmp_path, monkeypatch):
    """`notifications.slack_api_url` (a Slack-compatible gateway, here a local server) is where the code
    location's Slack resource posts; without it, Slack's own API."""
    from claro_dagster.definitions import build_definitions

    monkeypatch.setenv("CLARO_TEST_SLACK_TOKEN", "xoxb-from-env")
    spec_path = tmp_path / "claro.yaml"
    text = ("catalogues:\n  products: {key: sku, attributes: {sku: {type: text}}}\n"
            "notifications:\n  slack_token_env: CLARO_TEST_SLACK_TOKEN\n  slack: [{channel: '#p'}]\n")
    spec_path.write_text(text + f"  slack_api_url: {fake_slack.url}/api\n")
    defs = build_definitions(spec_path, tmp_path / "home")
    resource = defs.resources["slack"]
    assert resource.base_url == fake_slack.base_url
    report = resource.notify(load_spec(spec_path).notifications, alert())
    assert report.ok and [p.json()["channel"] for p in fake_slack.posts()] == ["#p"]
    spec_path.write_text(text)
    assert build_definitions(spec_path, tmp_path / "home").resources["slack"].base_url == "https://slack.com/api/"
