"""Changes proposed by an external system (through the REST API): checked, capped, then one gated change set.

A proposal names records, fields and new values, each with the confidence the external system states. Every
value is checked against its attribute before anything is written (a field the catalogue lacks, the key, a value
of the wrong JSON type, an enum value the attribute does not list, a date that is not ISO 8601), and all the
problems are reported together with the index of the change they concern. The confidence is capped by the spec
(`api.max_confidence`, or `api.clients.<token name>.max_confidence`), so an external system can never apply
directly what the team wants a person to see; the change set goes through the one writer and its gate with
`api:<token name>` as its source, and lands applied, in review, or rejected like any other.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any

from claro_dagster.catalogue.changes import ApplyResult, Change, ChangeSet, StoreError
from claro_dagster.catalogue.feed import check_catalogue

OPERATION = "api"


class ProposalError(StoreError):
    """A proposal refused before anything was written; `problems` lists each one (`changes[i].field: ...`)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class ProposedChange:
    record: str
    field: str
    value: Any
    confidence: float = 100.0
    reason: str = ""
    citation: str | None = None


@dataclass
class ProposalResult:
    change_set: str
    source: str
    result: ApplyResult
    capped: list[int] = field(default_factory=list)  # indexes of changes whose confidence the spec capped
    max_confidence: float = 100.0


def source_name(token_name: str) -> str:
    return f"api:{token_name}"


def max_confidence(spec: Any, token_name: str) -> float:
    api = getattr(spec, "api", None)
    if api is None:
        return 100.0
    client = api.clients.get(token_name)
    if client is not None and client.max_confidence is not None:
        return float(client.max_confidence)
    return float(api.max_confidence)


def _check_value(attr: Any, value: Any) -> str | None:
    """Why `value` (as JSON gave it) does not fit the attribute; None when it does."""
    if value is None:
        return None
    if attr.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{value!r} is not a number (the attribute is of type number: send a JSON number)"
        return None
    if not isinstance(value, str):
        return f"{value!r} is not text (the attribute is of type {attr.type}: send a JSON string)"
    if attr.type == "enum" and attr.values and value not in attr.values:
        return f"{value!r} is not one of the attribute's values ({', '.join(attr.values)})"
    if attr.type == "date":
        try:
            _dt.date.fromisoformat(value[:10])
        except ValueError:
            return f"{value!r} is not an ISO 8601 date such as 2026-12-01"
    return None


def propose(store: Any, catalogue: str, changes: list[ProposedChange], *, token_name: str, change_set_id: str,
            run_id: str | None = None) -> ProposalResult:
    """Check every change, cap its confidence, and apply them as one change set through the gate.

    `change_set_id` is the proposal's identity: proposing the same id again changes nothing (a client's retry)."""
    check_catalogue(store, catalogue)
    if not changes:
        raise ProposalError(["changes: give at least one change"])
    cat = store.catalogue(catalogue)
    problems = []
    cap = max_confidence(store.spec, token_name)
    capped, gated = [], []
    for i, ch in enumerate(changes):
        where = f"changes[{i}]"
        if not isinstance(ch.record, str) or not ch.record.strip():
            problems.append(f"{where}.record: give the record's key ({cat.key})")
            continue
        attr = cat.attributes.get(ch.field)
        if attr is None:
            problems.append(f"{where}.field: {catalogue} has no attribute {ch.field!r}; attributes are: "
                            f"{', '.join(cat.attributes)}")
            continue
        if ch.field == cat.key:
            problems.append(f"{where}.field: {ch.field!r} is the key of {catalogue}; it cannot be changed "
                            "(propose values for the record with that key instead)")
            continue
        why = _check_value(attr, ch.value)
        if why:
            problems.append(f"{where}.value ({ch.field}): {why}")
            continue
        if not 0 <= ch.confidence <= 100:
            problems.append(f"{where}.confidence: {ch.confidence!r} is not between 0 and 100")
            continue
        confidence = ch.confidence
        if confidence > cap:
            confidence = cap
            capped.append(i)
        gated.append(Change(ch.record, ch.field, ch.value, confidence,
                            ch.reason or f"proposed by {source_name(token_name)}", ch.citation))
    if problems:
        raise ProposalError(problems)
    source = source_name(token_name)
    result = store.apply(ChangeSet(change_set_id, catalogue, OPERATION, gated, run_id=run_id, source=source))
    return ProposalResult(change_set_id, source, result, capped, cap)
