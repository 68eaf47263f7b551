"""`claro`: the project's command line for catalogue tasks (check, records, history, review, rollback, ...)."""

from __future__ import annotations

import getpass
import os
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

# Only what every command needs is imported here: `claro --help` and the read-only commands answer at once, and
# Dagster is imported only by the commands that run things (run, rerun, dev, serve, upload, analyse, export...).

FORMATS = ("table", "csv", "json")
FORMAT_HELP = ("table (default), csv, or json: one JSON array with an object per row (the same fields as the csv "
               "columns)")

app = typer.Typer(help="claro: continuous product-catalogue automation on Dagster.\n\nListing commands (records, "
                       "history, batches, rejected, review list, webhooks log, schedules, mapping show) take "
                       "--format table|csv|json; json is one JSON array with an object per row.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
review_app = typer.Typer(help="Decide on changes the gate held back for review.", no_args_is_help=True)
app.add_typer(review_app, name="review")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SpecOption = Annotated[Path | None, typer.Option("--spec", help="Project spec (default: $CLARO_SPEC, ./claro.yaml, "
                                                                 "else the bundled demo).")]
CatalogueOption = Annotated[str | None, typer.Option("--catalogue", "-c", help="Catalogue (default: the first).")]
ByOption = Annotated[str | None, typer.Option("--by", help="Who decides (default: $CLARO_USER or your login).")]
FormatOption = Annotated[str, typer.Option("--format", help=FORMAT_HELP)]


def user_error(message: str) -> Exception:
    """An error the user can fix: printed as one line (`error: ...`), exit 1, never a traceback."""
    from claro_dagster.catalogue.changes import StoreError

    return StoreError(message)


def default_spec_path() -> Path:
    from claro_dagster.spec import default_spec_path

    return default_spec_path()


def load_spec(path: Path):
    from claro_dagster.spec import load_spec

    return load_spec(path)


class Context:
    """Spec and store, loaded once per command and only when the command needs them."""

    spec_path: Path | None = None

    @cache  # noqa: B019 - one Context per process
    def spec(self):
        path = self.spec_path or default_spec_path()
        return load_spec(path)

    @cache  # noqa: B019 - one Context per process
    def store(self):
        from claro_dagster.catalogue.opening import open_store  # not the Dagster resource: reads answer at once

        return open_store(self.spec(), home=home_dir())

    def catalogue(self, name: str | None) -> str:
        spec = self.spec()
        if name is None:
            return next(iter(spec.catalogues))
        if name not in spec.catalogues:
            raise user_error(f"unknown catalogue {name!r}; catalogues are: {', '.join(spec.catalogues)}")
        return name


ctx = Context()


def home_dir() -> Path:
    """CLARO_HOME, default ./.claro (the embedded SQLite store, batches, mappings, exports)."""
    from claro_dagster.catalogue.schema import default_home

    return default_home()


def who(by: str | None) -> str:
    return by or os.environ.get("CLARO_USER") or getpass.getuser()


@app.callback()
def main_options(spec: SpecOption = None) -> None:
    ctx.spec_path = spec


TABLE_COLUMNS = 8


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise user_error(f"unknown format {fmt!r}; formats are: {', '.join(FORMATS)}")
    return fmt


def _plain(value):
    """A cell as JSON has it: None for missing (None, NaN, NaT), ISO text for times, Python numbers for numpy's."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "isoformat"):
        return None if str(value) == "NaT" else value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        return value.item()  # numpy scalars
    return value


def write_json(rows: list[dict]) -> None:
    """One JSON array with an object per row, on stdout."""
    import orjson

    sys.stdout.write(orjson.dumps([{str(k): _plain(v) for k, v in row.items()} for row in rows], default=str).decode()
                     + "\n")


def print_frame(frame, fmt: str, *, has_columns_option: bool = False, all_columns: bool = False) -> None:
    """A listing on stdout as a table, CSV or one JSON array. A table shows the first TABLE_COLUMNS fields unless
    `all_columns`; the note saying so names --columns only for commands that have it."""
    check_format(fmt)
    if fmt == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        write_json(frame.to_dict(orient="records"))
    else:
        if len(frame.columns) > TABLE_COLUMNS and not all_columns:
            pick = "pick them with --columns or " if has_columns_option else ""
            err.print(f"showing {TABLE_COLUMNS} of {len(frame.columns)} fields; {pick}use --format csv|json for all",
                      highlight=False)
            frame = frame.iloc[:, :TABLE_COLUMNS]
        table = Table(show_lines=False)
        for col in frame.columns:
            table.add_column(str(col), overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*["" if v is None or v != v else str(v) for v in row])
        console.print(table)


def print_rows(rows: list[dict], columns: list[str], fmt: str, **kw) -> None:
    """`print_frame` for a listing built as dicts (lists in a cell are joined by '; ' outside JSON)."""
    import pandas as pd

    check_format(fmt)
    if fmt == "json":
        write_json(rows)
        return
    flat = [{k: "; ".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in row.items()} for row in rows]
    print_frame(pd.DataFrame(flat, columns=columns), fmt, **kw)


# --------------------------------------------------------------------------- spec
@app.command()
def check(spec: SpecOption = None) -> None:
    """Validate the project spec; exit 1 with file:line errors, 0 with a one-line summary."""
    path = spec or ctx.spec_path or default_spec_path()
    from claro_dagster.spec import summarize

    console.print(summarize(load_spec(path)), highlight=False)


# --------------------------------------------------------------------------- records
@app.command()
def records(catalogue: CatalogueOption = None,
            filter: Annotated[str | None, typer.Option(
                "--filter", "-f", help='e.g. brand == "Acme" and price > 100')] = None,
            columns: Annotated[str | None, typer.Option(help="Comma-separated fields to show.")] = None,
            format: FormatOption = "table",
            limit: Annotated[int | None, typer.Option(help="At most this many records.")] = None) -> None:
    """List records of a catalogue, optionally filtered."""
    check_format(format)
    name = ctx.catalogue(catalogue)
    frame = ctx.store().records(name, filter=filter, columns=columns.split(",") if columns else None, limit=limit)
    print_frame(frame, format, has_columns_option=True)


@app.command()
def history(record: str, catalogue: CatalogueOption = None,
            field: Annotated[str | None, typer.Option(help="Only this field.")] = None,
            format: FormatOption = "table") -> None:
    """Show every value a record's fields have had, with provenance (operation, run, source, confidence) and
    who decided it (the reviewer of an approval or rejection, the author of a rollback)."""
    check_format(format)
    name = ctx.catalogue(catalogue)
    entries = ctx.store().history(name, record, field)
    if format != "table":
        rows = []
        for e in entries:
            p = e.provenance
            rows.append({
                "at": e.at.isoformat(), "record": e.record, "field": e.field, "kind": e.kind, "old": e.old,
                "new": e.new, "by": e.by, "reason": e.reason, "change_set": e.change_set, "proposal": e.proposal,
                "proposed_in": e.proposed_in,
                "operation": p.operation if p else None, "run_id": p.run_id if p else None,
                "source": p.source if p else None, "reviewer": p.reviewer if p else None,
                "confidence": p.confidence if p else None})
        print_rows(rows, list(HISTORY_FIELDS), format, all_columns=True)
        return
    table = Table(title=f"{name} {record}")
    for col in ("when", "field", "kind", "old", "new", "by", "operation", "run", "source", "reviewer", "confidence"):
        table.add_column(col, overflow="fold")
    for e in entries:
        p = e.provenance
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.field, e.kind, _show(e.old), _show(e.new), e.by or "",
                      p.operation if p else "", (p.run_id or "") if p else "", (p.source or "") if p else "",
                      (p.reviewer or "") if p else "", f"{p.confidence:g}" if p else "")
    console.print(table)


HISTORY_FIELDS = ("at", "record", "field", "kind", "old", "new", "by", "reason", "change_set", "proposal",
                  "proposed_in", "operation", "run_id", "source", "reviewer", "confidence")


def _show(value) -> str:
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- review
def _queue():
    from claro_dagster.catalogue.review import ReviewQueue

    return ReviewQueue(ctx.store())


def _criteria(catalogue, operation, attribute, source, min_confidence, max_confidence, reviewer, status):
    return dict(catalogue=catalogue, operation=operation, attribute=attribute, source=source,
                min_confidence=min_confidence, max_confidence=max_confidence, reviewer=reviewer,
                status=status.split(",") if status else None)


_F = dict(
    catalogue=typer.Option(None, "--catalogue", "-c"), operation=typer.Option(None), attribute=typer.Option(None),
    source=typer.Option(None), min_confidence=typer.Option(None), max_confidence=typer.Option(None),
    reviewer=typer.Option(None, help="Only items this person (or their group) may decide."),
    status=typer.Option(None, help="Comma-separated statuses (default: open items due now)."),
)


@review_app.command("list")
def review_list(catalogue: str | None = _F["catalogue"], operation: str | None = _F["operation"],
                attribute: str | None = _F["attribute"], source: str | None = _F["source"],
                min_confidence: float | None = _F["min_confidence"],
                max_confidence: float | None = _F["max_confidence"], reviewer: str | None = _F["reviewer"],
                status: str | None = _F["status"],
                format: FormatOption = "table") -> None:
    """List review items (by catalogue, operation, attribute, source, confidence range, reviewer)."""
    import pandas as pd

    check_format(format)
    items = _queue().list(**_criteria(catalogue, operation, attribute, source, min_confidence, max_confidence,
                                      reviewer, status))
    columns = ["id", "record", "field", "old", "new", "confidence", "source", "status", "operation", "catalogue",
               "reason", "reviewers", "citation", "model"]
    frame = pd.DataFrame([{"id": i.id, "record": i.record, "field": i.field, "old": i.old, "new": i.new,
                           "confidence": i.confidence, "source": i.source, "status": i.status,
                           "operation": i.operation, "catalogue": i.catalogue, "reason": i.reason,
                           "reviewers": ",".join(i.reviewers), "citation": i.citation, "model": i.model}
                          for i in items], columns=columns)
    print_frame(frame, format)
    if format == "table":
        console.print(f"{len(items)} item(s)")


def _bulk(decision: str, ids: list[int], by: str | None, note: str | None, criteria: dict) -> None:
    queue = _queue()
    if ids and any(v for k, v in criteria.items() if k != "status"):
        raise user_error("give item ids or filter options, not both")
    if not ids and not any(v for v in criteria.values()):
        raise user_error(f"give item ids, or filter options (--catalogue, --operation, ...) to {decision} in bulk")
    if decision == "approve":
        result = queue.approve_where(by=who(by), note=note, **criteria) if not ids else \
            queue.approve(ids, by=who(by), note=note)
        console.print(f"approved: {result.applied} value(s) written, {result.unchanged} already as proposed")
    else:
        count = queue.reject_where(by=who(by), note=note, **criteria) if not ids else \
            queue.reject(ids, by=who(by), note=note)
        console.print(f"rejected {count} item(s)")


@review_app.command("approve")
def review_approve(ids: Annotated[list[int] | None, typer.Argument()] = None, by: ByOption = None,
                   note: str | None = None, catalogue: str | None = _F["catalogue"],
                   operation: str | None = _F["operation"], attribute: str | None = _F["attribute"],
                   source: str | None = _F["source"], min_confidence: float | None = _F["min_confidence"],
                   max_confidence: float | None = _F["max_confidence"], reviewer: str | None = _F["reviewer"]) -> None:
    """Approve items by id, or every open item matching the filter options."""
    _bulk("approve", ids or [], by, note, _criteria(catalogue, operation, attribute, source, min_confidence,
                                                     max_confidence, reviewer, None))


@review_app.command("reject")
def review_reject(ids: Annotated[list[int] | None, typer.Argument()] = None, by: ByOption = None,
                  note: str | None = None, catalogue: str | None = _F["catalogue"],
                  operation: str | None = _F["operation"], attribute: str | None = _F["attribute"],
                  source: str | None = _F["source"], min_confidence: float | None = _F["min_confidence"],
                  max_confidence: float | None = _F["max_confidence"], reviewer: str | None = _F["reviewer"]) -> None:
    """Reject items by id, or every open item matching the filter options."""
    _bulk("reject", ids or [], by, note, _criteria(catalogue, operation, attribute, source, min_confidence,
                                                    max_confidence, reviewer, None))


@review_app.command("edit")
def review_edit(item: int, value: str, by: ByOption = None, note: str | None = None) -> None:
    """Apply your own value instead of the proposal (you become the value's source)."""
    result = _queue().edit(item, value, by=who(by), note=note)
    console.print(f"applied your value to item {item} ({result.applied} written)")


@review_app.command("skip")
def review_skip(ids: list[int], by: ByOption = None, note: str | None = None) -> None:
    """Leave items for later or someone else (they stay open, listed last)."""
    console.print(f"skipped {_queue().skip(ids, by=who(by), note=note)} item(s)")


@review_app.command("snooze")
def review_snooze(ids: list[int], until: Annotated[str, typer.Option(help="ISO time, e.g. 2026-12-01T09:00+00:00")],
                  by: ByOption = None, note: str | None = None) -> None:
    """Hide items until a time."""
    try:
        when = datetime.fromisoformat(until)
    except ValueError:
        raise user_error(f"--until {until!r} is not an ISO time such as 2026-12-01T09:00+00:00") from None
    console.print(f"snoozed {_queue().snooze(ids, when, by=who(by), note=note)} item(s) until {when.isoformat()}")


# --------------------------------------------------------------------------- access links (portal, review page)
portal_app = typer.Typer(help="Personal links to the web app (`claro serve`): Supplier Portal and review page.",
                         no_args_is_help=True)
app.add_typer(portal_app, name="portal")
WEB_URL_ENV = "CLARO_WEB_URL"
BaseUrlOption = Annotated[str | None, typer.Option(
    "--base-url", help=f"The web app's address as people reach it (default: ${WEB_URL_ENV}).")]


def _tokens():
    from claro_dagster.catalogue.access import AccessTokens

    return AccessTokens(ctx.store())


def _invite(kind: str, subject: str, expires: str, base_url: str | None, by: str | None) -> None:
    from claro_dagster.catalogue.access import parse_duration

    base = base_url or os.environ.get(WEB_URL_ENV)
    if not base:
        raise user_error(f"give the web app's address: --base-url https://claro.example.com, or set {WEB_URL_ENV}")
    issued = _tokens().issue(kind, subject, expires_in=parse_duration(expires), by=who(by))
    console.print(f"link {issued.token.id} for {kind} {subject}, valid until "
                  f"{issued.token.expires_at:%Y-%m-%d %H:%M} UTC (shown once; `claro portal revoke "
                  f"{issued.token.id}` ends it):", highlight=False)
    print(issued.link(base))


@portal_app.command("invite")
def portal_invite(source: str,
                  expires: Annotated[str, typer.Option(help="How long the link works: 90d, 12h, 2w.")] = "90d",
                  base_url: BaseUrlOption = None, by: ByOption = None) -> None:
    """Print a personal Supplier Portal link for one source (tokens are stored hashed)."""
    sources = ctx.spec().sources
    if source not in sources:
        raise user_error(f"unknown source {source!r}; sources are: {', '.join(sources) or '(none)'}")
    if sources[source].kind not in ("upload", "inbox"):  # the portal hands files to the source's inbox sensor
        raise user_error(f"source {source!r} is a {sources[source].kind} source: it receives its files another way, "
                         "not through the Supplier Portal (portal links are for upload and inbox sources)")
    _invite("portal", source, expires, base_url, by)


@review_app.command("invite")
def review_invite(reviewer: str,
                  expires: Annotated[str, typer.Option(help="How long the link works: 30d, 12h, 2w.")] = "30d",
                  base_url: BaseUrlOption = None, by: ByOption = None) -> None:
    """Print a personal review-page link for a reviewer named in the spec's `reviewers`."""
    from claro_dagster.catalogue.access import known_reviewers

    names = known_reviewers(ctx.spec())
    if reviewer not in names:
        raise user_error(f"{reviewer!r} is not a reviewer of the spec; add them to a group under `reviewers:` "
                         f"in the spec (reviewers now: {', '.join(names) or 'none'})")
    _invite("review", reviewer, expires, base_url, by)


@portal_app.command("tokens")
def portal_tokens(kind: Annotated[str | None, typer.Option(help="Only portal or review links.")] = None,
                  format: FormatOption = "table") -> None:
    """List access links (portal and review): whom for, created, expires, status. Never the tokens."""
    from claro_dagster.catalogue.access import KINDS
    from claro_dagster.catalogue.common import now

    check_format(format)
    if kind is not None and kind not in KINDS:
        raise user_error(f"--kind {kind!r}: kinds are {', '.join(KINDS)}")
    at = now()
    rows = [{"id": t.id, "kind": t.kind, "for": t.subject, "status": t.status(at), "created": t.created_at,
             "by": t.created_by, "expires": t.expires_at, "revoked": t.revoked_at, "last_used": t.last_used_at}
            for t in _tokens().list(kind)]
    print_rows(rows, ["id", "kind", "for", "status", "created", "by", "expires", "revoked", "last_used"], format)


@portal_app.command("revoke")
def portal_revoke(token_id: Annotated[int, typer.Argument(metavar="ID", help="The link's id (`claro portal "
                                                                              "tokens`).")]) -> None:
    """End an access link (portal or review) at once; a session signed in with it ends too."""
    token = _tokens().revoke(token_id)
    console.print(f"revoked link {token.id} ({token.kind} {token.subject})", highlight=False)


# --------------------------------------------------------------------------- REST API tokens
api_app = typer.Typer(help="The REST API of `claro serve` (/api/v1): tokens for external systems.",
                      no_args_is_help=True)
api_tokens_app = typer.Typer(help="API tokens: create (shown once, stored hashed), list, revoke.",
                             no_args_is_help=True)
app.add_typer(api_app, name="api")
api_app.add_typer(api_tokens_app, name="tokens")


def _api_tokens():
    from claro_dagster.catalogue.api_access import ApiTokens

    return ApiTokens(ctx.store())


@api_tokens_app.command("create")
def api_tokens_create(
        name: Annotated[str, typer.Argument(help="The system the token is for (names its writes in the audit log).")],
        scope: Annotated[list[str], typer.Option(
            "--scope", "--scopes", help="read, propose, review, run or admin (repeatable; commas also separate).")],
        expires: Annotated[str, typer.Option(help="How long the token works: 90d, 12h, 2w.")] = "90d",
        by: ByOption = None) -> None:
    """Print a new API token (shown once; only its hash is stored)."""
    from claro_dagster.catalogue.access import parse_duration

    scopes = [s for item in scope for s in item.split(",")]
    issued = _api_tokens().create(name, scopes, expires_in=parse_duration(expires), by=who(by))
    t = issued.token
    console.print(f"API token {t.id} for {t.name} ({', '.join(t.scopes)}), valid until "
                  f"{t.token.expires_at:%Y-%m-%d %H:%M} UTC (shown once; `claro api tokens revoke {t.id}` ends it):",
                  highlight=False)
    print(issued.secret)


@api_tokens_app.command("list")
def api_tokens_list(format: FormatOption = "table") -> None:
    """List API tokens: name, scopes, created, expires, status, last used. Never the tokens."""
    from claro_dagster.catalogue.common import now

    check_format(format)
    at = now()
    rows = [{"id": t.id, "name": t.name, "scopes": ",".join(t.scopes), "status": t.token.status(at),
             "created": t.token.created_at, "by": t.token.created_by, "expires": t.token.expires_at,
             "revoked": t.token.revoked_at, "last_used": t.token.last_used_at} for t in _api_tokens().list()]
    print_rows(rows, ["id", "name", "scopes", "status", "created", "by", "expires", "revoked", "last_used"], format)


@api_tokens_app.command("revoke")
def api_tokens_revoke(token_id: Annotated[int, typer.Argument(metavar="ID", help="The token's id (`claro api "
                                                                                  "tokens list`).")]) -> None:
    """End an API token at once: its next request is refused."""
    token = _api_tokens().revoke(token_id)
    console.print(f"revoked API token {token.id} ({token.name})", highlight=False)


# --------------------------------------------------------------------------- rollback and schema
@app.command()
def rollback(run: Annotated[str, typer.Option("--run", help="The run whose writes to undo.")],
             record: Annotated[str | None, typer.Option(help="Only this record.")] = None,
             field: Annotated[list[str] | None, typer.Option("--field", help="Only these fields (repeatable).")] = None,
             catalogue: CatalogueOption = None, by: ByOption = None) -> None:
    """Restore the values a run wrote, and what reviewers approved of its proposals, to what they were before
    it (per field, optionally one record). Exits 1, saying why, when there is nothing to restore."""
    result = ctx.store().rollback(run, record=record, fields=field or None, by=who(by),
                                  catalogue=ctx.catalogue(catalogue) if catalogue else None)
    console.print(result.summary(), highlight=False)
    for conflict in result.conflicts[:20]:
        console.print(f"  kept {conflict}: written again after run {run}", highlight=False)


@app.command("schema-diff")
def schema_diff_command(apply: Annotated[str | None, typer.Option(
        "--apply", help="Apply one type change, as catalogue.attribute.")] = None,
        yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False) -> None:
    """Show how the spec differs from the stored catalogue; apply a type change only when confirmed."""
    from claro_dagster.catalogue.migrations import apply_type_change, schema_diff

    store = ctx.store()
    diff = schema_diff(store)
    if apply is None:
        if diff.empty:
            console.print("the stored catalogue matches the spec")
        for catalogue, attribute in diff.removed:
            console.print(f"{catalogue}.{attribute}: no longer in the spec; its stored values are kept")
        for change in diff.type_changes:
            console.print(f"{change.catalogue}.{change.attribute}: {change.stored_type} -> {change.spec_type}: "
                          f"{change.values - len(change.failures)} of {change.values} value(s) convert")
            for record, value, reason in change.failures[:20]:
                console.print(f"  {record}: {value!r} would not convert ({reason})")
            if len(change.failures) > 20:
                console.print(f"  ... and {len(change.failures) - 20} more")
            console.print(f"  apply with: claro schema-diff --apply {change.catalogue}.{change.attribute}")
        return
    catalogue, _, attribute = apply.partition(".")
    match = [c for c in diff.type_changes if (c.catalogue, c.attribute) == (catalogue, attribute)]
    if not match:
        raise user_error(f"{apply} has no pending type change; run `claro schema-diff` to list them")
    if match[0].failures and not yes:
        typer.confirm(f"{len(match[0].failures)} value(s) will not convert and will be cleared (kept in history). "
                      "Apply?", abort=True)
    change = apply_type_change(store, catalogue, attribute, by=who(None))
    console.print(f"{apply}: now {change.spec_type}; {change.values - len(change.failures)} converted, "
                  f"{len(change.failures)} cleared (their values are in `claro history`)")


# --------------------------------------------------------------------------- onboarding
mapping_app = typer.Typer(help="Saved column mappings per source and file shape.", no_args_is_help=True)
app.add_typer(mapping_app, name="mapping")
webhooks_app = typer.Typer(help="Signed webhook deliveries of the catalogue's events.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("log")
def webhooks_log(subscription: Annotated[str | None, typer.Option(help="Only this subscription.")] = None,
                 status: Annotated[str | None, typer.Option(help="pending, delivered, failed or dead.")] = None,
                 limit: int = 50, format: FormatOption = "table") -> None:
    """The delivery log: each delivery's webhook-id, events, status, attempts and last error."""
    import pandas as pd

    from claro_dagster.catalogue.outbox import WebhookOutbox

    check_format(format)
    rows = WebhookOutbox(ctx.store()).log(subscription, status, limit)
    print_frame(pd.DataFrame([{"id": d.id, "subscription": d.subscription, "status": d.status,
                               "events": len(d.event_ids), "attempts": d.attempts,
                               "next attempt": d.next_attempt_at or "", "last": d.last_status_code or "",
                               "error": d.last_error or "", "webhook-id": d.webhook_id} for d in rows],
                             columns=["id", "subscription", "status", "events", "attempts", "next attempt", "last",
                                      "error", "webhook-id"]), format, all_columns=True)


@webhooks_app.command("retry")
def webhooks_retry(delivery: int) -> None:
    """Make a failed or dead-lettered delivery due now (same webhook-id, so receivers can de-duplicate)."""
    from claro_dagster.catalogue.outbox import WebhookOutbox

    d = WebhookOutbox(ctx.store()).retry(delivery)
    console.print(f"delivery {d.id} ({d.subscription}, {d.webhook_id}) is due again")


@webhooks_app.command("serve")
def webhooks_serve(interval: Annotated[float, typer.Option(help="Seconds between outbox polls.")] = 0.2) -> None:
    """Deliver webhooks continuously (until Ctrl-C): plans new events, sends what is due, retries with backoff."""
    import signal
    import threading

    from claro_dagster.resources.webhooks import run_delivery_loop

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"delivering webhooks for {', '.join(ctx.spec().notifications.webhooks) or 'no subscriptions'}")
    try:
        run_delivery_loop(ctx.store(), ctx.spec(), stop, interval=interval)
    except KeyboardInterrupt:
        stop.set()


def _claro():
    from claro_dagster.resources.catalogue import CatalogueResource, database_url_setting

    path = ctx.spec_path or default_spec_path()
    return CatalogueResource(spec_path=str(Path(path).resolve()), home=str(home_dir()),
                             database_url=database_url_setting())


@app.command()
def upload(file: Path, source: Annotated[str, typer.Option(help="The source the file comes from.")],
           catalogue: CatalogueOption = None) -> None:
    """Drop a supplier file into a source's inbox; the inbox sensor (or `claro run`) picks it up."""
    from claro_dagster.resources.inbox import Inbox

    claro = _claro()
    if source not in claro.spec.sources:
        raise user_error(f"unknown source {source!r}; sources are: {', '.join(claro.spec.sources)}")
    if catalogue and claro.spec.sources[source].catalogue != ctx.catalogue(catalogue):
        raise user_error(f"source {source!r} feeds catalogue {claro.spec.sources[source].catalogue!r}, "
                         f"not {catalogue!r}")
    kind = claro.spec.sources[source].kind
    if kind not in ("inbox", "upload"):
        spec = claro.spec.sources[source]
        where = f"Drive folder {spec.folder_id}" if kind == "drive" else f"s3://{spec.bucket}/{spec.prefix}"
        raise user_error(f"source {source!r} receives its files from {where}, not by "
                         "upload: put the file there, or upload it to an upload or inbox source")
    if not file.is_file():
        raise user_error(f"{file}: no such file")
    from claro_dagster.progress import progress

    with progress(f"upload {file.name}", total=file.stat().st_size, unit="bytes") as bar:
        target = Inbox(claro.inbox_dir(source)).upload(file, on_progress=bar.advance)
    console.print(f"{file.name} -> {target}", highlight=False, soft_wrap=True)  # a path is never wrapped
    console.print(f"the {source}_{kind} sensor (`claro dev`) or `claro run` processes it", highlight=False)


@app.command()
def run(export_format: Annotated[str, typer.Option("--export-format", help="Format of the export file.")] = "csv"
        ) -> None:
    """Run every pipeline in-process on what waits in the inboxes (the bundled demo with no spec of your own)."""
    from claro_dagster.local import run_everything

    summary = run_everything(ctx.spec_path, home_dir(), export_format=export_format,
                             progress=lambda m: console.print(m, highlight=False))
    console.print("\n[bold]batches[/bold]")
    for b in summary.batches:
        colour = {"published": "green", "halted": "yellow", "awaiting_review": "yellow"}.get(b.status, "red")
        console.print(f"  [{colour}]{b.status:<11}[/{colour}] {b.filename}: {b.message or ''}", highlight=False)
        console.print(f"              batch {b.key}", style="dim", highlight=False)
    for catalogue, report in summary.reports.items():
        quality = (f"{report.records} records, quality score {report.score:.1f}/100, {report.critical} critical "
                   "issue(s)") if report else "analyse failed (see its run in `claro dev`)"
        console.print(f"{catalogue}: {quality}; export: {summary.exports[catalogue] or 'failed'}", highlight=False)
    for dest, outcome in summary.destinations.items():
        console.print(f"destination {dest}: {outcome}")
    for name, outcome in summary.chained.items():
        console.print(f"chained pipeline {name}: {outcome}")
    console.print(f"review queue: {summary.review_queue} open item(s) (`claro review list`); rejected rows: "
                  "`claro rejected BATCH`; the runs are in the Dagster UI: `claro dev`")


@app.command()
def dev(port: Annotated[int, typer.Option(help="Port of the Dagster UI.")] = 3000,
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1") -> None:
    """Start the Dagster UI and daemon on this project, with its sensors running; links point at this port.
    Ctrl-C or TERM stops everything it started."""
    from claro_dagster.dev import link_url, recorded_webserver, supervise
    from claro_dagster.local import dev_environment, seed_demo_inboxes

    claro = _claro()
    seed_demo_inboxes(claro)
    url = link_url(host, port)
    env = dev_environment(claro.home_dir, Path(claro.spec_path), webserver_url=url)
    console.print(f"Dagster UI on {url} (instance in {env['DAGSTER_HOME']}); Slack, webhook and slash-command "
                  "links point there", highlight=False)
    with recorded_webserver(claro.home_dir, url):
        code = supervise([sys.executable, "-m", "dagster", "dev", "-m", "claro_dagster.definitions", "-h", host,
                          "-p", str(port)], env)
    raise typer.Exit(code)


@app.command()
def rejected(batch: str, out: Annotated[Path | None, typer.Option(
        "--out", help="Write the rejected rows (as received, with line and reasons) to a CSV to send back.")] = None,
             format: FormatOption = "table") -> None:
    """Rows of a batch that failed validation, with their line numbers and reasons."""
    from claro_dagster.catalogue.batches import BatchRegistry

    check_format(format)
    registry = BatchRegistry(ctx.store())
    info = registry.get(batch)
    if info is None:
        known = ", ".join(b.key for b in registry.list()[-5:]) or "none yet"
        raise user_error(f"no batch {batch!r}; recent batches: {known}")
    frame = registry.rejected_rows(batch)
    if out:
        frame.to_csv(out, index=False)
        console.print(f"{len(frame)} rejected row(s) of {info.filename} written to {out}")
        return
    print_frame(frame, format)
    err.print(f"batch {batch}: {info.status}: {info.message or ''}", highlight=False)


@app.command()
def schedules(format: FormatOption = "table") -> None:
    """Schedules of the spec: target, when (cron, timezone), record filter, status and the next three runs."""
    from rich.markup import escape

    from claro_dagster.schedules import describe_schedules

    check_format(format)
    infos = describe_schedules(ctx.spec(), datetime.now(UTC))
    if format != "table":
        print_rows([{"schedule": i.name, "target": i.target, "cron": i.cron, "timezone": i.timezone,
                     "filter": i.filter, "status": i.status, "next_runs": [t.isoformat() for t in i.next_runs],
                     "description": i.description} for i in infos],
                   ["schedule", "target", "cron", "timezone", "filter", "status", "next_runs", "description"],
                   format)
        return
    if not infos:
        console.print("no schedules in the spec (add them under `schedules:`)")
        return
    table = Table()
    for col in ("schedule", "target", "cron", "timezone", "filter", "status", "next runs"):
        table.add_column(col, overflow="fold")
    for i in infos:
        table.add_row(i.name, i.target, i.cron, i.timezone, escape(i.filter) if i.filter else "all records", i.status,
                      "\n".join(t.strftime("%a %Y-%m-%d %H:%M %Z") for t in i.next_runs))
    console.print(table)


@app.command()
def serve(port: Annotated[int, typer.Option(help="Port of the web app.")] = 8080,
          host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          dagster_port: Annotated[int | None, typer.Option(
              help="Port of the running Dagster UI (default: the running `claro dev`'s, else 3000).")] = None,
          forwarded_allow_ips: Annotated[str | None, typer.Option(
              help="Addresses of the reverse proxies whose X-Forwarded-For/-Proto headers are trusted (comma "
                   "separated, or *); default: the FORWARDED_ALLOW_IPS variable, else 127.0.0.1. Links' failed "
                   "sign-ins are rate-limited per client address, so a proxy elsewhere must be named here.")] = None,
          log_format: Annotated[str | None, typer.Option(
              help="text or json (one JSON object per line, for a log shipper); default: $CLARO_LOG_FORMAT, "
                   "else text.")] = None
          ) -> None:
    """Start the web app (Slack slash commands, launching runs through Dagster's API; the review page at /review)
    and deliver webhooks."""
    import threading
    from urllib.parse import urlsplit

    import uvicorn

    from claro_dagster.resources.catalogue import open_store
    from claro_dagster.resources.dagster_api import DagsterLauncher
    from claro_dagster.run_logs import configure_logging
    from claro_dagster.web.app import create_app

    try:
        json_logs = configure_logging(log_format) == "json"
    except ValueError as exc:
        raise user_error(str(exc)) from None

    def store_factory(spec):
        return open_store(spec, home=home_dir())

    from claro_dagster.dev import webserver_url

    dagster_url = f"http://127.0.0.1:{dagster_port}" if dagster_port else webserver_url(home_dir())
    launcher = DagsterLauncher(ctx.spec, store_factory, port=dagster_port or urlsplit(dagster_url).port or 3000)
    stop = threading.Event()
    if ctx.spec().notifications.webhooks:
        from claro_dagster.resources.webhooks import WebhookConfigError, WebhookSender, run_delivery_loop

        try:
            WebhookSender().check(ctx.spec())
        except WebhookConfigError as exc:
            err.print(f"webhooks are not delivered: {exc}", highlight=False, markup=False)
        else:
            threading.Thread(target=run_delivery_loop, args=(ctx.store(), ctx.spec(), stop), daemon=True,
                             name="webhooks").start()
            console.print(f"delivering webhooks to {', '.join(ctx.spec().notifications.webhooks)}")
    try:
        # uvicorn reads the client's address from the trusted proxies' X-Forwarded-For (proxy_headers is its default).
        uvicorn.run(create_app(ctx.spec, store_factory, launcher, webserver_url=dagster_url),
                    host=host, port=port, forwarded_allow_ips=forwarded_allow_ips,
                    **({"log_config": None} if json_logs else {}))
    finally:
        stop.set()


@app.command()
def rerun(batch: str, stage: Annotated[str, typer.Argument(help="batch_raw, batch_mapped, batch_validated, "
                                                                 "batch_normalized, records or review_checkpoint")]
          ) -> None:
    """Re-run one stage for one batch (in this process, recorded in the local Dagster instance)."""
    from claro_dagster.assets.onboarding import CHECKPOINT, STAGES
    from claro_dagster.catalogue.batches import BatchRegistry, InvalidBatchKey, check_batch_key
    from claro_dagster.definitions import build_definitions
    from claro_dagster.local import instance_for, run_batch

    if stage not in (*STAGES, CHECKPOINT, "batch_enriched"):
        raise user_error(f"unknown stage {stage!r}; stages are: {', '.join((*STAGES, CHECKPOINT))}"
                         " (and batch_enriched with batch_enrichment)")
    try:
        check_batch_key(batch)
    except InvalidBatchKey as exc:
        raise user_error(str(exc)) from None
    defs = build_definitions(ctx.spec_path, home_dir())
    registry = BatchRegistry(defs.resources["claro"].store)
    info = registry.get(batch)
    if info is None:
        raise user_error(f"no batch {batch!r}; `claro batches` lists them")
    result = run_batch(defs, instance_for(home_dir()), info, stages=(stage,), quiet=True)
    after = registry.get(batch)
    verdict = "done" if result.success else "failed"
    console.print(f"{stage} for {batch}: {verdict} (run {result.run_id}); batch is {after.status}: "
                  f"{after.message or ''}", highlight=False)
    if not result.success:
        raise typer.Exit(1)


@app.command()
def batches(catalogue: CatalogueOption = None, status: Annotated[str | None, typer.Option()] = None,
            format: FormatOption = "table") -> None:
    """Received batches and how far each got."""
    import pandas as pd

    from claro_dagster.catalogue.batches import BatchRegistry

    check_format(format)
    rows = BatchRegistry(ctx.store()).list(ctx.catalogue(catalogue) if catalogue else None, status)
    print_frame(pd.DataFrame([{"batch": b.key, "file": b.filename, "status": b.status, "stage": b.stage or "",
                               "message": b.message or ""} for b in rows],
                             columns=["batch", "file", "status", "stage", "message"]), format)


@app.command()
def analyse(catalogue: CatalogueOption = None,
            filter: Annotated[str | None, typer.Option("--filter", "-f")] = None) -> None:
    """Print the data-quality report of a catalogue (the same as the Analyse asset)."""
    from claro_dagster.assets.catalogue_ops import run_analyse

    report = run_analyse(_claro(), ctx.catalogue(catalogue), filter)
    console.print(report.to_markdown(), highlight=False, markup=False)


@app.command()
def enrich(catalogue: CatalogueOption = None,
           filter: Annotated[str | None, typer.Option("--filter", "-f", help="Only these records.")] = None,
           attribute: Annotated[list[str] | None, typer.Option(
               "--attribute", "-a", help="Only this attribute (repeatable; default: every attribute with "
                                         "'enrich' methods).")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be filled, queued and "
                                                                   "rejected; write nothing.")] = False) -> None:
    """Fill missing or weak values from each attribute's `enrich` methods (the same as the Enrich asset); the
    gate applies, queues or rejects each value. Undo a run with `claro rollback --run RUN`."""
    import uuid

    from claro_dagster.assets.enrich import run_enrich
    from claro_dagster.catalogue.enrichment import rejected_lines
    from claro_dagster.operations.enrich import ModelUnavailable

    name = ctx.catalogue(catalogue)
    run_id = f"enrich-cli-{uuid.uuid4().hex[:12]}"
    try:
        report = run_enrich(_claro(), name, run_id=run_id, filter=filter, attributes=attribute or None,
                            dry_run=dry_run)
    except ModelUnavailable as exc:
        raise user_error(f"{name}: {exc}") from exc
    for note in report.notes:
        console.print(note, highlight=False, markup=False)
    rows = [{"attribute": a, **c} for a, c in report.counts.items()]
    if rows:
        print_rows(rows, ["attribute", "wanted", "filled", "queued", "rejected", "unchanged", "already_proposed"],
                   "table", all_columns=True)
    for line in rejected_lines(report):
        console.print(f"rejected {line}", highlight=False, markup=False)
    console.print(report.summary(), highlight=False, markup=False)
    if report.change_sets:
        console.print(f"run {run_id}: undo with `claro rollback --run {run_id}`", highlight=False, markup=False)


@app.command()
def export(catalogue: CatalogueOption = None,
           format: Annotated[str, typer.Option("--format", help="csv, xlsx, jsonl, parquet, shopify_csv, "
                                                                "amazon_flat")] = "csv",
           filter: Annotated[str | None, typer.Option("--filter", "-f")] = None,
           columns: Annotated[str | None, typer.Option(help="Comma-separated fields, in order.")] = None,
           out: Annotated[Path | None, typer.Option("--out", help="File to write (default: under CLARO_HOME).")] = None
           ) -> None:
    """Export a catalogue (the same as the Export asset), with its progress on stderr."""
    from claro_dagster.assets.catalogue_ops import run_export
    from claro_dagster.progress import progress

    claro, name = _claro(), ctx.catalogue(catalogue)
    total = None if filter else claro.store.count(name)  # a filter's count would cost a query of its own
    with progress(f"export {name}", total=total, unit="records") as bar:  # advanced after each chunk written
        result = run_export(claro, name, format, filter, columns.split(",") if columns else None, "cli", path=out,
                            on_progress=bar.advance)
    console.print(f"{result.rows} record(s) -> {result.path}")


@app.command()
def push(destination: Annotated[str, typer.Argument(help="A shopify, amazon or rest destination, or `status`.")],
         target: Annotated[str | None, typer.Argument(help="With `status`: the destination to report on.")] = None,
         filter: Annotated[str | None, typer.Option("--filter", "-f", help="Only these records (the cursor stays "
                                                                            "put).")] = None,
         dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be created, updated and "
                                                                 "archived; send nothing.")] = False) -> None:
    """Push what changed to a sales channel (`claro push DEST`), or report its channel state
    (`claro push status DEST`)."""
    spec = ctx.spec()
    if destination == "status" and target is not None:
        return _push_status(target)
    dest = spec.destinations.get(destination)
    if dest is None:
        raise user_error(f"unknown destination {destination!r}; destinations are: {', '.join(spec.destinations)}")
    from claro_dagster.resources.sales_channels import CHANNEL_KINDS, push_destination

    if dest.kind not in CHANNEL_KINDS:
        raise user_error(f"{destination!r} is a {dest.kind} destination; `claro push` pushes "
                         f"{' and '.join(CHANNEL_KINDS)} destinations "
                         f"(sync the others with `claro run {dest.catalogue}/{destination}`)")
    from claro_dagster.catalogue.channels import ChannelError

    try:
        plan = push_destination(ctx.store(), destination, dest, filter=filter, dry_run=dry_run)
    except ChannelError as error:
        raise user_error(str(error)) from error
    verb = "would " if dry_run else ""
    for action, handles in (("create", plan.create), ("update", plan.update), ("archive", plan.archive)):
        for handle in handles:
            console.print(f"{verb}{action} {handle}", highlight=False, markup=False)
            for change in plan.changes.get(handle, []):
                console.print(f"  {change}", highlight=False, markup=False)
    for record, error in sorted(plan.failed.items()):
        console.print(f"failed {record}: {error}", highlight=False, markup=False)
    console.print(("dry run: " if dry_run else "") + plan.summary(), highlight=False, markup=False)
    if plan.failed and not dry_run:
        raise typer.Exit(1)


def _push_status(destination: str) -> None:
    from claro_dagster.catalogue.channels import ChannelState

    if destination not in ctx.spec().destinations:
        raise user_error(f"unknown destination {destination!r}; destinations are: "
                         f"{', '.join(ctx.spec().destinations)}")
    state = ChannelState(ctx.store())
    counts = state.counts(destination)
    console.print(f"{destination}: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing "
                                        "pushed yet"), highlight=False, markup=False)
    for entry in state.failures(destination):
        console.print(f"push.failed {entry.record} ({entry.group_key}): {entry.error}", highlight=False,
                      markup=False)


@mapping_app.command("show")
def mapping_show(source: str, format: Annotated[str, typer.Option("--format", help=(
        "table (default: each mapping file as it is), csv, or json: one JSON array with an object per mapped "
        "column (source, shape, status, column, attribute, score, path)"))] = "table") -> None:
    """Show the saved mappings of a source (column -> attribute), drafts included."""
    from claro_dagster.catalogue.mappings import MappingBook, MappingError

    check_format(format)
    book = MappingBook(home_dir() / "mappings")
    entries = book.list(source)
    if format != "table":
        rows = []
        for src, shape, path, status in entries:
            try:
                mapping = book.get(src, shape)
            except MappingError:  # a broken file: listed, with no columns
                mapping = None
            columns = mapping.source_columns if mapping is not None else (None,)
            rows += [{"source": src, "shape": shape, "status": status, "column": c,
                      "attribute": mapping.attribute_for[c] if mapping is not None else None,
                      "score": mapping.scores.get(c) if mapping is not None else None, "path": str(path)}
                     for c in columns]
        print_rows(rows, ["source", "shape", "status", "column", "attribute", "score", "path"], format,
                   all_columns=True)
        return
    if not entries:
        console.print(f"no mapping saved for {source} yet: the first batch from it drafts one")
    for _, shape, path, status in entries:
        console.print(f"[bold]{source}[/bold] shape {shape} ({status}): {path}")
        console.print(path.read_text(encoding="utf-8"), markup=False, highlight=False)


@mapping_app.command("edit")
def mapping_edit(source: str, shape: Annotated[str | None, typer.Argument()] = None) -> None:
    """Open a source's mapping in $EDITOR; the next batch of that shape uses it."""
    from claro_dagster.catalogue.mappings import MappingBook

    entries = MappingBook(home_dir() / "mappings").list(source)
    entries = [e for e in entries if shape is None or e[1] == shape]
    if not entries:
        raise user_error(f"no mapping saved for {source}" + (f" with shape {shape}" if shape else "") +
                         "; `claro mapping show SOURCE` lists them")
    if len(entries) > 1:
        raise user_error(f"{source} has {len(entries)} mappings; name the shape: " +
                         ", ".join(e[1] for e in entries))
    typer.edit(filename=str(entries[0][2]))
    console.print(f"saved {entries[0][2]}")


# -- claro duplicates: Find Duplicates' merge proposals (list, show side by side, merge, reject, unmerge) --------
duplicates_app = typer.Typer(help="Merge proposals of Find Duplicates (`<catalogue>/dedupe`): list, show, merge, "
                                  "reject, unmerge. Their ids are review item ids.", no_args_is_help=True)


def _duplicates():
    from claro_dagster.catalogue.duplicates import Duplicates

    return Duplicates(ctx.store())


@duplicates_app.command("find")
def find(catalogue: CatalogueOption = None,
         filter: Annotated[str | None, typer.Option("--filter", "-f")] = None) -> None:
    """Look for duplicates now (the same as the dedupe asset) and queue new merge proposals for review."""
    import uuid

    result = _duplicates().find(ctx.catalogue(catalogue), run_id=f"cli-{uuid.uuid4().hex[:12]}", filter=filter)
    console.print(result.summary(), highlight=False)


@duplicates_app.command("list")
def list_(catalogue: CatalogueOption = None,
          status: Annotated[str, typer.Option(help="open (default), merged, rejected, withdrawn, rolled_back, "
                                                   "or all")] = "open",
          format: FormatOption = "table") -> None:
    """Merge proposals: survivor, duplicate, score, status."""
    import pandas as pd

    check_format(format)
    found = _duplicates().list(ctx.catalogue(catalogue) if catalogue else None, None if status == "all" else status)
    columns = ["id", "catalogue", "survivor", "duplicate", "score", "status", "paired_by", "decided_by"]
    print_frame(pd.DataFrame([{"id": p.id, "catalogue": p.catalogue, "survivor": p.survivor, "duplicate": p.duplicate,
                               "score": p.score, "status": p.status, "paired_by": ",".join(p.blocked_by),
                               "decided_by": p.decided_by} for p in found], columns=columns), format)
    if format == "table":
        console.print(f"{len(found)} proposal(s)")


@duplicates_app.command("show")
def show(proposal: int) -> None:
    """Both records side by side, with per-field similarity and the value a merge keeps (and why)."""
    duplicates = _duplicates()
    p = duplicates.get(proposal)
    store = ctx.store()
    survivor, duplicate = store.record(p.catalogue, p.survivor) or {}, store.record(p.catalogue, p.duplicate) or {}
    table = Table(title=f"proposal {p.id} ({p.status}): merge {p.duplicate} into {p.survivor}, score {p.score:g}, "
                        f"paired by {', '.join(p.blocked_by)}")
    for column in ("field", f"{p.survivor} (survivor)", f"{p.duplicate} (duplicate)", "similarity", "keeps",
                   "reason"):
        table.add_column(column, overflow="fold")
    for field in store.catalogue(p.catalogue).attributes:
        sim = p.similarity.get(field)
        keep = p.keep.get(field, {})
        table.add_row(field, _cell(survivor.get(field)), _cell(duplicate.get(field)),
                      "" if sim is None else f"{sim:g}", _cell(keep.get("value")) if keep else "",
                      keep.get("reason", ""))
    console.print(table, highlight=False, markup=False)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


@duplicates_app.command("merge")
def merge(proposal: int, by: ByOption = None, note: str | None = None) -> None:
    """Merge the duplicate into the survivor (through the change-set writer; `claro duplicates unmerge` undoes it)."""
    result = _duplicates().merge(proposal, by=who(by), note=note)
    p = _duplicates().get(proposal)
    console.print(f"merged {p.duplicate} into {p.survivor}: {result.applied} value(s) written (run {p.merge_run})",
                  highlight=False)


@duplicates_app.command("reject")
def reject(proposal: int, by: ByOption = None, note: str | None = None) -> None:
    """Not duplicates: the pair is never proposed again."""
    p = _duplicates().reject(proposal, by=who(by), note=note)
    console.print(f"rejected: {p.survivor} and {p.duplicate} will not be proposed again", highlight=False)


@duplicates_app.command("unmerge")
def unmerge(proposal: int, by: ByOption = None) -> None:
    """Roll back a merge: both records and every repointed reference get their values from before it."""
    result = _duplicates().unmerge(proposal, by=who(by))
    console.print(f"unmerged proposal {proposal}: " + (result.summary() if result else "it had changed no value"),
                  highlight=False)


app.add_typer(duplicates_app, name="duplicates")


# `claro monitor show|history` (cli_monitor.py uses this module's helpers, so it is added once they exist)
from claro_dagster.cli_monitor import monitor_app  # noqa: E402

app.add_typer(monitor_app, name="monitor")


def main() -> None:
    """Entry point: user errors print as one clear line and exit 1, never as a traceback."""
    try:
        app()
    except Exception as exc:
        message = _user_message(exc)
        if message is None:
            raise
        err.print(message, highlight=False, markup=False)
        sys.exit(1)


def _user_message(exc: Exception) -> str | None:
    """The line to print for an error the user can fix, else None. The error classes are looked up among the
    modules already loaded: an instance of a class whose module was never imported cannot have been raised."""
    loader, changes, filters = (sys.modules.get(f"claro_dagster.{m}") for m in
                                ("spec.loader", "catalogue.changes", "catalogue.filters"))
    if loader is not None and isinstance(exc, loader.SpecError):
        return str(exc)
    if (changes is not None and isinstance(exc, changes.StoreError)) or \
            (filters is not None and isinstance(exc, filters.FilterError)):
        return f"error: {exc}"
    return None


if __name__ == "__main__":
    main()

