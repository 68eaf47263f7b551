"""The Supplier Portal (`/portal`): a supplier uploads CSV or XLSX files for their own source and sees at once what
the pipeline will make of them. Server-rendered HTML without JavaScript; the logic lives in `catalogue/portal.py`.

Routes (all but login need the session cookie; every POST carries the CSRF token of the session):
    GET  /portal/login?token=...           the supplier's link (`claro portal invite SOURCE`): sets the session
    GET  /portal                           upload form, templates, uploads waiting for their columns, history
    POST /portal/upload                    multipart upload (field `file`), streamed to disk, size-capped
    GET  /portal/mapping/{id}              the proposed column mapping of a new file shape
    POST /portal/mapping/{id}              confirm it (the file is then checked)
    GET  /portal/batches/{key}             one batch: outcome, error budget, its rows' errors (?sort=&order=)
    GET  /portal/batches/{key}/errors.csv  those errors (line, column, value, reason)
    GET  /portal/batches/{key}/rejected.csv  the rejected rows as sent, with line and reasons
    GET  /portal/template.csv | .xlsx      the source's template
    POST /portal/logout

The session cookie (`claro_portal`, path /portal) is signed with `CLARO_WEB_SECRET` and names the link and its
source; every request checks the link is still neither revoked nor expired, and a supplier only ever sees their own
source's batches (another source's batch key answers 404).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from claro_dagster.catalogue.access import AccessDenied, AccessTokens
from claro_dagster.catalogue.common import now
from claro_dagster.catalogue.portal import (
    ERROR_COLUMNS,
    Outcome,
    Portal,
    PortalError,
    Result,
    UploadTooLarge,
    UploadWriter,
)
from claro_dagster.resources import alerts
from claro_dagster.web.pages import HEADERS, LinkSessions, esc, page

log = logging.getLogger(__name__)

COOKIE = "claro_portal"
SESSION_HOURS = 12
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 20
#: Room for the multipart framing and the small fields around the file.
FORM_OVERHEAD = 64 * 1024
SORTABLE = ("line", "column", "value", "reason")
#: Problems shown on a batch's page (sorted first, so any can be brought up); the CSV download has them all.
MAX_SHOWN = 1000
STATUS_CLASS = {"published": "ok", "awaiting review": "ok", "halted": "error", "quarantined": "error",
                "failed": "error"}


def refused(message: str, status_code: int = 403) -> HTMLResponse:
    return page("Access refused", f'<h1>Access refused</h1><p class="status error" role="alert">{esc(message)}</p>'
                                  "<p>Portal links are personal to your company and made by the catalogue team.</p>",
                status_code)


class _Form:
    """A multipart form read as a stream: small fields kept, the one file written through an UploadWriter."""

    def __init__(self, open_writer: Callable[[], UploadWriter]):
        self.open_writer = open_writer
        self.fields: dict[str, str] = {}
        self.writer: UploadWriter | None = None
        self.filename = ""
        self._name = ""
        self._is_file = False
        self._value = bytearray()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        def on_part_begin():
            self._headers, self._value, self._is_file = {}, bytearray(), False

        def on_header_field(data, start, end):
            self._header_field += data[start:end]

        def on_header_value(data, start, end):
            self._header_value += data[start:end]

        def on_header_end():
            self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
            self._header_field, self._header_value = bytearray(), bytearray()

        def on_headers_finished():
            _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            if b"filename" in options:
                if self.writer is not None or self._name != "file":
                    raise PortalError("Upload one file at a time, in the form's file field.")
                self._is_file = True
                self.filename = options[b"filename"].decode("utf-8", "replace")
                self.writer = self.open_writer()
            elif len(self.fields) >= MAX_FIELDS:
                raise PortalError("The form has too many fields.")

        def on_part_data(data, start, end):
            if self._is_file:
                self.writer.write(data[start:end])
            else:
                self._value += data[start:end]
                if len(self._value) > MAX_FIELD_BYTES:
                    raise PortalError("A form field is too long.")

        def on_part_end():
            if not self._is_file:
                self.fields[self._name] = self._value.decode("utf-8", "replace")

        return {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                "on_header_value": on_header_value, "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end}

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class PortalPage:
    def __init__(self, spec_loader: Callable[[], Any], store_factory: Callable[[Any], Any], home: str | Path, *,
                 secret: str | None = None, clock: Callable[[], datetime] = now):
        self.spec_loader = spec_loader
        self.store_factory = store_factory
        self.home = Path(home)
        self.clock = clock
        self.sessions = LinkSessions("portal", COOKIE, "/portal", SESSION_HOURS, "s", refused, secret)

    def _with_portal(self, fn: Callable[[Portal], Any]) -> Any:
        spec = self.spec_loader()
        store = self.store_factory(spec)
        try:
            return fn(Portal(spec, store, self.home, clock=self.clock))
        finally:
            store.dispose()

    async def _signed_in(self, request: Request) -> tuple[dict | None, Response | None]:
        return await self.sessions.signed_in(request, lambda link: self._with_portal(
            lambda portal: AccessTokens(portal.store, clock=self.clock).still_valid(link)))

    # ------------------------------------------------------------------ sign in and out
    async def login(self, request: Request) -> Response:
        def verify(token: str, client: str):
            def check(portal: Portal):
                found = AccessTokens(portal.store, clock=self.clock).verify(token, kind="portal", client=client)
                try:
                    portal.source(found.subject)
                except PortalError as exc:
                    raise AccessDenied(exc.message) from None
                return found
            return self._with_portal(check)

        return await self.sessions.login(request, verify)

    async def logout(self, request: Request) -> Response:
        return await self.sessions.logout(request)

    # ------------------------------------------------------------------ home
    async def home_page(self, request: Request) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        source = session["s"]

        def load(portal: Portal):
            return (portal.source(source), portal.max_bytes(source), portal.pending(source), portal.history(source),
                    portal.spec.catalogues[portal.source(source).catalogue])

        try:
            spec_source, limit, pending, history, cat = await run_in_threadpool(self._with_portal, load)
        except PortalError as exc:
            return refused(exc.message, exc.status)
        flash = session.pop("flash", None)
        body = (f"<h1>Supplier Portal: {esc(source)}</h1>"
                f"<p>Upload your product file for the <strong>{esc(spec_source.catalogue)}</strong> catalogue. "
                "You see at once which rows are accepted and which need fixing.</p>"
                + self._logout(session) + (f'<p class="status" role="status">{esc(flash)}</p>' if flash else "")
                + self._upload_form(session, limit) + self._templates(cat)
                + self._pending(pending) + self._history(history))
        response = page(f"Supplier Portal: {source}", body)
        if flash is not None:
            self.sessions.save(response, request, session)
        return response

    def _logout(self, session: dict) -> str:
        return (f'<form method="post" action="/portal/logout" class="inline"><input type="hidden" name="csrf" '
                f'value="{esc(session["csrf"])}"><button type="submit" class="secondary">Sign out</button></form>')

    def _upload_form(self, session: dict, limit: int) -> str:
        return ('<form method="post" action="/portal/upload" enctype="multipart/form-data" aria-labelledby="up">'
                f'<fieldset><legend id="up">Upload a file</legend><input type="hidden" name="csrf" '
                f'value="{esc(session["csrf"])}"><label for="file">CSV or Excel (.xlsx) file, at most '
                f'{limit / 1024 / 1024:.3g} MB</label> <input type="file" id="file" name="file" required '
                'accept=".csv,.txt,.tsv,.xlsx,text/csv,application/vnd.openxmlformats-officedocument.spreadsheetml.sheet">'
                ' <button type="submit">Upload and check</button></fieldset></form>')

    def _templates(self, cat) -> str:
        required = ", ".join(n for n, a in cat.attributes.items() if a.required)
        return ('<section aria-labelledby="tpl"><h2 id="tpl">Templates</h2><p>The catalogue\'s columns with an '
                f'example row; required columns ({esc(required)}) are marked “(required)”. The Excel template offers '
                'the allowed values as drop-down lists.</p><ul><li><a href="/portal/template.csv" download>'
                'Download the CSV template</a></li><li><a href="/portal/template.xlsx" download>Download the Excel '
                "template</a></li></ul></section>")

    def _pending(self, pending) -> str:
        if not pending:
            return ""
        items = "".join(f'<li><a href="/portal/mapping/{esc(p.id)}">Confirm the columns of {esc(p.filename)}</a> '
                        f'(uploaded {p.uploaded_at:%Y-%m-%d %H:%M} UTC)</li>' for p in pending)
        return f'<section aria-labelledby="pend"><h2 id="pend">Waiting for you</h2><ul>{items}</ul></section>'

    def _history(self, history: list[Result]) -> str:
        if not history:
            return '<section aria-labelledby="hist"><h2 id="hist">Your uploads</h2><p>No uploads yet.</p></section>'
        rows = []
        for r in history:
            b = r.batch
            cls = STATUS_CLASS.get(r.label, "")
            link = f"/portal/batches/{quote(b.key)}"
            download = (f'<a href="{link}/rejected.csv" download>rejected rows (CSV)</a>' if r.rejected else "")
            rows.append(f'<tr><td><a href="{link}">{esc(b.filename)}</a></td>'
                        f"<td>{b.received_at:%Y-%m-%d %H:%M}</td>"
                        f'<td><span class="badge {cls}">{esc(r.label)}</span></td>'
                        f"<td>{_n(r.rows_in)}</td><td>{_n(r.accepted)}</td><td>{_n(r.rejected)}</td>"
                        f"<td>{download}</td></tr>")
        return ('<section aria-labelledby="hist"><h2 id="hist">Your uploads</h2><table><caption>'
                f'{len(history)} upload(s), newest first</caption><thead><tr><th scope="col">File</th>'
                '<th scope="col">Received (UTC)</th><th scope="col">Status</th><th scope="col">Rows</th>'
                '<th scope="col">Accepted</th><th scope="col">Rejected</th><th scope="col">Download</th></tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table></section>")

    # ------------------------------------------------------------------ upload
    async def upload(self, request: Request) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        source = session["s"]
        try:
            folder, limit = await run_in_threadpool(self._with_portal, lambda p: (p.incoming(source),
                                                                                 p.max_bytes(source)))
        except PortalError as exc:
            return self._error_page(exc, session)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
            return self._error_page(UploadTooLarge(limit), session, close=True)
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            return self._error_page(PortalError("Send the file with the upload form."), session)
        form = _Form(lambda: UploadWriter(folder, limit))
        parser = MultipartParser(boundary, form.callbacks())
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except PortalError as exc:
            form.abort()
            log.warning("portal upload for %s refused: %s", source, exc.message)
            return self._error_page(exc, session, close=True)
        except MultipartParseError:
            form.abort()
            return self._error_page(PortalError("The upload was cut off or is not a form. Try again."), session)
        if not hmac.compare_digest(form.fields.get("csrf", ""), session["csrf"]):
            form.abort()
            return refused("The form's security token does not match your session: reload the portal and try again.")
        if form.writer is None:
            return self._error_page(PortalError("Choose a file to upload."), session)
        try:
            staged = form.writer.finish(form.filename)
        except PortalError as exc:
            return self._error_page(exc, session)
        try:
            outcome = await run_in_threadpool(self._with_portal, lambda p: p.submit(source, staged))
        except PortalError as exc:
            return self._error_page(exc, session)
        await self._announce(outcome)
        if outcome.kind == "needs_mapping":
            return RedirectResponse(f"/portal/mapping/{outcome.pending}", status_code=303, headers=HEADERS)
        session["flash"] = _short(outcome.message)
        response = RedirectResponse(f"/portal/batches/{quote(outcome.key)}", status_code=303, headers=HEADERS)
        self.sessions.save(response, request, session)
        return response

    async def _announce(self, outcome: Outcome) -> None:
        """A batch the portal halts or quarantines never reaches a run: its `batch.halted` alert is sent here."""
        if outcome.kind not in ("halted", "quarantined") or outcome.key is None:
            return

        def announce(portal: Portal) -> None:
            batch = portal.registry.get(outcome.key)
            pipeline = next((n for n, p in portal.spec.pipelines.items() if batch.source in p.sources), None)
            stage = "batch_validated" if outcome.kind == "halted" else "batch_raw"
            alerts.send(portal.spec, alerts.batch_halted(batch, pipeline=pipeline, stage=stage), logger=log)

        await run_in_threadpool(self._with_portal, announce)

    def _error_page(self, exc: PortalError, session: dict, *, close: bool = False) -> Response:
        body = (f'<h1>Upload refused</h1><p class="status error" role="alert">{esc(exc.message)}</p>'
                '<p><a href="/portal">Back to the portal</a></p>')
        response = page("Upload refused", body, exc.status)
        if close:  # the rest of an oversized body is not read: the connection cannot be reused
            response.headers["Connection"] = "close"
        return response

    # ------------------------------------------------------------------ mapping of a new shape
    async def mapping(self, request: Request) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        source, pending_id = session["s"], request.path_params["id"]
        if request.method == "POST":
            form = await request.form(max_files=0, max_fields=500)
            if not hmac.compare_digest(str(form.get("csrf", "")), session["csrf"]):
                return refused("The form's security token does not match your session: reload the page and try "
                               "again.")

            def confirm(portal: Portal):
                waiting = portal.get_pending(source, pending_id)
                choices = {c: str(form.get(f"col-{i}", "")) for i, c in enumerate(waiting.columns)}
                return portal.confirm_mapping(source, pending_id, choices)

            try:
                outcome = await run_in_threadpool(self._with_portal, confirm)
            except PortalError as exc:
                if exc.status == 404:
                    return self._error_page(exc, session)
                return await self._mapping_page(session, source, pending_id, exc.message)
            await self._announce(outcome)
            session["flash"] = _short(outcome.message)
            response = RedirectResponse(f"/portal/batches/{quote(outcome.key)}", status_code=303, headers=HEADERS)
            self.sessions.save(response, request, session)
            return response
        return await self._mapping_page(session, source, pending_id, None)

    async def _mapping_page(self, session: dict, source: str, pending_id: str, problem: str | None) -> Response:
        def load(portal: Portal):
            return portal.get_pending(source, pending_id), portal.spec.catalogues[portal.source(source).catalogue]

        try:
            waiting, cat = await run_in_threadpool(self._with_portal, load)
        except PortalError as exc:
            return self._error_page(exc, session)
        rows = []
        for i, column in enumerate(waiting.columns):
            chosen = waiting.mapping.attribute_for.get(column)
            options = '<option value="">ignore this column</option>' + "".join(
                f'<option value="{esc(n)}"{" selected" if n == chosen else ""}>{esc(n)}'
                f'{" (required)" if a.required else ""}</option>' for n, a in cat.attributes.items())
            rows.append(f'<tr><th scope="row"><label for="col-{i}">{esc(column)}</label></th>'
                        f'<td><select id="col-{i}" name="col-{i}">{options}</select></td></tr>')
        note = f'<p class="status error" role="alert">{esc(problem)}</p>' if problem else ""
        body = (f"<h1>Confirm the columns of {esc(waiting.filename)}</h1>"
                "<p>This is the first file with these columns. Check which catalogue field each column holds (we "
                "proposed the closest match), then confirm. Files with the same columns are mapped this way "
                f"automatically from now on.</p>{note}"
                f'<form method="post" action="/portal/mapping/{esc(waiting.id)}"><input type="hidden" name="csrf" '
                f'value="{esc(session["csrf"])}"><table><caption>Your columns and the catalogue fields they hold'
                '</caption><thead><tr><th scope="col">Your column</th><th scope="col">Catalogue field</th></tr>'
                f'</thead><tbody>{"".join(rows)}</tbody></table><p><button type="submit">Confirm and check the '
                'file</button> <a href="/portal">Not now</a></p></form>')
        return page("Confirm columns", body, 400 if problem else 200)

    # ------------------------------------------------------------------ one batch
    async def batch(self, request: Request) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        source, key = session["s"], request.path_params["key"]
        try:
            result = await run_in_threadpool(self._with_portal, lambda p: p.result(source, key))
        except PortalError as exc:
            return page("Not found", f'<h1>Not found</h1><p class="status error" role="alert">{esc(exc.message)}</p>'
                                     '<p><a href="/portal">Back to the portal</a></p>', exc.status)
        sort = request.query_params.get("sort", "line")
        sort = sort if sort in SORTABLE else "line"
        order = "desc" if request.query_params.get("order") == "desc" else "asc"
        flash = session.pop("flash", None)
        response = page(f"Batch {result.batch.filename}", self._render_batch(result, sort, order, flash))
        if flash is not None:
            self.sessions.save(response, request, session)
        return response

    def _render_batch(self, r: Result, sort: str, order: str, flash: str | None) -> str:
        b = r.batch
        cls = STATUS_CLASS.get(r.label, "")
        link = f"/portal/batches/{quote(b.key)}"
        facts = [("Status", f'<span class="badge {cls}">{esc(r.label)}</span>'),
                 ("Received", f"{b.received_at:%Y-%m-%d %H:%M} UTC"), ("Rows", _n(r.rows_in)),
                 ("Accepted", _n(r.accepted)), ("Rejected", _n(r.rejected))]
        if r.error_rate is not None and r.error_budget is not None:
            within = r.error_rate <= r.error_budget
            facts.append(("Error budget", f"{r.error_rate:.1%} of rows rejected; the budget is {r.error_budget:.0%}: "
                                          f"<strong>{'within budget' if within else 'over budget'}</strong>"))
        facts.append(("Details", esc(b.message or "")))
        dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
        what_next = {
            "halted": "Nothing from this file was published. Fix the rows listed below (or download them), then "
                      "upload the whole file again.",
            "quarantined": "The file could not be processed. Fix what the details say and upload it again.",
            "publishing": "The accepted rows are being published; this page and your history show when they are. "
                          "Rejected rows are left out: fix them and upload them again.",
            "published": "The accepted rows are in the catalogue.",
            "awaiting review": "The accepted rows are published; some changes wait for the catalogue team's review.",
        }.get(r.label, "")
        notes = (f'<p class="status" role="status">{esc(flash)}</p>' if flash else "") + \
            (f"<p>{esc(what_next)}</p>" if what_next else "")
        errors = r.errors
        if len(errors):
            ascending = order == "asc"
            keyed = errors.sort_values(sort, ascending=ascending, kind="stable",
                                       key=(lambda s: pd.to_numeric(s, errors="coerce")) if sort == "line" else
                                       (lambda s: s.astype(str).str.casefold()))
            heads = []
            for col in ERROR_COLUMNS:
                next_order = "desc" if col == sort and ascending else "asc"
                aria = (f' aria-sort="{"ascending" if ascending else "descending"}"' if col == sort else "")
                arrow = (" ▲" if ascending else " ▼") if col == sort else ""
                heads.append(f'<th scope="col"{aria}><a href="{link}?{urlencode({"sort": col, "order": next_order})}"'
                             f'>{col.capitalize()}{arrow}<span class="small"> (sort)</span></a></th>')
            body = "".join(f"<tr><td>{_line(e['line'])}</td><td>{esc(e['column'])}</td><td>{esc(e['value'])}</td>"
                           f"<td>{esc(e['reason'])}</td></tr>" for e in keyed.head(MAX_SHOWN).to_dict("records"))
            shown = f"; the first {MAX_SHOWN:,} are shown, download them all below" if len(errors) > MAX_SHOWN else ""
            table = (f'<table id="errors"><caption>{len(errors):,} problem(s) in {_n(r.rejected)} rejected row(s), '
                     f'sorted by {sort} ({"ascending" if ascending else "descending"}){shown}</caption><thead><tr>'
                     f'{"".join(heads)}</tr></thead><tbody>{body}</tbody></table>'
                     f'<p><a href="{link}/errors.csv" download>Download these problems (CSV)</a> · '
                     f'<a href="{link}/rejected.csv" download>Download the rejected rows as you sent them (CSV)'
                     '</a></p>')
        else:
            table = "<p>No row was rejected.</p>" if r.label != "quarantined" else ""
        return (f"<h1>{esc(b.filename)}</h1><p><a href=\"/portal\">Back to the portal</a></p>{notes}"
                f'<dl class="facts">{dl}</dl><h2>Rejected rows</h2>{table}')

    async def errors_csv(self, request: Request) -> Response:
        return await self._download(request, lambda p, s, k: p.result(s, k).errors, "errors")

    async def rejected_csv(self, request: Request) -> Response:
        return await self._download(request, lambda p, s, k: p.rejected_rows(s, k), "rejected")

    async def _download(self, request: Request, get, what: str) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        key = request.path_params["key"]
        try:
            frame = await run_in_threadpool(self._with_portal, lambda p: get(p, session["s"], key))
        except PortalError as exc:
            return refused(exc.message, exc.status)
        body = ("\ufeff" + frame.to_csv(index=False, lineterminator="\r\n")).encode("utf-8")
        return _attachment(body, f"{key}.{what}.csv", "text/csv; charset=utf-8")

    async def template(self, request: Request) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        fmt = request.url.path.rsplit(".", 1)[-1]
        source = session["s"]
        if fmt == "csv":
            body = await run_in_threadpool(self._with_portal, lambda p: p.template_csv(source))
            return _attachment(body, f"{source}-template.csv", "text/csv; charset=utf-8")
        body = await run_in_threadpool(self._with_portal, lambda p: p.template_xlsx(source))
        return _attachment(body, f"{source}-template.xlsx",
                           "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


def _short(message: str, limit: int = 400) -> str:
    """A message for the session cookie (a browser drops a cookie over 4 KB); the batch page shows it whole."""
    return message if len(message) <= limit else message[:limit - 1] + "…"


def _attachment(body: bytes, filename: str, media_type: str) -> Response:
    return Response(body, media_type=media_type,
                    headers={**HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'})


def _line(value: Any) -> str:
    """A line number as the supplier's spreadsheet shows it (no thousands separator)."""
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "–"


def _n(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{int(value):,}" if isinstance(value, int | float) else esc(value)


def portal_routes(page_: PortalPage) -> list[BaseRoute]:
    return [Route("/portal/login", page_.login, methods=["GET"]), Route("/portal", page_.home_page, methods=["GET"]),
            Route("/portal/upload", page_.upload, methods=["POST"]),
            Route("/portal/mapping/{id}", page_.mapping, methods=["GET", "POST"]),
            Route("/portal/batches/{key}", page_.batch, methods=["GET"]),
            Route("/portal/batches/{key}/errors.csv", page_.errors_csv, methods=["GET"]),
            Route("/portal/batches/{key}/rejected.csv", page_.rejected_csv, methods=["GET"]),
            Route("/portal/template.csv", page_.template, methods=["GET"], name="template_csv"),
            Route("/portal/template.xlsx", page_.template, methods=["GET"], name="template_xlsx"),
            Route("/portal/logout", page_.logout, methods=["POST"])]
