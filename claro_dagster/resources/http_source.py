"""Scheduled HTTP pulls (`kind: http` sources): authentication, pagination, parsing and loop detection.

One `pull()` walks every page of a feed through the project's `HttpClient` (retries with backoff and
`Retry-After`, timeouts, redaction, the per-host rate limit), authenticated by `http_auth` (as the REST
destination is), and returns the records with the URL of the page
each came from. It writes nothing and keeps no state: the caller (the source's sensor) writes the batch file,
then stores `PullResult.state` (watermark, ETag, Last-Modified), so a pull that fails halfway moves nothing and
the next one starts from the same place.

Written here rather than with dlt's REST API source: dlt brings its own pipeline, state and HTTP client,
and the project's rule is one HTTP layer and the catalogue store's cursors. The parts are the same as dlt's
(paginators, auth, incremental) in a few functions. No Dagster imports.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin

import jmespath
import requests

from claro_dagster.resources.http import HostRateLimiter, HttpClient, HttpError, body_excerpt, safe_url
from claro_dagster.resources.http_auth import AuthError, HttpAuth, auth_from_spec

EVERY_SECONDS = {"minutely": 60, "quarter_hourly": 900, "hourly": 3600, "daily": 86400, "weekly": 604800}
DEFAULT_INTERVAL_SECONDS = 3600


class HttpPullError(Exception):
    """A pull that cannot go on; the message names the URL (secrets hidden) and what to do."""


def interval_seconds(spec: Any) -> int:
    """How often the source's sensor ticks: `interval_seconds`, else `every`, else hourly (each minute with `cron`,
    which then decides when a tick pulls)."""
    if spec.cron:
        return 60
    if spec.interval_seconds:
        return int(spec.interval_seconds)
    return EVERY_SECONDS.get(spec.every or "hourly", DEFAULT_INTERVAL_SECONDS)


# -- parsing -----------------------------------------------------------------------------------------------

def parse_page(spec: Any, response: requests.Response, url: str) -> tuple[list[dict], Any]:
    """(records, the parsed JSON document or None) of one page in the spec's format."""
    content_type = response.headers.get("Content-Type", "")
    fmt = spec.format
    if fmt == "json":
        head = response.content[:64].lstrip()
        if "html" in content_type.lower() or head[:1] == b"<":
            raise HttpPullError(f"{safe_url(url)} answered {content_type or 'no Content-Type'} where JSON was "
                                f"expected: {body_excerpt(response, 120)}; check the URL and the authentication "
                                "(a login or error page is HTML)")
        try:
            document = json.loads(response.content)
        except ValueError as exc:
            raise HttpPullError(f"{safe_url(url)} answered malformed JSON ({exc}): "
                                f"{body_excerpt(response, 120)}") from exc
        found = jmespath.search(spec.records, document) if spec.records else document
        if found is None:
            found = []
        if isinstance(found, dict):
            found = [found]
        if not isinstance(found, list) or not all(isinstance(r, dict) for r in found):
            raise HttpPullError(f"{safe_url(url)}: records path {spec.records or '(the whole body)'!r} is not a list "
                                f"of objects (found {type(found).__name__}); set http.records to the path of the list")
        return found, document
    if fmt == "csv":
        text = response.content.decode(response.encoding or "utf-8-sig", errors="replace").lstrip("\ufeff")
        return list(csv.DictReader(io.StringIO(text))), None
    if fmt == "xlsx":
        import pandas as pd

        frame = pd.read_excel(io.BytesIO(response.content), dtype=str).fillna("")
        return frame.to_dict("records"), None
    from defusedxml import ElementTree  # entity expansion and external entities refused

    try:
        root = ElementTree.fromstring(response.content)
    except Exception as exc:  # ParseError, or defusedxml's refusal of entities
        raise HttpPullError(f"{safe_url(url)} answered XML that cannot be read safely ({exc})") from exc
    elements = root.findall(spec.records) if spec.records else list(root)
    return [{**el.attrib, **{child.tag: (child.text or "").strip() for child in el}} for el in elements], None


def _search(path: str, document: Any) -> Any:
    return jmespath.search(path, document) if document is not None else None


# -- the pull ----------------------------------------------------------------------------------------------

@dataclass
class PullResult:
    records: list[dict] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)  # per record: the page it came from (secrets hidden)
    pages: list[dict] = field(default_factory=list)  # per page: url, records
    not_modified: bool = False  # the server answered 304: nothing to write
    state: dict = field(default_factory=dict)  # to store (as the source's cursor) once the batch is written


def _compare(a: Any, b: Any) -> int:
    """-1/0/1 comparing watermarks: as numbers when both are, else as text (ISO dates sort as text)."""
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        x, y = str(a), str(b)
    return (x > y) - (x < y)


def pull(spec: Any, client: HttpClient, state: Mapping[str, Any] | None = None, *,
         env: Mapping[str, str] | None = None, base_url: str | None = None,
         clock: Callable[[], float] = time.time) -> PullResult:
    """Every page of the feed `spec` (an `HttpPullSpec`) describes, from `state` (what the last pull stored).

    Raises `HttpPullError` (or `HttpError` once the client's retries are spent) on a loop (the same request,
    cursor or page body twice), a cursor or watermark that goes backwards, a page in the wrong format, or more
    than `max_pages` pages. Nothing is kept from a failed pull.
    """
    state = dict(state or {})
    if spec.rate_limit and client.rate_limiter is None:
        client.rate_limiter = HostRateLimiter(spec.rate_limit, sleep=client.sleep)
    try:
        auth = auth_from_spec(spec.auth, env, http=client, clock=clock)
    except AuthError as exc:
        raise HttpPullError(str(exc)) from exc
    paginate = spec.paginate
    watermark = state.get("watermark", spec.incremental.initial if spec.incremental else None)
    values: dict[str, Any] = {"page": paginate.start_page, "offset": 0, "limit": paginate.page_size,
                              "cursor": "", "watermark": "" if watermark is None else watermark}
    template = spec.url if not base_url else urljoin(base_url.rstrip("/") + "/", spec.url.lstrip("/"))
    result = PullResult()
    seen_requests: dict[str, int] = {}
    seen_bodies: dict[str, str] = {}
    next_url: str | None = None
    url = template
    last_cursor: Any = None
    new_watermark = watermark
    boundary: set[str] = set(state.get("boundary") or [])
    at_new: set[str] = set(boundary)
    conditional = spec.conditional if spec.conditional is not None else paginate.style == "none"
    for number in range(1, paginate.max_pages + 2):
        if number > paginate.max_pages:
            raise HttpPullError(f"{safe_url(url)}: more than max_pages={paginate.max_pages} pages; raise "
                                "http.paginate.max_pages if the feed is really that long")
        params: dict[str, Any] = {}
        if next_url is not None:
            url = next_url
        else:
            try:
                url = template.format_map(values)
            except (KeyError, ValueError, IndexError) as exc:
                raise HttpPullError(f"http.url {spec.url!r} has a placeholder that is not one of {{page}}, "
                                    f"{{offset}}, {{limit}}, {{cursor}}, {{watermark}} ({exc}); write a literal "
                                    "brace twice") from exc
            params = {k: v for k, v in spec.query.items()}
            if spec.incremental and spec.incremental.param and watermark not in (None, ""):
                params[spec.incremental.param] = watermark
            _page_params(spec, values, params, number)
        headers = dict(spec.headers)
        if number == 1 and conditional:
            if state.get("etag"):
                headers["If-None-Match"] = state["etag"]
            if state.get("last_modified"):
                headers["If-Modified-Since"] = state["last_modified"]
        auth.apply(headers, params)
        identity = url + "?" + json.dumps(sorted((k, str(v)) for k, v in params.items()))
        if identity in seen_requests:
            raise HttpPullError(f"loop: page {number} would ask {safe_url(url)} again with the same parameters "
                                f"(page {seen_requests[identity]} asked it); the feed's pagination does not advance, "
                                "check http.paginate")
        seen_requests[identity] = number
        response = _send(client, auth, spec, url, headers, params)
        final_url = response.url or url
        if response.status_code == 304 and number == 1:
            result.not_modified = True
            result.state = state
            return result
        if response.status_code >= 400:
            raise HttpError(spec.method, final_url, response.status_code, body_excerpt(response))
        digest = hashlib.sha256(response.content).hexdigest()
        records, document = parse_page(spec, response, final_url)
        if records and digest in seen_bodies:
            raise HttpPullError(f"loop: {safe_url(final_url)} answered the same page as {seen_bodies[digest]}; the "
                                "feed repeats itself, check http.paginate (no batch was written)")
        seen_bodies[digest] = safe_url(final_url)
        if number == 1:
            etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
            result.state = {k: v for k, v in (("etag", etag), ("last_modified", modified)) if v}
        shown = safe_url(final_url)
        kept = records
        if spec.incremental:
            name = spec.incremental.field
            kept = []
            for record in records:
                value = record.get(name)
                if value in (None, ""):
                    kept.append(record)
                    continue
                order = 1 if watermark in (None, "") else _compare(value, watermark)
                if order < 0:
                    raise HttpPullError(f"{shown}: record {record!s:.120} has {name}={value!r}, before the stored "
                                        f"watermark {watermark!r}: the feed went backwards (or ignores "
                                        f"{spec.incremental.param!r}); nothing was written")
                fingerprint = _fingerprint(record)
                if order == 0 and fingerprint in boundary:
                    continue  # pulled last time already (an API answering `>=` the watermark sends it again)
                kept.append(record)
                if new_watermark in (None, "") or _compare(value, new_watermark) > 0:
                    new_watermark, at_new = value, {fingerprint}
                elif _compare(value, new_watermark) == 0:
                    at_new.add(fingerprint)
        result.pages.append({"url": shown, "records": len(kept)})
        result.records += kept
        result.urls += [shown] * len(kept)
        # where the next page is, or stop
        style = paginate.style
        if style == "none" or not records and style in ("page", "offset"):
            break
        if style in ("page", "offset"):
            if len(records) < paginate.page_size:
                break
            values["page"] += 1
            values["offset"] += paginate.page_size
        elif style == "cursor":
            cursor = _search(paginate.cursor_path, document)
            if cursor in (None, "") or not records:
                break
            if last_cursor is not None and cursor == last_cursor:
                raise HttpPullError(f"loop: {shown} gave the cursor {cursor!r} again; the feed does not advance")
            if last_cursor is not None and _numeric(cursor) and _numeric(last_cursor) and \
                    float(cursor) < float(last_cursor):
                raise HttpPullError(f"{shown}: the cursor went backwards ({last_cursor!r} -> {cursor!r}); "
                                    "refused, nothing was written")
            last_cursor = cursor
            values["cursor"] = cursor
        else:
            link = (_search(paginate.next_url_path, document) if style == "next_url"
                    else response.links.get("next", {}).get("url"))
            if not link:
                break
            next_url = urljoin(final_url, link)
    if spec.incremental and new_watermark not in (None, ""):
        result.state["watermark"] = new_watermark
        # the records at the new watermark (fingerprints), not to be taken again at the boundary next time
        result.state["boundary"] = sorted(at_new | (boundary if new_watermark == watermark else set()))
    elif "watermark" in state:
        result.state["watermark"] = state["watermark"]
        if state.get("boundary"):
            result.state["boundary"] = state["boundary"]
    return result


def _fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _numeric(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _page_params(spec: Any, values: dict, params: dict, number: int) -> None:
    """The pagination parameters of a page, unless the URL template carries them as placeholders."""
    paginate, url = spec.paginate, spec.url
    if paginate.style == "page":
        if "{page}" not in url:
            params[paginate.page_param] = values["page"]
        if paginate.limit_param and "{limit}" not in url:
            params[paginate.limit_param] = paginate.page_size
    elif paginate.style == "offset":
        if "{offset}" not in url:
            params[paginate.offset_param] = values["offset"]
        if paginate.limit_param and "{limit}" not in url:
            params[paginate.limit_param] = paginate.page_size
    elif paginate.style == "cursor" and number > 1 and "{cursor}" not in url:
        params[paginate.cursor_param] = values["cursor"]


def _send(client: HttpClient, auth: HttpAuth, spec: Any, url: str, headers: dict,
          params: dict) -> requests.Response:
    # the parameters go into the URL here, so an error (after the client's retries) names the very page
    if params:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
    kwargs: dict[str, Any] = {"headers": headers, "timeout": spec.timeout_seconds,
                              "raise_for_status": False, "max_attempts": spec.max_attempts}
    if spec.body is not None:
        kwargs["json"] = spec.body
    response = client.request(spec.method, url, **kwargs)
    if response.status_code == 401 and auth.refresh():  # the token expired early: a new one, once
        response.close()
        headers = dict(headers)
        auth.apply(headers, {})  # a query key is in the URL already; only a header changes
        kwargs["headers"] = headers
        response = client.request(spec.method, url, **kwargs)
    return response


# -- the batch file ----------------------------------------------------------------------------------------

def records_csv(records: list[dict], urls: list[str] | None = None, url_column: str | None = None) -> bytes:
    """The records as CSV (columns in first-seen order; nested values as JSON), for the onboarding stages. With
    `url_column`, a last column holding the URL of the page each record came from (`urls`, one per record)."""
    columns: dict[str, None] = {}
    for record in records:
        if len(record) != len(columns) or record.keys() - columns.keys():
            columns.update(dict.fromkeys(record))
    names = list(columns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names + ([url_column] if url_column else []))
    rows = ([record.get(name) for name in names] for record in records)
    if url_column:
        rows = (row + [url] for row, url in zip(rows, urls or [], strict=True))
    nested = (dict, list)
    for row in rows:
        for i, value in enumerate(row):  # csv writes None as an empty cell; only nested values need JSON
            if isinstance(value, nested):
                row[i] = json.dumps(value, ensure_ascii=False, sort_keys=True)
        writer.writerow(row)
    return out.getvalue().encode()


__all__ = ["EVERY_SECONDS", "HttpPullError", "PullResult", "interval_seconds", "parse_page", "pull",
           "records_csv"]
