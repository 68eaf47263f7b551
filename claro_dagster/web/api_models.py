"""The shapes of the REST API's bodies, as pydantic models: request bodies are validated with them, and the
OpenAPI document's schemas are generated from them (so the document and the validation cannot disagree).
Responses are built as plain JSON by the handlers; their models here describe them for the document, and the
schemathesis tests check every response against them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Json = Any  # any JSON value: a field's value is text or a number (or null), by its attribute's type


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChangeIn(_In):
    record: str = Field(min_length=1, description="the record's key; an unknown key creates the record")
    field: str = Field(min_length=1, description="an attribute of the catalogue (not its key)")
    value: Json = Field(description="the new value: a JSON number for number attributes, a string otherwise, "
                                    "null to clear")
    confidence: float = Field(100, ge=0, le=100, description="how sure the sender is (capped by the spec's "
                                                             "api.max_confidence before the gate)")
    reason: str | None = Field(None, max_length=2000)
    citation: str | None = Field(None, max_length=2000, description="where the value was found, e.g. a URL")


class ProposalIn(_In):
    id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$",
                           description="idempotency key: proposing the same id again changes nothing")
    changes: list[ChangeIn] = Field(min_length=1, max_length=10_000)


class DecisionIn(_In):
    decision: Literal["approve", "reject", "edit"]
    value: Json = Field(None, description="edit: the value to apply instead of the proposed one")
    note: str | None = Field(None, max_length=2000)


class RunIn(_In):
    catalogue: str = Field(min_length=1)
    target: str = Field(min_length=1, description="a pipeline of the catalogue, an operation (analyse, export) "
                                                  "or a destination; or dbt_build (the dbt project's models and "
                                                  "tests) when the Dagster code location has it")
    filter: str | None = Field(None, description="a record filter, e.g. brand == \"Acme\" and price > 100")


# ---------------------------------------------------------------------------------------- responses
class Error(BaseModel):
    error: str
    status: int
    position: int | None = Field(None, description="a filter error: 0-based character offset")
    filter: str | None = None
    problems: list[str] | None = Field(None, description="each problem of a refused body")
    unavailable: str | None = Field(None, description="a run target the Dagster code location does not have now "
                                                      "(dbt_build without CLARO_DBT_PROJECT)")


class Me(BaseModel):
    name: str
    id: int
    scopes: list[str]
    expires_at: str


class Attribute(BaseModel):
    name: str
    type: str
    values: list[str] | None = None


class Catalogue(BaseModel):
    name: str
    key: str
    records: int
    attributes: list[Attribute]


class Catalogues(BaseModel):
    catalogues: list[Catalogue]


class RecordPage(BaseModel):
    records: list[dict[str, Json]]
    next_cursor: str | None = Field(description="pass as cursor= for the next page; null on the last page")


class Provenance(BaseModel):
    operation: str
    change_set: str
    run_id: str | None
    source: str | None
    model: str | None
    reviewer: str | None
    confidence: float
    at: str
    citation: str | None


class HistoryEntry(BaseModel):
    field: str
    old: Json
    new: Json
    kind: str
    change_set: str
    provenance: Provenance | None
    reason: str | None
    at: str | None
    by: str | None
    proposal: int | None
    proposed_in: str | None


class Record(BaseModel):
    catalogue: str
    key: str
    values: dict[str, Json]
    provenance: dict[str, Provenance | None]
    history: list[HistoryEntry]


class Change(BaseModel):
    sequence: int
    type: str = Field(description="change.applied, or change.approved for a value a reviewer (or a merge) applied")
    kind: Literal["created", "updated", "deleted"] = Field(
        description="created: a new record, one change with its values however it was created; updated: one "
                    "field of an existing record; deleted: a record removed (a rollback of the run that created it)")
    catalogue: str
    record: str | None
    field: str | None
    change_set: str
    at: str
    values: dict[str, Json] | None = Field(None, description="created: the new record's values")
    old: Json = None
    new: Json = None
    operation: str | None = None
    source: str | None = None
    run_id: str | None = None
    confidence: float | None = None
    reason: str | None = None
    by: str | None = None


class Changes(BaseModel):
    changes: list[Change]
    next: int = Field(description="the sequence to resume from (since=)")
    last: int = Field(description="the newest sequence when read: caught up when next == last")


class ProposalResult(BaseModel):
    change_set: str
    applied: int
    queued: int
    suggested: int
    rejected: int
    unchanged: int
    created: int
    already_applied: bool
    source: str
    max_confidence: float
    capped: list[int] = Field(description="indexes of the changes whose confidence the spec lowered")


class ReviewItem(BaseModel):
    id: int
    catalogue: str
    record: str
    field: str
    old: Json
    new: Json
    confidence: float
    reason: str | None
    citation: str | None
    operation: str
    source: str | None
    run_id: str | None
    change_set: str
    reviewers: list[str]
    status: str
    decided_by: str | None
    at: str


class ReviewItems(BaseModel):
    items: list[ReviewItem]


class Run(BaseModel):
    run_id: str
    status: str = Field(description="Dagster's run status: QUEUED, STARTING, STARTED, SUCCESS, FAILURE, "
                                    "CANCELING, CANCELED, ...")
    done: bool
    tags: dict[str, str] | None = None


class Runs(BaseModel):
    runs: list[Run]


class Batch(BaseModel):
    key: str
    catalogue: str
    source: str
    filename: str
    status: str
    stage: str | None
    message: str | None
    received_at: str
    updated_at: str


class Batches(BaseModel):
    batches: list[Batch]


class AuditEntry(BaseModel):
    id: int
    at: str
    token: int
    token_name: str
    action: str
    target: str | None
    status: int
    detail: Json


class Audit(BaseModel):
    entries: list[AuditEntry]


REQUESTS = (ProposalIn, DecisionIn, RunIn)
RESPONSES = (Error, Me, Catalogues, RecordPage, Record, Changes, ProposalResult, ReviewItem, ReviewItems, Run,
             Runs, Batch, Batches, Audit)
