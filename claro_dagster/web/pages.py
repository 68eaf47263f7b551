"""What the web app's HTML pages share (the review page and the Supplier Portal): the style sheet, the security
headers, escaping, the page frame and signed session cookies.

Every value that reaches a page goes through `esc` (`html.escape`); pages are dark text on white with a visible
focus ring (WCAG AA contrast) and no script, so they work without JavaScript.
"""

from __future__ import annotations

import hmac
import html
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from claro_dagster.catalogue.access import AccessDenied, AccessToken

log = logging.getLogger(__name__)

#: The environment variable holding the key that signs session cookies (review page and portal).
SECRET_ENV = "CLARO_WEB_SECRET"

HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Cache-Control": "no-store",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                      "frame-ancestors 'none'"}

STYLE = """
body{font-family:system-ui,sans-serif;color:#1a1a1a;background:#fff;margin:1.5rem;line-height:1.4}
a{color:#0645ad} h1{font-size:1.5rem} table{border-collapse:collapse;width:100%;margin-top:1rem}
th,td{border:1px solid #767676;padding:.35rem .5rem;text-align:left;vertical-align:top}
caption{text-align:left;font-weight:bold;padding:.3rem 0} th{background:#f0f0f0}
fieldset{border:1px solid #767676;margin:.5rem 0} label{margin-right:.5rem}
input,select,button{font:inherit;margin:.15rem} button{background:#1f4e8c;color:#fff;border:1px solid #1f4e8c;
padding:.25rem .6rem;border-radius:3px;cursor:pointer} button.secondary{background:#fff;color:#1f4e8c}
:focus{outline:3px solid #b35c00;outline-offset:2px} .status{padding:.5rem;border:2px solid #1f4e8c;margin:.5rem 0}
.error{border-color:#a00000;color:#a00000} .badge{border:1px solid #1a1a1a;padding:0 .4rem;border-radius:3px}
.ok{border-color:#0b5d1e;color:#0b5d1e} dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
dl.facts dt{font-weight:bold} form.inline{display:inline}
.old{color:#5c0000} .new{color:#0b5d1e} .small{font-size:.9rem}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def show(value: Any) -> str:
    return "(empty)" if value is None or value == "" else str(value)


def page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
           f"<style>{STYLE}</style></head><body><main>{body}</main></body></html>")
    return HTMLResponse(doc, status_code=status_code, headers=HEADERS)


class Sessions:
    """Session cookies signed with itsdangerous: HttpOnly, SameSite=Lax, Secure on https, scoped to one path."""

    def __init__(self, cookie: str, path: str, salt: str, hours: int, secret: str | None = None):
        self.cookie, self.path, self.max_age = cookie, path, hours * 3600
        secret = secret or os.environ.get(SECRET_ENV, "")
        if not secret.strip():
            log.warning("%s is not set: %s sessions are signed with a random key and end when the app restarts",
                        SECRET_ENV, path)
            secret = secrets.token_urlsafe(32)
        self.signer = URLSafeTimedSerializer(secret, salt=salt)

    def load(self, request: Request, keys: set[str]) -> dict | None:
        raw = request.cookies.get(self.cookie)
        if not raw:
            return None
        try:
            data = self.signer.loads(raw, max_age=self.max_age)
        except BadSignature:
            return None
        return data if isinstance(data, dict) and keys <= set(data) else None

    def save(self, response: Response, request: Request, data: dict) -> None:
        response.set_cookie(self.cookie, self.signer.dumps(data), max_age=self.max_age, path=self.path,
                            httponly=True, samesite="lax", secure=request.url.scheme == "https")

    def end(self, response: Response) -> None:
        response.delete_cookie(self.cookie, path=self.path)


class LinkSessions(Sessions):
    """Sign-in by a personal link (`<path>/login?token=...`, an access token of one kind) into a signed session
    holding the link's id, its subject (under `subject_key`) and a CSRF token. Every request re-checks the link is
    neither revoked nor expired; `refused(message, status)` is the page's own refusal."""

    def __init__(self, kind: str, cookie: str, path: str, hours: int, subject_key: str,
                 refused: Callable[[str, int], HTMLResponse], secret: str | None = None):
        super().__init__(cookie, path, f"claro-{kind}-session", hours, secret)
        self.kind, self.subject_key, self.refused = kind, subject_key, refused
        self.keys = {"t", subject_key, "csrf"}

    async def login(self, request: Request, verify: Callable[[str, str], AccessToken]) -> Response:
        """`verify(token, client)` runs in a worker thread and raises AccessDenied to refuse."""
        client = request.client.host if request.client else "unknown"
        try:
            found = await run_in_threadpool(verify, request.query_params.get("token", ""), client)
        except AccessDenied as exc:
            log.warning("%s login refused from %s: %s", self.kind, client, exc.reason)
            return self.refused(exc.reason, 429 if exc.rate_limited else 403)
        response = RedirectResponse(self.path, status_code=303, headers=HEADERS)
        self.save(response, request, {"t": found.id, self.subject_key: found.subject,
                                      "csrf": secrets.token_urlsafe(24)})
        return response

    async def signed_in(self, request: Request, still_valid: Callable[[int], bool]
                        ) -> tuple[dict | None, Response | None]:
        """(session, None), or (None, the refusal) when there is no session or its link no longer holds."""
        session = self.load(request, self.keys)
        if session is None:
            return None, self.refused(f"You are not signed in. Open your personal {self.kind} link (it looks like "
                                      f"{self.path}/login?token=...).", 401)
        if not await run_in_threadpool(still_valid, int(session["t"])):
            response = self.refused(f"Your {self.kind} link has expired or been revoked. Ask the catalogue team "
                                    "for a new one.", 403)
            self.end(response)
            return None, response
        return session, None

    async def logout(self, request: Request) -> Response:
        session = self.load(request, self.keys)
        form = await request.form(max_files=0, max_fields=10)
        if session is None or not hmac.compare_digest(str(form.get("csrf", "")), session["csrf"]):
            return self.refused("The form expired: reload the page and try again.", 403)
        response = page("Signed out", f"<h1>Signed out</h1><p>Open your {self.kind} link to sign in again.</p>")
        self.end(response)
        return response
