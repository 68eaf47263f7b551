"""Change sets: what an operation proposes, and how the three thresholds gate each change."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from claro_dagster.spec.models import AttributeSpec, Thresholds

Outcome = Literal["applied", "queued", "suggested", "discarded"]

#: Review statuses: items still waiting for a person, and decided ones (`withdrawn`: the run that
#: proposed the change was rolled back before anyone decided).
OPEN = ("queued", "suggested", "skipped", "snoozed")
DECIDED = ("approved", "edited", "rejected", "discarded", "withdrawn")


class StoreError(ValueError):
    """Something the catalogue store refuses, with the record and field it concerns."""


@dataclass(frozen=True)
class Change:
    """One proposed value for one field of one record."""

    record: str
    field: str
    new: Any
    confidence: float = 100.0
    reason: str = ""
    citation: str | None = None


@dataclass
class ChangeSet:
    """What one operation proposes in one run. Its `id` is its identity: applying it twice is a no-op."""

    id: str
    catalogue: str
    operation: str
    changes: list[Change] = field(default_factory=list)
    run_id: str | None = None
    source: str | None = None
    model: str | None = None
    reviewer: str | None = None


@dataclass
class ApplyResult:
    change_set: str
    applied: int = 0
    queued: int = 0
    suggested: int = 0
    rejected: int = 0
    unchanged: int = 0
    created: int = 0
    already_applied: bool = False

    def summary(self) -> str:
        if self.already_applied:
            return f"change set {self.change_set} was already applied: nothing changed"
        return (f"{self.applied} applied ({self.created} new records), {self.queued} queued for review, "
                f"{self.suggested} suggested, {self.rejected} rejected, {self.unchanged} unchanged")


def gate(confidence: float, thresholds: Thresholds) -> Outcome:
    """The gate of DESIGN §4, boundaries inclusive on the upper band.

    >= auto_apply: applied; >= review: queued; < reject: discarded; between reject and review
    (only when a team sets reject below review): suggested.
    """
    if confidence >= thresholds.auto_apply:
        return "applied"
    if confidence >= thresholds.review:
        return "queued"
    if confidence < thresholds.reject:
        return "discarded"
    return "suggested"


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def coerce_value(value: Any, attribute: AttributeSpec, *, where: str) -> Any:
    """A value as the store keeps it: float for numbers, str otherwise, None when missing."""
    if is_missing(value):
        return None
    if attribute.type == "number":
        if isinstance(value, bool):
            raise StoreError(f"{where}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise StoreError(f"{where}: {value!r} is not a number; normalize it first "
                             "(the Normalize stage converts units and locale separators)") from None
        return None if math.isnan(number) else number
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
