"""The small web app (Starlette, ASGI): the Slack slash-command endpoint, and a health check.

The caller wires the spec loader, the store and the launcher (Dagster's GraphQL client), then serves
the app with uvicorn:

    app = create_app(load_spec, lambda spec: CatalogueStore(spec), launcher)
    uvicorn.run(app, host="127.0.0.1", port=8080)

Routes:
    POST /slack/commands   Slack slash commands (signed; see `web/slack_commands.py`)
    /review...             the review page for reviewers signed in by their link (see `web/review_page.py`)
    /portal...             the Supplier Portal for suppliers signed in by their link (see `web/portal_page.py`)
    /api/v1/...            the REST API for external systems, with API tokens (see `web/api.py`)
    GET  /healthz          "ok": the process is alive (liveness)
    GET  /readyz           "ready" when the catalogue store answers, else 503 saying why (readiness)
    GET  /metrics          Prometheus text format: batches, review queue, webhook backlog, push errors
                           (see `web/metrics.py`)

A slash command's body is a short form; anything over `MAX_BODY_BYTES` is refused with 413 before the
signature is checked, read as a stream and never buffered beyond the cap (a declared Content-Length
over the cap is refused without reading the body at all).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from claro_dagster.catalogue.schema import default_home
from claro_dagster.web.api import api_routes
from claro_dagster.web.portal_page import PortalPage, portal_routes
from claro_dagster.web.review_page import ReviewPage, review_routes
from claro_dagster.web.slack_commands import (
    DEFAULT_ACK_BUDGET_SECONDS,
    Launcher,
    SlackCommands,
    SlackReply,
    SlackRequestVerifier,
    SlackUserGroups,
    SpecLoader,
    StoreFactory,
    parse_form,
)

log = logging.getLogger(__name__)

SIGNING_SECRET_ENV = "SLACK_SIGNING_SECRET"
# Slack's slash-command payloads are a few kilobytes (the command text plus a dozen short fields).
MAX_BODY_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    pass


async def read_capped(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, read as a stream; BodyTooLarge as soon as it (or its Content-Length) passes `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"Content-Length {declared}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"over {limit} bytes received")
    return bytes(body)


def slack_routes(commands: SlackCommands, verifier: SlackRequestVerifier | None) -> list[BaseRoute]:
    """The `POST /slack/commands` route; without a verifier (no signing secret) it answers 503."""

    async def slack_command(request: Request) -> Response:
        if verifier is None:
            return PlainTextResponse(f"Slack commands are not configured: set {SIGNING_SECRET_ENV} to the "
                                     "app's signing secret", status_code=503)
        try:
            body = await read_capped(request)
        except BodyTooLarge as exc:
            log.warning("Slack command refused: the body is over %d bytes (%s) from %s", MAX_BODY_BYTES, exc,
                        request.client.host if request.client else "?")
            return PlainTextResponse(f"request body over {MAX_BODY_BYTES} bytes: not a Slack command",
                                     status_code=413, headers={"Connection": "close"})
        problem = verifier.problem(body, request.headers)
        if problem:
            log.warning("Slack command refused: %s", problem)
            return PlainTextResponse(problem, status_code=401)
        form = parse_form(body)
        if form.get("ssl_check") == "1":  # Slack's certificate check: answer 200, do nothing
            return Response(status_code=200)
        # respond() blocks for at most the ack budget; keep it off the event loop.
        reply = await run_in_threadpool(commands.respond, form, base_url=str(request.base_url))
        return JSONResponse(reply.as_json())

    return [Route("/slack/commands", slack_command, methods=["POST"])]


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def operability_routes(open_store: Callable[[], object]) -> list[BaseRoute]:
    """`/readyz` (the store answers) and `/metrics` (Prometheus text format), both reading the store per request."""
    from prometheus_client import CollectorRegistry

    from claro_dagster.web.metrics import StoreCollector, metrics_text, store_ready

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(open_store))

    async def readyz(request: Request) -> Response:
        problem = await run_in_threadpool(store_ready, open_store)
        return PlainTextResponse("ready" if problem is None else f"not ready: {problem}",
                                 status_code=200 if problem is None else 503)

    async def metrics(request: Request) -> Response:
        body, content_type = await run_in_threadpool(metrics_text, registry)
        return Response(body, media_type=content_type)

    return [Route("/readyz", readyz), Route("/metrics", metrics)]


def create_app(spec_loader: SpecLoader, store_factory: StoreFactory, launcher: Launcher, *,
               signing_secret: str | None = None, webserver_url: str = "http://127.0.0.1:3000",
               review_url: str | None = None, ack_budget_seconds: float = DEFAULT_ACK_BUDGET_SECONDS,
               clock: Callable[[], float] = time.time,
               post_followup: Callable[[str, SlackReply], None] | None = None,
               slack_api_url: str | None = None, review_page: ReviewPage | None = None,
               portal_page: PortalPage | None = None, home: str | Path | None = None) -> Starlette:
    """Build the web app.

    spec_loader() returns the current `ProjectSpec`; store_factory(spec) opens a `CatalogueStore`
    (disposed after each use); launcher starts and reports Dagster runs. The Slack signing secret is
    `signing_secret` or the `SLACK_SIGNING_SECRET` environment variable. `webserver_url` is the Dagster
    UI (for run links); `review_url` the review page (default: `/review` on this app). Who may use
    which command is the spec's `notifications.slack_commands`; user-group members are looked up at
    `slack_api_url` (default: the spec's `notifications.slack_api_url`) with the bot token named by
    `notifications.slack_token_env`. `review_page` serves `/review` (default: one signed with the
    `CLARO_WEB_SECRET` environment variable). `portal_page` serves the Supplier Portal at `/portal` (default:
    one on the project home `home`, default `$CLARO_HOME` or ./.claro).
    """
    secret = signing_secret or os.environ.get(SIGNING_SECRET_ENV, "")
    verifier = SlackRequestVerifier(secret, clock=clock) if secret.strip() else None
    if verifier is None:
        log.warning("%s is not set: /slack/commands will answer 503", SIGNING_SECRET_ENV)
    def bot_token() -> str | None:
        name = spec_loader().notifications.slack_token_env
        return os.environ.get(name) if name else None

    commands = SlackCommands(spec_loader, store_factory, launcher, webserver_url=webserver_url,
                             review_url=review_url, ack_budget_seconds=ack_budget_seconds,
                             post_followup=post_followup, groups=SlackUserGroups(bot_token, base_url=slack_api_url or (
                                 lambda: spec_loader().notifications.slack_api_url)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        commands.close()

    review = review_page or ReviewPage(spec_loader, store_factory)
    portal = portal_page or PortalPage(spec_loader, store_factory, home or default_home())
    app = Starlette(routes=[Route("/healthz", _healthz), *operability_routes(lambda: store_factory(spec_loader())),
                            *slack_routes(commands, verifier), *review_routes(review), *portal_routes(portal),
                            *api_routes(spec_loader, store_factory, launcher)],
                    lifespan=lifespan)
    app.state.slack_commands = commands
    return app
