"""The Slack slash command (`/claro run|status|review|help`): request verification and the commands.

Verification follows Slack's "Verifying requests from Slack": `X-Slack-Signature` is `v0=` plus the
hex HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{raw body}` keyed with the app's signing secret.
A request is refused when the signature is wrong, when its timestamp is more than 5 minutes away
from now, or when the same signature was already accepted within that window (a replay). The
replay memory lives in this process: run one web process, or put a shared store behind
`ReplayGuard` if you run several.

Who may use which command is in the spec (`notifications.slack_commands`: Slack user ids, user-group
ids or "*" per command; `help` is open to all). Anyone else gets a polite ephemeral refusal naming the
setting, and the refusal is logged with the user's id. User-group members are looked up with Slack's
`usergroups.users.list` (the bot token of `notifications.slack_token_env`, scope `usergroups:read`)
and kept for a minute; when the lookup fails, the user is refused (and told why).

Slack shows "operation_timeout" unless the command is answered within 3 seconds. Every command
therefore runs on a worker thread and the request waits at most `ack_budget_seconds` (default 2 s)
for it. A command that finishes in time is answered directly; a slower one (a launch while the
Dagster webserver is busy, a large review queue) is answered with a short "working on it" and its
real answer is posted to the command's `response_url` when it is ready (Slack accepts those for
30 minutes).
"""

from __future__ import annotations

import concurrent.futures
import html
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.webhook import WebhookClient

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.filters import FilterError, compile_filter
from claro_dagster.catalogue.outbox import recent_runs
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.schema import filter_columns
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.dagster_api import DBT_BUILD_JOB as DBT_BUILD
from claro_dagster.resources.dagster_api import WebserverUnreachable
from claro_dagster.spec.checks import SCHEDULABLE_OPERATIONS, unknown
from claro_dagster.spec.models import ProjectSpec

log = logging.getLogger(__name__)

# Slack's documented window: reject requests whose timestamp is more than 5 minutes from now.
REPLAY_WINDOW_SECONDS = 300
# Slack waits 3 s for the answer; keep a margin for the network and the signature check.
DEFAULT_ACK_BUDGET_SECONDS = 2.0
SLACK_API_URL = "https://slack.com/api/"
# How long a user group's members are trusted before they are looked up again.
GROUP_MEMBERS_TTL_SECONDS = 60.0
#: The commands the spec grants (`notifications.slack_commands.<command>`); `help` needs no grant.
GRANTED_COMMANDS: tuple[str, ...] = ("run", "status", "review")
STATUS_RUNS = 5  # runs and batches `/claro status` lists
STATUS_BATCHES = 5


class Launcher(Protocol):
    """Starts and reports Dagster runs (the lead implements it with Dagster's GraphQL client)."""

    def launch(self, catalogue: str, target: str, filter: str | None) -> str:
        """Submit a run of `target` (an operation or a pipeline) on `catalogue`; return the run id."""
        ...

    def status(self, ref: str | None) -> str:
        """Human-readable status of a run id or a batch (recent runs when `ref` is None).

        Every method raises `WebserverUnreachable` when Dagster's webserver does not answer."""
        ...

    def has_job(self, name: str) -> bool:
        """Whether the code location has the job `name` (`dbt_build` exists only with a dbt project)."""
        ...


SpecLoader = Callable[[], ProjectSpec]
StoreFactory = Callable[[ProjectSpec], CatalogueStore]


@dataclass(frozen=True)
class SlackReply:
    """The JSON a slash command answers with (also what a follow-up posts to `response_url`)."""

    text: str
    response_type: Literal["ephemeral", "in_channel"] = "ephemeral"

    def as_json(self) -> dict[str, Any]:
        return {"response_type": self.response_type, "text": self.text}


# ---------------------------------------------------------------------------------------- verification
class _FunctionClock(Clock):
    def __init__(self, now: Callable[[], float]):
        self._now = now

    def now(self) -> float:
        return self._now()


class ReplayGuard:
    """Signatures accepted within the replay window; a second request with one of them is a replay."""

    def __init__(self, window_seconds: int = REPLAY_WINDOW_SECONDS):
        self.window = window_seconds
        self._seen: dict[str, float] = {}  # signature -> time after which it can no longer be replayed
        self._lock = threading.Lock()

    def first_time(self, signature: str, timestamp: int, now: float) -> bool:
        """Remember `signature`; False when it was already seen (the request is a replay)."""
        with self._lock:
            for sig in [s for s, until in self._seen.items() if until < now]:
                del self._seen[sig]
            if signature in self._seen:
                return False
            # After timestamp + window the request is refused as stale anyway, so it may be forgotten.
            self._seen[signature] = timestamp + self.window
            return True


class SlackRequestVerifier:
    """Checks Slack's request signature, the timestamp window and replays (slack_sdk does the HMAC)."""

    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time,
                 window_seconds: int = REPLAY_WINDOW_SECONDS):
        self.clock = clock
        self.window = window_seconds
        self._verifier = SignatureVerifier(signing_secret, clock=_FunctionClock(clock))
        self.replays = ReplayGuard(window_seconds)

    def problem(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """None when the request is authentic and new, else why it is refused."""
        lower = {k.lower(): v for k, v in headers.items()}
        timestamp, signature = lower.get("x-slack-request-timestamp"), lower.get("x-slack-signature")
        if not timestamp or not signature:
            return "missing X-Slack-Request-Timestamp or X-Slack-Signature header"
        try:
            ts = int(timestamp)
        except ValueError:
            return "X-Slack-Request-Timestamp is not a Unix time"
        now = self.clock()
        if abs(now - ts) > self.window:
            return "stale request: its timestamp is more than 5 minutes from now"
        if not self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
            return "invalid signature"
        if not self.replays.first_time(signature, ts, now):
            return "replayed request: this signature was already used"
        return None


# ---------------------------------------------------------------------------------------- who may
class GroupLookupError(Exception):
    """The members of a Slack user group could not be read (no token, Slack down, missing scope)."""


class SlackUserGroups:
    """Members of Slack user groups, via `usergroups.users.list`, each kept for `ttl_seconds`."""

    def __init__(self, token: Callable[[], str | None], *, base_url: str | Callable[[], str] = SLACK_API_URL,
                 ttl_seconds: float = GROUP_MEMBERS_TTL_SECONDS, timeout_seconds: int = 5,
                 clock: Callable[[], float] = time.monotonic):
        self.token = token
        self._base_url = base_url  # or a callable: the spec's `notifications.slack_api_url`, read when used
        self.ttl = ttl_seconds
        self.timeout = timeout_seconds
        self.clock = clock
        self._members: dict[str, tuple[float, frozenset[str]]] = {}  # group id -> (fetched at, user ids)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        url = self._base_url() if callable(self._base_url) else self._base_url
        return url if url.endswith("/") else url + "/"

    def members(self, group_id: str) -> frozenset[str]:
        now = self.clock()
        with self._lock:
            cached = self._members.get(group_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        token = self.token()
        if not token:
            raise GroupLookupError("no Slack bot token is set (notifications.slack_token_env)")
        client = WebClient(token=token, base_url=self.base_url, timeout=self.timeout,
                           retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1),
                                           ConnectionErrorRetryHandler(max_retry_count=1)])
        try:
            users = frozenset(client.usergroups_users_list(usergroup=group_id).get("users") or ())
        except SlackApiError as exc:  # missing_scope, no_such_subteam, invalid_auth, ...
            raise GroupLookupError(f"Slack did not list the members of {group_id}: "
                                   f"{exc.response.get('error')}") from exc
        except Exception as exc:  # connection errors, timeouts
            raise GroupLookupError(f"Slack did not answer for {group_id}: {type(exc).__name__}") from exc
        with self._lock:
            self._members[group_id] = (now, users)
        return users


def permitted(granted: list[str], user_id: str, groups: SlackUserGroups | None) -> tuple[bool, str | None]:
    """(may the user use the command?, why the groups could not be checked). User ids and "*" are checked
    first, so a user named directly never waits for Slack."""
    if not user_id:
        return False, None
    if "*" in granted or user_id in granted:
        return True, None
    problem = None
    for group in (g for g in granted if g.startswith("S")):
        if groups is None:
            problem = "user groups cannot be looked up here"
            continue
        try:
            if user_id in groups.members(group):
                return True, None
        except GroupLookupError as exc:
            log.warning("Slack command access: %s", exc)
            problem = str(exc)
    return False, problem


# ---------------------------------------------------------------------------------------- commands
def _clean_text(text: str) -> str:
    """Undo what Slack does to command text: HTML escapes (&lt; &gt; &amp;) and smart quotes."""
    text = html.unescape(text)
    return text.translate(str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'"})).strip()


def run_targets(spec: ProjectSpec, catalogue: str, *, dbt: bool = False) -> list[str]:
    """What `run <catalogue> ...` accepts: the catalogue's pipelines, then its operations and destinations, and
    `dbt_build` when the code location has that job (`dbt`: its dbt models over the catalogues, tests as checks)."""
    pipelines = [name for name, p in spec.pipelines.items() if p.catalogue == catalogue]
    destinations = [name for name, d in spec.destinations.items() if d.catalogue == catalogue]
    return [*pipelines, *SCHEDULABLE_OPERATIONS, *destinations, *([DBT_BUILD] if dbt else [])]


def _first_line(text: str | None, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _link(url: str, label: str) -> str:
    return f"<{url}|{label}>"


class SlackCommands:
    """Parses a slash command and answers it within Slack's 3-second budget."""

    def __init__(self, spec_loader: SpecLoader, store_factory: StoreFactory, launcher: Launcher, *,
                 webserver_url: str = "http://127.0.0.1:3000", review_url: str | None = None,
                 ack_budget_seconds: float = DEFAULT_ACK_BUDGET_SECONDS,
                 post_followup: Callable[[str, SlackReply], None] | None = None, max_workers: int = 4,
                 groups: SlackUserGroups | None = None):
        self.spec_loader = spec_loader
        self.groups = groups
        self.store_factory = store_factory
        self.launcher = launcher
        self.webserver_url = webserver_url.rstrip("/")
        self.review_url = review_url
        self.ack_budget_seconds = ack_budget_seconds
        self.post_followup = post_followup or post_to_response_url
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="slack-command")

    def close(self) -> None:
        """Stop taking work; commands already running finish and post their follow-ups."""
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ answering within the budget
    def respond(self, form: Mapping[str, str], *, base_url: str = "") -> SlackReply:
        """The answer to one command, within `ack_budget_seconds`; a late answer goes to `response_url`."""
        future = self._executor.submit(self.handle, form, base_url=base_url)
        try:
            return future.result(timeout=self.ack_budget_seconds)
        except concurrent.futures.TimeoutError:
            pass
        response_url = form.get("response_url")
        future.add_done_callback(lambda f: self._follow_up(response_url, f))
        return SlackReply(self._interim(form))

    def _follow_up(self, response_url: str | None, future: concurrent.futures.Future) -> None:
        try:
            reply = future.result()
        except Exception as exc:  # handle() answers errors itself; this is a last resort
            reply = SlackReply(f"Sorry, that failed: {exc}")
        if not response_url:
            log.warning("Slack command answered late but has no response_url; answer was: %s", reply.text)
            return
        try:
            self.post_followup(response_url, reply)
        except Exception:
            log.exception("Slack: could not post the late answer to response_url")

    def _interim(self, form: Mapping[str, str]) -> str:
        words = _clean_text(form.get("text", "")).split()
        # Promise a launch only to a user the spec names directly: a group member may still be refused.
        named = set(self.spec_loader().notifications.slack_commands.run) & {"*", form.get("user_id") or "-"}
        if len(words) >= 3 and words[0].lower() == "run" and named:
            return (f"Launching `{words[2]}` on `{words[1]}`… Dagster is taking a moment; "
                    "the run id and link follow here.")
        return "Working on it… the answer follows here in a moment."

    # ------------------------------------------------------------------ the commands
    def handle(self, form: Mapping[str, str], *, base_url: str = "") -> SlackReply:
        """Answer one command (may block: it runs on a worker thread)."""
        text = _clean_text(form.get("text", ""))
        command = form.get("command") or "/claro"
        words = text.split(None, 1)
        verb = words[0].lower() if words else "help"
        rest = words[1] if len(words) > 1 else ""
        try:
            if verb in GRANTED_COMMANDS and (refusal := self._refusal(verb, form, command, text)):
                return refusal
            if verb == "run":
                return self._run(rest, command)
            if verb == "status":
                return self._status(rest.strip() or None)
            if verb == "review":
                return self._review(base_url)
            if verb == "help":
                return SlackReply(self.usage(command))
        except Exception as exc:
            log.exception("Slack command %r failed", text)
            return SlackReply(f"Sorry, `{command} {text}` failed: {exc}")
        return SlackReply(f"I don't know the command `{verb}`.\n{self.usage(command)}")

    def _refusal(self, verb: str, form: Mapping[str, str], command: str, text: str) -> SlackReply | None:
        """None when the spec lets the user use `verb`; else a polite answer only they see (and a log line)."""
        user_id = form.get("user_id", "")
        granted = list(getattr(self.spec_loader().notifications.slack_commands, verb))
        allowed, problem = permitted(granted, user_id, self.groups)
        if allowed:
            return None
        log.warning("Slack command refused: user %s (%s, team %s) may not use %r; asked %r", user_id or "?",
                    form.get("user_name", "?"), form.get("team_id", "?"), verb, f"{command} {text}")
        why = f" (I could not check your user groups: {problem})" if problem else ""
        return SlackReply(f"Sorry, you are not allowed to use `{command} {verb}` here{why}. If you need it, ask "
                          f"whoever looks after claro.yaml to add your Slack user id (`{user_id}`) or one of your "
                          f"user groups to `notifications.slack_commands.{verb}`.")

    @staticmethod
    def usage(command: str = "/claro") -> str:
        return "\n".join([
            f"*{command}* commands:",
            f"• `{command} run <catalogue> <operation|pipeline> [filter]`: start a run, e.g. "
            f"`{command} run products export status == \"active\"`",
            f"• `{command} status [run id|batch]`: how a run or batch is doing (recent runs without an argument)",
            f"• `{command} review`: changes waiting for review, per catalogue",
            f"• `{command} help`: this list",
        ])

    def _run(self, rest: str, command: str) -> SlackReply:
        spec = self.spec_loader()
        parts = rest.split(None, 2)
        catalogues = list(spec.catalogues)
        if len(parts) < 2:
            return SlackReply(f"Usage: `{command} run <catalogue> <operation|pipeline> [filter]`. "
                              f"Catalogues: {', '.join(catalogues)}.")
        catalogue, target = parts[0], parts[1]
        filter_text = parts[2].strip() if len(parts) > 2 else None
        if catalogue not in spec.catalogues:
            return SlackReply(unknown(catalogue, catalogues, "a catalogue") + ".")
        choices = run_targets(spec, catalogue)
        if target == DBT_BUILD and target not in choices:  # a job of the code location, not of the spec
            try:
                present = self.launcher.has_job(DBT_BUILD)
            except Exception as exc:
                return SlackReply(f"Could not launch `{target}` on `{catalogue}`: {exc}")
            if not present:
                return SlackReply(f"The Dagster code location has no `{DBT_BUILD}` job: set CLARO_DBT_PROJECT to a "
                                  "dbt project where Dagster runs (the catalogue store on PostgreSQL).")
            if filter_text:
                return SlackReply(f"`{DBT_BUILD}` takes no filter: dbt builds its models from whole tables.")
            choices = run_targets(spec, catalogue, dbt=True)
        if target not in choices:
            return SlackReply(unknown(target, choices, f"an operation or pipeline of {catalogue!r}",
                                      listing="one of") + ".")
        if filter_text:
            try:
                compile_filter(filter_text, filter_columns(spec.catalogues[catalogue]))
            except FilterError as exc:
                return SlackReply(f"The filter does not work on `{catalogue}`:\n```{exc}```")
        try:
            run_id = self.launcher.launch(catalogue, target, filter_text)
        except Exception as exc:
            log.exception("Slack: launching %s on %s failed", target, catalogue)
            return SlackReply(f"Could not launch `{target}` on `{catalogue}`: {exc}")
        where = f"`{target}` on `{catalogue}`" + (f" (filter `{filter_text}`)" if filter_text else "")
        url = f"{self.webserver_url}/runs/{run_id}"
        return SlackReply(f"Launched {where}: run {_link(url, run_id)}")

    def _status(self, ref: str | None) -> SlackReply:
        """Runs from Dagster when its webserver answers; otherwise the runs the outbox recorded. Batches and
        the review queue always come from the catalogue store, so the answer never depends on Dagster."""
        try:
            live, down = self.launcher.status(ref), None
        except WebserverUnreachable as exc:
            live, down = None, exc
        if ref is not None and live is not None:
            return SlackReply(live)
        spec = self.spec_loader()
        store = self.store_factory(spec)
        try:
            if ref is not None:
                return SlackReply(f"{down}\n{self._stored_status(store, ref)}")
            lines = [f"_{down}_", "*Last runs recorded in the catalogue store*"] if down else ["*Recent runs*"]
            lines += self._stored_runs(store) if down else [live]
            batches = sorted(BatchRegistry(store).list(), key=lambda b: b.updated_at, reverse=True)[:STATUS_BATCHES]
            lines.append("*Batches*")
            lines += [f"• `{b.key}` ({b.filename}): {b.status}" + (f" at {b.stage}" if b.stage else "")
                      + (f": {_first_line(b.message)}" if b.message else "") for b in batches] or ["no batches yet"]
            counts = ReviewQueue(store).pending_counts()
            total = sum(counts.values())
            lines.append(f"*Review queue*: {total:,} change{'s' if total != 1 else ''} waiting"
                         + (": " + ", ".join(f"{c} {n:,}" for c, n in counts.items() if n) if total else ""))
        finally:
            store.dispose()
        return SlackReply("\n".join(lines))

    def _stored_runs(self, store: CatalogueStore) -> list[str]:
        runs = recent_runs(store, STATUS_RUNS)
        if not runs:
            return ["no runs recorded yet"]
        out = []
        for run in runs:
            p = run.payload
            what = p.get("pipeline") or p.get("job") or "run"
            where = f" on {p['catalogue']}" if p.get("catalogue") else ""
            batch = f" batch `{p['batch']}`" if p.get("batch") else ""
            error = f": {_first_line(p.get('error'))}" if run.status == "failed" and p.get("error") else ""
            out.append(f"• `{run.run_id[:8]}` {what}{where}{batch}: {run.status} {run.at:%Y-%m-%d %H:%M} UTC{error}")
        return out

    def _stored_status(self, store: CatalogueStore, ref: str) -> str:
        batch = BatchRegistry(store).get(ref)
        if batch is not None:
            return f"batch {batch.key} ({batch.filename}): {batch.status}: {batch.message or ''}"
        for run in recent_runs(store, 200):
            if run.run_id.startswith(ref):
                return f"Last recorded in the catalogue store: run {run.run_id[:8]} {run.status} " \
                       f"{run.at:%Y-%m-%d %H:%M} UTC"
        return f"The catalogue store has no batch or recent run `{ref}`."

    def _review(self, base_url: str) -> SlackReply:
        spec = self.spec_loader()
        store = self.store_factory(spec)
        try:
            counts = ReviewQueue(store).pending_counts()
        finally:
            store.dispose()
        url = self.review_url or (base_url.rstrip("/") + "/review" if base_url else None)
        link = f"\n{_link(url, 'Open the review page')}" if url else ""
        total = sum(counts.values())
        if not total:
            return SlackReply(f"Nothing is waiting for review.{link}")
        names = [*spec.catalogues, *(c for c in counts if c not in spec.catalogues)]
        lines = [f"• {name}: *{counts.get(name, 0):,}*" for name in names]
        return SlackReply(f"*{total:,} change{'s' if total != 1 else ''} waiting for review*\n"
                          + "\n".join(lines) + link)


def parse_form(body: bytes) -> dict[str, str]:
    """A slash command's `application/x-www-form-urlencoded` body as a dict (first value of each field)."""
    fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def post_to_response_url(response_url: str, reply: SlackReply) -> None:
    """Post a late answer to the command's `response_url` (retrying on 429 and connection errors)."""
    client = WebhookClient(response_url, timeout=10, retry_handlers=[
        RateLimitErrorRetryHandler(max_retry_count=2), ConnectionErrorRetryHandler(max_retry_count=1)])
    response = client.send_dict(reply.as_json())
    if response.status_code != 200:
        log.warning("Slack: response_url answered HTTP %s: %s", response.status_code, response.body)
