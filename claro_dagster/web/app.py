"""The small web app (Starlette, ASGI): the Slack slash-command endpoint, and a health check.

The caller wires the spec loader, the store and the launcher (Dagster's GraphQL client), then serves
the app with uvicorn:

    app = create_app(load_spec, lambda spec: CatalogueStore(spec), launcher)
    uvicorn.run(app, host="127.0.0.1", port=8080)

Routes:
    POST /slack/commands   Slack slash commands (signed; see `web/slack_commands.py`)
    GET  /healthz          "ok"
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from claro_dagster.web.slack_commands import (
    DEFAULT_ACK_BUDGET_SECONDS,
    Launcher,
    SlackCommands,
    SlackReply,
    SlackRequestVerifier,
    SpecLoader,
    StoreFactory,
    parse_form,
)

log = logging.getLogger(__name__)

SIGNING_SECRET_ENV = "SLACK_SIGNING_SECRET"


def slack_routes(commands: SlackCommands, verifier: SlackRequestVerifier | None) -> list[BaseRoute]:
    """The `POST /slack/commands` route; without a verifier (no signing secret) it answers 503."""

    async def slack_command(request: Request) -> Response:
        if verifier is None:
            return PlainTextResponse(f"Slack commands are not configured: set {SIGNING_SECRET_ENV} to the "
                                     "app's signing secret", status_code=503)
        body = await request.body()
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


def create_app(spec_loader: SpecLoader, store_factory: StoreFactory, launcher: Launcher, *,
               signing_secret: str | None = None, webserver_url: str = "http://127.0.0.1:3000",
               review_url: str | None = None, ack_budget_seconds: float = DEFAULT_ACK_BUDGET_SECONDS,
               clock: Callable[[], float] = time.time,
               post_followup: Callable[[str, SlackReply], None] | None = None) -> Starlette:
    """Build the web app.

    spec_loader() returns the current `ProjectSpec`; store_factory(spec) opens a `CatalogueStore`
    (disposed after each use); launcher starts and reports Dagster runs. The Slack signing secret is
    `signing_secret` or the `SLACK_SIGNING_SECRET` environment variable. `webserver_url` is the Dagster
    UI (for run links); `review_url` the review page (default: `/review` on this app).
    """
    secret = signing_secret or os.environ.get(SIGNING_SECRET_ENV, "")
    verifier = SlackRequestVerifier(secret, clock=clock) if secret.strip() else None
    if verifier is None:
        log.warning("%s is not set: /slack/commands will answer 503", SIGNING_SECRET_ENV)
    commands = SlackCommands(spec_loader, store_factory, launcher, webserver_url=webserver_url,
                             review_url=review_url, ack_budget_seconds=ack_budget_seconds,
                             post_followup=post_followup)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        commands.close()

    app = Starlette(routes=[Route("/healthz", _healthz), *slack_routes(commands, verifier)], lifespan=lifespan)
    app.state.slack_commands = commands
    return app
