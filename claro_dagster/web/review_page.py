"""The review page (`/review`): the review queue for the catalogue team, server-rendered HTML without JavaScript.

Routes:
    GET  /review/login?token=...   a reviewer's personal link (`claro review invite`): sets the session cookie
    GET  /review                   the queue, with the filters of `claro review list`
    POST /review/decide            approve, reject, edit, skip or snooze one item or the checked ones
    POST /review/logout            ends the session

The session is a cookie signed with itsdangerous (HttpOnly, SameSite=Lax, Secure on https, path /review) holding
the link's id, the reviewer and a CSRF token; every request checks the link is still neither revoked nor expired,
and every POST carries the CSRF token in a hidden field. The signing secret is `CLARO_WEB_SECRET`; without it a
random one is made per process (sessions then end when `claro serve` restarts). Decisions go through the same
`ReviewQueue` calls as `claro review`, with the signed-in reviewer as `by`.

Pages are built from small helpers that escape every value (`html.escape`); a page has labels for every control,
a caption and header scopes in the table, a visible focus ring and dark-on-light text.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from claro_dagster.catalogue.access import AccessDenied, AccessTokens, known_reviewers
from claro_dagster.catalogue.changes import StoreError
from claro_dagster.catalogue.common import now
from claro_dagster.catalogue.review import ReviewItem, ReviewQueue
from claro_dagster.web.duplicates_view import load_merges, merge_table
from claro_dagster.web.pages import HEADERS, LinkSessions, esc, page, show

COOKIE = "claro_review"
SESSION_HOURS = 12
FILTERS = ("catalogue", "operation", "attribute", "source", "min_confidence", "max_confidence", "reviewer")
ACTIONS = ("approve", "reject", "edit", "skip", "snooze")
MAX_FORM_BYTES = 1024 * 1024
def refused(message: str, status_code: int = 403) -> HTMLResponse:
    return page("Access refused", f"<h1>Access refused</h1><p class=\"status error\" role=\"alert\">{esc(message)}"
                                  "</p><p>Review links are personal and made with <code>claro review invite</code>."
                                  "</p>", status_code)


class ReviewPage:
    def __init__(self, spec_loader: Callable[[], Any], store_factory: Callable[[Any], Any], *,
                 secret: str | None = None, clock: Callable[[], datetime] = now):
        self.spec_loader = spec_loader
        self.store_factory = store_factory
        self.clock = clock
        self.sessions = LinkSessions("review", COOKIE, "/review", SESSION_HOURS, "r", refused, secret)

    # ------------------------------------------------------------------ store access (in a worker thread)
    def _with_store(self, fn: Callable[[Any, Any], Any]) -> Any:
        spec = self.spec_loader()
        store = self.store_factory(spec)
        try:
            return fn(spec, store)
        finally:
            store.dispose()

    # ------------------------------------------------------------------ session
    async def _signed_in(self, request: Request) -> tuple[dict | None, Response | None]:
        return await self.sessions.signed_in(request, lambda link: self._with_store(
            lambda _spec, store: AccessTokens(store, clock=self.clock).still_valid(link)))

    # ------------------------------------------------------------------ routes
    async def login(self, request: Request) -> Response:
        def verify(token: str, client: str):
            def check(spec, store):
                found = AccessTokens(store, clock=self.clock).verify(token, kind="review", client=client)
                if found.subject not in known_reviewers(spec):
                    raise AccessDenied(f"{found.subject} is no longer a reviewer of this project.")
                return found
            return self._with_store(check)

        return await self.sessions.login(request, verify)

    async def logout(self, request: Request) -> Response:
        return await self.sessions.logout(request)

    async def queue(self, request: Request) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        filters = {k: request.query_params.get(k, "").strip() for k in FILTERS}
        criteria, problem = self._criteria(filters)

        def load(spec, store):
            items = ReviewQueue(store).list(**criteria) if problem is None else []
            return spec, items, load_merges(store, items)

        try:
            spec, items, merges = await run_in_threadpool(self._with_store, load)
        except StoreError as exc:
            spec, items, merges, problem = self.spec_loader(), [], {}, str(exc)
        flash = session.pop("flash", None)
        response = page("Review queue", self._render(spec, session, filters, items, flash, problem, merges))
        if flash is not None:
            self.sessions.save(response, request, session)
        return response

    async def decide(self, request: Request) -> Response:
        session, refusal = await self._signed_in(request)
        if refusal:
            return refusal
        form = await request.form(max_files=0, max_fields=5000, max_part_size=MAX_FORM_BYTES)
        if not hmac.compare_digest(str(form.get("csrf", "")), session["csrf"]):
            return refused("The form's security token does not match your session: reload the review page and "
                           "try again.")
        one = str(form.get("one", ""))
        if one:  # a row's own button: "approve:12"
            action, _, raw_id = one.partition(":")
            raw_ids = [raw_id]
        else:
            action, raw_ids = str(form.get("action", "")), [str(v) for v in form.getlist("ids")]
        back = "/review?" + urlencode({k: str(form.get(f"f_{k}", "")) for k in FILTERS if form.get(f"f_{k}")})
        try:
            ids = [int(x) for x in raw_ids]
        except ValueError:
            ids, action = [], "invalid"
        if action not in ACTIONS:
            message = f"Unknown action {action!r}: choose approve, reject, edit, skip or snooze."
        elif not ids:
            message = "Select at least one item (the checkboxes in the first column), then choose an action."
        else:
            note = str(form.get("note", "")).strip() or None
            try:
                message = await run_in_threadpool(self._with_store, lambda _spec, store: self._apply(
                    ReviewQueue(store), action, ids, form, session["r"], note))
            except StoreError as exc:
                message = f"Nothing was decided: {exc}"
        session["flash"] = message
        response = RedirectResponse(back.rstrip("?"), status_code=303, headers=HEADERS)
        self.sessions.save(response, request, session)
        return response

    def _apply(self, queue: ReviewQueue, action: str, ids: list[int], form, by: str, note: str | None) -> str:
        if action == "approve":
            result = queue.approve(ids, by=by, note=note)
            return f"Approved {len(ids)} item(s): {result.applied} value(s) written, {result.unchanged} already " \
                   "as proposed."
        if action == "reject":
            return f"Rejected {queue.reject(ids, by=by, note=note)} item(s)."
        if action == "skip":
            return f"Skipped {queue.skip(ids, by=by, note=note)} item(s)."
        if action == "snooze":
            raw = str(form.get("until", "")).strip()
            try:
                until = datetime.fromisoformat(raw)
            except ValueError:
                raise StoreError(f"snooze needs a date and time (UTC), e.g. 2026-12-01T09:00, not {raw!r}") from None
            until = until if until.tzinfo else until.replace(tzinfo=UTC)
            return f"Snoozed {queue.snooze(ids, until, by=by, note=note)} item(s) until {until:%Y-%m-%d %H:%M} UTC."
        values = {i: str(form.get(f"value-{i}", "")) for i in ids}
        missing = [i for i, v in values.items() if not v.strip()]
        if missing:
            raise StoreError(f"type the new value of item(s) {', '.join(map(str, missing))} in its "
                             "'New value' box to edit")
        for i, value in values.items():
            queue.edit(i, value, by=by, note=note)
        return f"Edited {len(ids)} item(s) with your value(s)."

    @staticmethod
    def _criteria(filters: dict[str, str]) -> tuple[dict, str | None]:
        criteria: dict[str, Any] = {k: (v or None) for k, v in filters.items()}
        for k in ("min_confidence", "max_confidence"):
            if filters[k]:
                try:
                    criteria[k] = float(filters[k])
                except ValueError:
                    return {}, f"{k.replace('_', ' ')} must be a number, not {filters[k]!r}"
        return criteria, None

    # ------------------------------------------------------------------ HTML
    def _render(self, spec, session: dict, filters: dict[str, str], items: list[ReviewItem], flash: str | None,
                problem: str | None, merges: dict | None = None) -> str:
        reviewer = session["r"]
        choices = {
            "catalogue": list(spec.catalogues),
            "source": list(spec.sources),
            "reviewer": sorted({*known_reviewers(spec), *spec.reviewers}),
        }
        fields = []
        for name in FILTERS:
            label = name.replace("_", " ").capitalize()
            if name in choices:
                options = "".join(f'<option value="{esc(v)}"{" selected" if v == filters[name] else ""}>{esc(v)}'
                                  "</option>" for v in choices[name])
                control = f'<select id="f-{name}" name="{name}"><option value="">any</option>{options}</select>'
            else:
                kind = ' inputmode="decimal"' if "confidence" in name else ""
                control = f'<input id="f-{name}" name="{name}" value="{esc(filters[name])}"{kind} size="10">'
            fields.append(f'<label for="f-{name}">{esc(label)}</label>{control}')
        filter_form = (f'<form method="get" action="/review" aria-label="Filters"><fieldset><legend>Filters'
                       f'</legend>{" ".join(fields)}<button type="submit">Apply filters</button> '
                       f'<a href="/review">Clear</a></fieldset></form>')
        csrf = f'<input type="hidden" name="csrf" value="{esc(session["csrf"])}">'
        keep = "".join(f'<input type="hidden" name="f_{k}" value="{esc(v)}">' for k, v in filters.items() if v)
        notes = ""
        if flash:
            cls = " error" if flash.startswith("Nothing") or flash.startswith("Select") or \
                flash.startswith("Unknown") else ""
            notes += f'<p class="status{cls}" role="status">{esc(flash)}</p>'
        if problem:
            notes += f'<p class="status error" role="alert">{esc(problem)}</p>'
        # A merge proposal (Find Duplicates) gets a row of its own below it: both records side by side.
        rows = "".join(self._row(i) + (f'<tr><td colspan="9">{merge_table(i.id, *merges[i.id])}</td></tr>'
                                       if merges and i.id in merges else "") for i in items)
        until = (self.clock() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
        bulk = ('<fieldset><legend>Decide on the checked items</legend>'
                '<label for="action">Action</label><select id="action" name="action">'
                + "".join(f'<option value="{a}">{a}</option>' for a in ACTIONS) +
                f'</select> <label for="until">Snooze until (UTC)</label>'
                f'<input type="datetime-local" id="until" name="until" value="{until}"> '
                f'<label for="note">Note</label><input id="note" name="note" size="30"> '
                f'<button type="submit" name="bulk" value="1">Apply to checked items</button>'
                f'<p class="small">Edit uses each checked item\'s “New value” box.</p></fieldset>')
        table = (f'<table><caption>{len(items)} open item(s)</caption><thead><tr>'
                 '<th scope="col">Select</th><th scope="col">Item</th><th scope="col">Record and field</th>'
                 '<th scope="col">Current</th><th scope="col">Proposed</th><th scope="col">Confidence</th>'
                 '<th scope="col">Source and citation</th><th scope="col">New value</th>'
                 f'<th scope="col">Decide</th></tr></thead><tbody>{rows}</tbody></table>'
                 if items else "<p>Nothing is waiting for review with these filters.</p>")
        queue_form = (f'<form method="post" action="/review/decide">{csrf}{keep}{bulk if items else ""}{table}'
                      "</form>")
        logout = (f'<form method="post" action="/review/logout">{csrf}<button type="submit" class="secondary">'
                  "Sign out</button></form>")
        return (f"<h1>Review queue</h1><p>Signed in as <strong>{esc(reviewer)}</strong>. Decisions are recorded "
                f"with your name.</p>{logout}{notes}{filter_form}{queue_form}")

    @staticmethod
    def _row(i: ReviewItem) -> str:
        buttons = "".join(f'<button type="submit" name="one" value="{a}:{i.id}" aria-label="{a.capitalize()} item '
                          f'{i.id}">{a.capitalize()}</button>' for a in ("approve", "reject", "edit", "skip"))
        meta = i.operation + (f", run {i.run_id}" if i.run_id else "") + \
            (f" ({i.status})" if i.status != "queued" else "")
        reason = f'<br><span class="small">{esc(i.reason)}</span>' if i.reason else ""
        return (f'<tr><td><input type="checkbox" id="pick-{i.id}" name="ids" value="{i.id}">'
                f'<label for="pick-{i.id}"><span class="small">item {i.id}</span></label></td>'
                f"<td>{i.id}<br><span class=\"small\">{esc(i.catalogue)} · {esc(meta)}</span></td>"
                f"<td>{esc(i.record)}<br><strong>{esc(i.field)}</strong></td>"
                f'<td class="old">{esc(show(i.old))}</td><td class="new">{esc(show(i.new))}{reason}</td>'
                f"<td>{i.confidence:g}</td>"
                f"<td>{esc(i.source or '(none)')}<br><span class=\"small\">{esc(i.citation or '')}</span></td>"
                f'<td><label for="value-{i.id}" class="small">New value for item {i.id}</label><br>'
                f'<input id="value-{i.id}" name="value-{i.id}" size="12"></td><td>{buttons}</td></tr>')


def review_routes(page_: ReviewPage) -> list[BaseRoute]:
    return [Route("/review/login", page_.login, methods=["GET"]), Route("/review", page_.queue, methods=["GET"]),
            Route("/review/decide", page_.decide, methods=["POST"]),
            Route("/review/logout", page_.logout, methods=["POST"])]
