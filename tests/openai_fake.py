"""An OpenAI-compatible chat-completions API on 127.0.0.1, for the model endpoint of Bulk Enrichment.

Follows OpenAI's OpenAPI description (tests/contracts/openai/chat-completions.openapi-excerpt.json, from
openai/openai-openapi): every request body is validated against `CreateChatCompletionRequest` (a request that
does not match gets the 400 `ErrorResponse` the API sends), every answer it builds is validated against
`CreateChatCompletionResponse`, and a 429 carries the documented `Retry-After` (seconds) with an `ErrorResponse`.
Tests queue what the model says (`says`), or whole replies (`answer`, e.g. 429 or "hang" for a timeout).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections import deque
from pathlib import Path
from typing import Any

import jsonschema
from http_fakes import RecordingServer, Request
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

CONTRACT = Path(__file__).parent / "contracts" / "openai" / "chat-completions.openapi-excerpt.json"


def _nullable_to_anyof(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` (still in the 3.1 document in 21 places) as JSON Schema: anyOf [X, null]."""
    if isinstance(node, dict):
        node = {k: _nullable_to_anyof(v) for k, v in node.items()}
        if node.pop("nullable", False) is True:
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_anyof(v) for v in node]
    return node


def _load_contract() -> tuple[Registry, dict[str, Any]]:
    document = _nullable_to_anyof(json.loads(CONTRACT.read_text(encoding="utf-8")))
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openai", resource)
    return registry, document


REGISTRY, DOCUMENT = _load_contract()


def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{schema_name}"},
                                           registry=REGISTRY)


REQUEST = validator("CreateChatCompletionRequest")
RESPONSE = validator("CreateChatCompletionResponse")
ERROR = validator("ErrorResponse")


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ERROR.validate(body)
    return body


def rate_limited(retry_after: int = 1) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The 429 the API sends when a rate limit is hit (components.responses.TooManyRequests)."""
    return 429, {"Retry-After": str(retry_after)}, error_body("Rate limit reached for requests", "requests",
                                                              "rate_limit_exceeded")


class FakeChatCompletions(RecordingServer):
    """`POST /v1/chat/completions`; `base_url` is what `url_env` holds (…/v1)."""

    def __init__(self, *, logprobs: bool = True) -> None:
        self.said: deque[str] = deque()
        self.invalid: list[str] = []  # why requests did not match the contract
        self.logprobs = logprobs
        self._ids = itertools.count(1)
        super().__init__(self._reply)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def says(self, *contents: str) -> None:
        """What the model answers to the next requests, in order (the message content, JSON or not)."""
        self.said.extend(contents)

    def bodies(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requests if r.path == "/v1/chat/completions"]

    def _reply(self, request: Request):
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return 404, {}, error_body(f"Unknown request URL: {request.method} {request.path}",
                                       "invalid_request_error", "unknown_url")
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return 401, {}, error_body("You didn't provide an API key.", "invalid_request_error")
        try:
            body = request.json()
            REQUEST.validate(body)
        except (ValueError, jsonschema.ValidationError) as exc:
            reason = getattr(exc, "message", str(exc))
            self.invalid.append(reason)
            return 400, {}, error_body(f"Invalid request: {reason}", "invalid_request_error")
        content = self.said.popleft() if self.said else json.dumps({"value": None})
        tokens = None
        if body.get("logprobs") and self.logprobs:
            # one token for the whole answer, with a probability of 0.9 (the fake's certainty)
            tokens = {"content": [{"token": content, "logprob": math.log(0.9), "bytes": None, "top_logprobs": []}],
                      "refusal": None}
        answer = {
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": 1764300000,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": tokens,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
        }
        RESPONSE.validate(copy.deepcopy(answer))
        return 200, {}, answer
