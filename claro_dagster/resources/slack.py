"""Slack alerts: which channels hear about an event (routing), what they read (verbosity), delivery.

The spec's `notifications.slack` is a list of routes. A route matches an alert when each of its
non-empty lists (`catalogues`, `operations`, `pipelines`, `events`) contains the alert's value; an
empty list matches anything. `events` entries may be shell-style patterns (`change.*`).

A `summary` route gets one message: a header, the catalogue/operation/stage, the error, the counts
and a button to the run in the Dagster UI. A `per_record` route gets the same message plus threaded
replies that list the affected records, split to stay inside Slack's message limits.

Delivery never raises: a catalogue run must not fail because Slack is down, the token was revoked or
a channel was archived. Every failure is logged and returned in the `NotifyReport`.

Limits used below come from `tests/contracts/slack/slack-limits.json` (compiled from Slack's Block
Kit reference and the chat.postMessage docs); `tests/resources/test_slack.py` checks the constants
against that file.

Retries use slack_sdk's own handlers (429 with Retry-After, connection errors, 500/503) rather than
the project's shared HTTP layer: slack_sdk's WebClient does its own HTTP, and its handlers implement
Slack's documented rate-limit behaviour exactly.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from claro_dagster.spec.checks import ALERT_EVENTS
from claro_dagster.spec.models import NotificationsSpec, SlackRoute

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- limits
# slack-limits.json block_kit.max_blocks_per_message: "up to 50 blocks in each message".
MAX_BLOCKS = 50
# slack-limits.json block_kit["section.text_max_chars"]: a section's text is at most 3000 characters.
SECTION_TEXT_MAX = 3000
# slack-limits.json block_kit["section.fields_max_items"] / ["section.fields_item_max_chars"].
SECTION_FIELDS_MAX = 10
SECTION_FIELD_MAX = 2000
# slack-limits.json block_kit.observed_aggregate_limit: Slack answered `msg_blocks_too_long` at about
# 13,200 characters of block text although every block was within its own limit; the documented
# markdown-block limit is 12,000. Keep each message's block text at or under 12,000.
MESSAGE_BLOCK_CHARS_MAX = 12_000
# slack-limits.json chat.postMessage.text_truncation: text above 40,000 characters is truncated;
# text_recommended_max: Slack recommends at most 4,000. The fallback `text` stays under the latter.
TEXT_TRUNCATED_ABOVE = 40_000
TEXT_RECOMMENDED_MAX = 4000
# Block Kit reference (header block and button element; not in slack-limits.json): a header's
# plain text is at most 150 characters, a button's text 75 and its URL 3000.
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
BUTTON_URL_MAX = 3000
# Our own cap, not Slack's: chat.postMessage allows about one message per second per channel
# (slack-limits.json rate_limits), so a run with 100k bad rows must not post for minutes. Records
# beyond this many replies are counted, not listed; the run in the Dagster UI has them all.
MAX_RECORD_REPLIES = 20

# ---------------------------------------------------------------------------------------------- events
#: The alerts a route's `events` can name (the spec check refuses others): `spec.checks.ALERT_EVENTS`.
EVENTS: tuple[str, ...] = ALERT_EVENTS
_ICONS = {"run.failed": ":red_circle:", "batch.halted": ":octagonal_sign:",
          "run.completed": ":white_check_mark:", "review.queued": ":eyes:", "push.failed": ":no_entry:",
          "mail.quarantined": ":incoming_envelope:",
          "monitor.drift": ":chart_with_downwards_trend:", "batch.stuck": ":hourglass:"}

# Errors after which no further message can succeed (bad token, Slack unreachable): stop posting.
_FATAL_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                           "no_permission", "missing_scope", "connection"})
# Errors that concern one channel only: stop posting to that route, carry on with the others.
_CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived", "restricted_action"})
# What to do next, for the errors a catalogue team can fix themselves.
_HINTS = {
    "invalid_auth": "check the bot token in the variable named by notifications.slack_token_env",
    "not_authed": "the bot token is empty: set the variable named by notifications.slack_token_env",
    "token_revoked": "the bot token was revoked: reinstall the Slack app and update the token",
    "missing_scope": "give the Slack app the chat:write scope and reinstall it",
    "channel_not_found": "check the channel in notifications.slack (a private channel needs the app invited)",
    "not_in_channel": "invite the app to the channel (/invite @<app name>)",
    "is_archived": "the channel is archived: unarchive it or route to another channel",
    "connection": "Slack's API could not be reached; check the network or the base_url",
}


@dataclass
class Alert:
    """Something a catalogue team should hear about: a failed or finished run, a halted batch, ..."""

    event: str
    title: str
    catalogue: str | None = None
    operation: str | None = None
    pipeline: str | None = None
    source: str | None = None
    stage: str | None = None
    run_id: str | None = None
    batch: str | None = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    records: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    """One chat.postMessage attempt: where, whether it arrived, and Slack's `ts` or the error."""

    channel: str
    ok: bool
    ts: str | None = None
    thread_ts: str | None = None
    error: str | None = None


@dataclass
class NotifyReport:
    """What `SlackNotifier.notify` did. `ok` is False when any message was not delivered."""

    event: str
    channels: list[str] = field(default_factory=list)
    delivered: list[Delivery] = field(default_factory=list)
    failed: list[Delivery] = field(default_factory=list)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped

    def summary(self) -> str:
        if not self.channels:
            return f"{self.event}: no Slack route matches"
        text = f"{self.event}: {len(self.delivered)} message(s) posted to {', '.join(self.channels)}"
        if self.failed:
            errors = sorted({f"{d.channel}: {d.error}" for d in self.failed})
            text += f"; {len(self.failed)} failed ({'; '.join(errors)})"
        if self.skipped:
            text += f"; {self.skipped} not attempted after an earlier failure"
        return text


# ---------------------------------------------------------------------------------------------- routing
def _matches(allowed: Iterable[str], value: str | None, *, patterns: bool = False) -> bool:
    allowed = list(allowed)
    if not allowed:
        return True
    if value is None:
        return False
    if patterns:
        return any(fnmatch.fnmatchcase(value, p) for p in allowed)
    return value in allowed


def routes_for(notifications: NotificationsSpec, *, event: str, catalogue: str | None = None,
               operation: str | None = None, pipeline: str | None = None,
               source: str | None = None) -> list[SlackRoute]:
    """The routes that want this event: each non-empty list of a route must contain the value."""
    return [
        route for route in notifications.slack
        if _matches(route.events, event, patterns=True)
        and _matches(route.catalogues, catalogue)
        and _matches(route.operations, operation)
        and _matches(route.pipelines, pipeline)
        and _matches(route.sources, source)
    ]


# ---------------------------------------------------------------------------------------------- messages
def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(alert: Alert) -> str:
    parts = [p for p in (alert.catalogue, alert.operation or alert.pipeline) if p]
    where = "/".join(parts)
    if alert.stage:
        where += f" [{alert.stage}]" if where else alert.stage
    return where


def run_url(webserver_url: str, run_id: str) -> str:
    return f"{webserver_url.rstrip('/')}/runs/{run_id}"


def _summary_message(route: SlackRoute, alert: Alert, webserver_url: str) -> dict[str, Any]:
    icon = _ICONS.get(alert.event, ":information_source:")
    where = _where(alert)
    fallback = f"{alert.title}" + (f" — {where}" if where else "")
    if alert.run_id:
        fallback += f" (run {alert.run_id[:8]})"
    if alert.error and alert.error.strip():
        fallback += f": {alert.error.strip().splitlines()[0]}"

    header = clip(f"{icon} {alert.title}", HEADER_TEXT_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}]
    facts = [("Catalogue", alert.catalogue), ("Operation", alert.operation), ("Stage", alert.stage),
             ("Pipeline", alert.pipeline), ("Batch", alert.batch), ("Event", alert.event)]
    fields = [{"type": "mrkdwn", "text": clip(f"*{label}*\n{escape(value)}", SECTION_FIELD_MAX)}
              for label, value in facts if value][:SECTION_FIELDS_MAX]
    blocks.append({"type": "section", "fields": fields})
    if alert.error:
        # Inside a code fence the error keeps its line breaks and indentation (tracebacks).
        head, tail = "*Error*\n```", "```"
        body = clip(escape(alert.error.strip()), SECTION_TEXT_MAX - len(head) - len(tail))
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": head + body + tail}})
    if alert.counts:
        counts = " · ".join(f"{escape(str(k))}: *{v:,}*" if isinstance(v, int) else f"{escape(str(k))}: *{v}*"
                            for k, v in alert.counts.items())
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": clip(counts, SECTION_TEXT_MAX)}})
    if alert.records:
        n = len(alert.records)
        if route.verbosity == "per_record":
            note = f"{n:,} affected record{'s' if n != 1 else ''}: listed in this thread."
        else:
            shown = ", ".join(f"`{escape(clip(r, 80))}`" for r in alert.records[:5])
            note = f"{n:,} affected record{'s' if n != 1 else ''}: {shown}" + (
                f" and {n - 5:,} more" if n > 5 else "")
        note = clip(note, SECTION_TEXT_MAX)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    if alert.run_id:
        url = run_url(webserver_url, alert.run_id)
        if len(url) <= BUTTON_URL_MAX:
            blocks.append({"type": "actions", "elements": [{
                "type": "button", "action_id": "open_run", "url": url,
                "text": {"type": "plain_text", "text": clip("Open the run in Dagster", BUTTON_TEXT_MAX)}}]})
    # `text` is the notification (and screen-reader) fallback; Slack parses it as mrkdwn too.
    return {"channel": route.channel, "text": clip(escape(fallback), TEXT_RECOMMENDED_MAX), "blocks": blocks,
            "unfurl_links": False, "unfurl_media": False}


def _record_sections(records: list[str]) -> list[tuple[int, int, str]]:
    """(first, last, text) sections of bullet lines, each section within SECTION_TEXT_MAX."""
    sections: list[tuple[int, int, str]] = []
    lines: list[str] = []
    size = 0
    first = 0
    for i, record in enumerate(records):
        line = clip(f"• {escape(str(record))}", SECTION_TEXT_MAX)
        if lines and size + 1 + len(line) > SECTION_TEXT_MAX:
            sections.append((first, i - 1, "\n".join(lines)))
            lines, size, first = [], 0, i
        size += len(line) + (1 if lines else 0)
        lines.append(line)
    if lines:
        sections.append((first, len(records) - 1, "\n".join(lines)))
    return sections


def _record_replies(route: SlackRoute, alert: Alert) -> list[dict[str, Any]]:
    n = len(alert.records)
    where = _where(alert)
    groups: list[list[tuple[int, int, str]]] = []
    current: list[tuple[int, int, str]] = []
    chars = 0
    # One context block per reply ("Records a-b of n") uses a block and up to ~60 characters.
    reserve_blocks, reserve_chars = 1, 100
    for section in _record_sections(alert.records):
        if current and (len(current) + 1 + reserve_blocks > MAX_BLOCKS
                        or chars + len(section[2]) + reserve_chars > MESSAGE_BLOCK_CHARS_MAX):
            groups.append(current)
            current, chars = [], 0
        current.append(section)
        chars += len(section[2])
    if current:
        groups.append(current)

    replies = []
    for group in groups[:MAX_RECORD_REPLIES]:
        first, last = group[0][0] + 1, group[-1][1] + 1
        label = f"Records {first:,}–{last:,} of {n:,}" + (f" · {escape(where)}" if where else "")
        blocks: list[dict[str, Any]] = [{"type": "context", "elements": [{"type": "mrkdwn", "text": label}]}]
        blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": text}} for _, _, text in group]
        text = clip(escape(f"{alert.title}: records {first:,}–{last:,} of {n:,}"), TEXT_RECOMMENDED_MAX)
        replies.append({"channel": route.channel, "thread_ts": None, "text": text, "blocks": blocks,
                        "unfurl_links": False, "unfurl_media": False})
    if len(groups) > MAX_RECORD_REPLIES:
        listed = groups[MAX_RECORD_REPLIES - 1][-1][1] + 1
        text = (f"… and {n - listed:,} more records, not listed here to keep the channel readable: "
                "open the run in Dagster for all of them.")
        replies.append({"channel": route.channel, "thread_ts": None, "text": text,
                        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                        "unfurl_links": False, "unfurl_media": False})
    return replies


def build_messages(route: SlackRoute, alert: Alert, *,
                   webserver_url: str = "http://127.0.0.1:3000") -> list[dict[str, Any]]:
    """chat.postMessage payloads for one route: the summary first, then (per_record) threaded replies.

    Replies carry `"thread_ts": None`, to be filled with the summary's `ts` when it has been posted.
    Every payload stays within Slack's limits (blocks per message, section text, aggregate text).
    """
    messages = [_summary_message(route, alert, webserver_url)]
    if route.verbosity == "per_record" and alert.records:
        messages += _record_replies(route, alert)
    return messages


# ---------------------------------------------------------------------------------------------- delivery
def _slack_error(exc: Exception) -> str:
    """A short name for what went wrong: Slack's error code, the HTTP status, or `connection`."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = getattr(response, "status_code", None)
        data = getattr(response, "data", None)
        if isinstance(status, int) and status >= 500:  # often an HTML page from a proxy, not Slack's JSON
            return f"http_{status}"
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        return f"http_{status}"
    if isinstance(exc, OSError):  # URLError, ConnectionRefusedError, timeouts
        return "connection"
    return type(exc).__name__


class SlackNotifier(dg.ConfigurableResource):
    """Posts alerts to the Slack channels the spec routes them to; never raises on delivery."""

    token: str = Field(description="Slack bot token (xoxb-...); pass dg.EnvVar(spec.slack_token_env)")
    base_url: str = Field(default="https://slack.com/api/", description="Slack Web API base URL")
    webserver_url: str = Field(default="http://127.0.0.1:3000",
                                  description="Dagster UI base URL, for links to runs")
    timeout_seconds: int = Field(default=10, description="per request")
    rate_limit_retries: int = Field(default=3, description="retries after HTTP 429 (each waits Retry-After)")
    connection_retries: int = Field(default=1, description="retries after a connection error or HTTP 500/503")

    def client(self) -> WebClient:
        """A WebClient against `base_url` that honours 429 Retry-After and retries connection errors."""
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return WebClient(token=self.token, base_url=base, timeout=self.timeout_seconds, retry_handlers=[
            RateLimitErrorRetryHandler(max_retry_count=self.rate_limit_retries),
            ConnectionErrorRetryHandler(max_retry_count=self.connection_retries),
            ServerErrorRetryHandler(max_retry_count=self.connection_retries),
        ])

    def notify(self, spec: NotificationsSpec, alert: Alert) -> NotifyReport:
        """Send `alert` to every matching route. Failures are logged and reported, never raised."""
        report = NotifyReport(event=alert.event)
        try:
            routes = routes_for(spec, event=alert.event, catalogue=alert.catalogue, operation=alert.operation,
                                pipeline=alert.pipeline, source=alert.source)
            plans = [(route, build_messages(route, alert, webserver_url=self.webserver_url))
                     for route in routes]
            client = self.client()
        except Exception as exc:  # a bug here must still not fail the catalogue run
            log.exception("Slack: could not prepare %s alert %r", alert.event, alert.title)
            report.failed.append(Delivery("*", False, error=f"{type(exc).__name__}: {exc}"))
            return report
        report.channels = [route.channel for route, _ in plans]

        stop_all = False
        for route, messages in plans:
            parent_ts: str | None = None
            for i, payload in enumerate(messages):
                if stop_all or (i > 0 and parent_ts is None):
                    report.skipped += len(messages) - i
                    break
                if i > 0:
                    payload = {**payload, "thread_ts": parent_ts}
                try:
                    response = client.chat_postMessage(**payload)
                    ts = response.get("ts")
                except Exception as exc:  # SlackApiError, URLError, timeouts: Slack's trouble, not the run's
                    error = _slack_error(exc)
                    hint = f" ({_HINTS[error]})" if error in _HINTS else ""
                    log.warning("Slack: could not post the %s alert %r to %s: %s%s. %s",
                                alert.event, alert.title, route.channel, error, hint, exc)
                    report.failed.append(Delivery(route.channel, False, thread_ts=payload.get("thread_ts"),
                                                  error=error))
                    if error in _FATAL_ERRORS:
                        stop_all = True
                    if error in _FATAL_ERRORS or error in _CHANNEL_ERRORS:
                        report.skipped += len(messages) - i - 1
                        break
                    continue
                if i == 0:
                    parent_ts = ts
                report.delivered.append(Delivery(route.channel, True, ts=ts,
                                                 thread_ts=payload.get("thread_ts")))
        if report.failed:
            log.warning("Slack: %s", report.summary())
        return report
