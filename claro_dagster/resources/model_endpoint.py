"""A model endpoint: any OpenAI-compatible chat-completions API (OpenAI, Azure OpenAI's compatible route, vLLM,
Ollama, LiteLLM, ...), asked through the one HTTP layer (resources/http.py: timeouts, 429 with Retry-After,
backoff with jitter, secret redaction).

The spec's model method names the variables holding the endpoint's base URL (`url_env`, e.g.
https://api.openai.com/v1) and its API key (`api_key_env`); the key is sent as a bearer token. Each request asks
for structured output (`response_format` `json_schema`, strict) and for log-probabilities, which become the
model-certainty factor of the confidence when the API returns them. The request follows the OpenAI OpenAPI
description of `POST /chat/completions` (CreateChatCompletionRequest); tests/contracts/openai/ holds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import requests

from claro_dagster.operations.enrich import ModelAnswer, ModelUnavailable
from claro_dagster.resources.http import HttpClient, HttpError, safe_url
from claro_dagster.spec.models import EnrichMethodSpec


class ChatCompletionsClient:
    """One client per run: an HttpClient per endpoint (base URL), built on first use."""

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 sleep: Callable[[float], None] | None = None, backoff_max: float = 30):
        self.environ = os.environ if environ is None else environ
        self._clients: dict[tuple[str, float, int], HttpClient] = {}
        self._sleep = sleep
        self._backoff_max = backoff_max

    def missing(self, method: EnrichMethodSpec) -> str | None:
        """The variable a model method needs that is not set (None: the endpoint is configured)."""
        for name in (method.url_env, method.api_key_env):
            if name and not self.environ.get(name):
                return name
        return None

    def available(self, method: EnrichMethodSpec) -> bool:
        return bool(method.url_env) and self.missing(method) is None

    def complete(self, method: EnrichMethodSpec, messages: list[dict[str, str]],
                 schema: dict[str, Any]) -> ModelAnswer:
        """Ask the endpoint; ModelUnavailable when it cannot answer (down, timing out, refusing, still throttling
        after the retries, or answering something that is not a chat completion)."""
        if not method.url_env or self.missing(method):
            raise ModelUnavailable(f"the model endpoint is not configured: set {self.missing(method) or 'url_env'}")
        base = self.environ[method.url_env]
        client = self._client(base, method)
        headers = {"Content-Type": "application/json"}
        if method.api_key_env:
            headers["Authorization"] = f"Bearer {self.environ[method.api_key_env]}"
        body = {
            "model": method.model,
            "messages": messages,
            "temperature": 0,
            "logprobs": True,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "enrichment", "schema": schema, "strict": True}},
        }
        try:
            response = client.post("chat/completions", json=body, headers=headers)
            payload = response.json()
        except HttpError as exc:
            raise ModelUnavailable(f"model endpoint {method.url_env} ({safe_url(base)}) did not answer: {exc}. "
                                   "Nothing was written; run again once it answers") from exc
        except (requests.JSONDecodeError, ValueError) as exc:
            raise ModelUnavailable(f"model endpoint {method.url_env} ({safe_url(base)}) answered something that "
                                   "is not JSON; is the URL an OpenAI-compatible API (…/v1)?") from exc
        try:
            choice = payload["choices"][0]
            content = choice["message"].get("content")
            if content is None and choice["message"].get("refusal"):
                content = choice["message"]["refusal"]
            tokens = ((choice.get("logprobs") or {}).get("content")) or None
            logprobs = [float(t["logprob"]) for t in tokens] if tokens else None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelUnavailable(f"model endpoint {method.url_env} answered without choices[0].message: "
                                   f"{str(payload)[:200]}") from exc
        return ModelAnswer(content=content, logprobs=logprobs, model=str(payload.get("model") or method.model))

    def _client(self, base: str, method: EnrichMethodSpec) -> HttpClient:
        key = (base, method.timeout_seconds, method.max_attempts)
        if key not in self._clients:
            kwargs: dict[str, Any] = {"sleep": self._sleep} if self._sleep is not None else {}
            self._clients[key] = HttpClient(base, timeout=method.timeout_seconds, max_attempts=method.max_attempts,
                                            backoff_max=self._backoff_max, **kwargs)
        return self._clients[key]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
