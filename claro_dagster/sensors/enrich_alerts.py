"""Review alerts of Bulk Enrichment: the values an enrich run queued for review, told to the channel of the
routing rule that assigned their reviewers (e.g. enrichment under 85 -> #merchandising), or to the spec's
review routes when no rule with a channel matches."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.operations.enrich import OPERATION
from claro_dagster.resources.slack import Alert
from claro_dagster.spec.models import NotificationsSpec, ProjectSpec, SlackRoute

ENRICH_STAGES = ("enrich", "batch_enriched")


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def enrichment_review_alerts(store: CatalogueStore, spec: ProjectSpec, facts, mats: Sequence,
                             routes: NotificationsSpec) -> list[tuple[Alert, NotificationsSpec]]:
    """(alert, the routes it goes to) per enrich materialization of the run that queued values, one alert per
    channel its routing rules name; `routes`: where the others go (the spec's alert routes)."""
    out: list[tuple[Alert, NotificationsSpec]] = []
    queue: ReviewQueue | None = None
    for mat in mats:
        catalogue, _, stage = mat.asset.rpartition("/")
        queued = _int(mat.metadata.get("queued_for_review")) if stage in ENRICH_STAGES else \
            _int(mat.metadata.get("enriched_queued")) if stage == "records" else 0  # batch_enrichment
        if queued <= 0:
            continue
        queue = queue or ReviewQueue(store)
        items = [i for i in queue.list(catalogue=catalogue, operation=OPERATION) if i.run_id == facts.run_id]
        by_channel: dict[str | None, list] = defaultdict(list)
        for item in items:
            rule = spec.routing_rule_for(catalogue, item.field, item.confidence, item.source, OPERATION,
                                         lambda r: bool(r.notify))
            by_channel[rule.notify if rule else None].append(item)
        pending = queue.pending_counts().get(catalogue, 0)
        for channel, group in by_channel.items():
            noun = "enriched value waits" if len(group) == 1 else "enriched values wait"
            reviewers = sorted({r for i in group for r in i.reviewers})
            alert = Alert(
                event="review.queued", title=f"{len(group)} {noun} for review in {catalogue}"
                + (f" ({', '.join(reviewers)})" if reviewers else ""),
                catalogue=catalogue, operation=OPERATION, pipeline=facts.pipeline, source=facts.source, stage=stage,
                run_id=facts.run_id, batch=facts.batch,
                counts={"queued by this run": len(group), "open in the review queue": pending},
                records=[f"{i.record} · {i.field}: → {i.new} ({i.confidence:g}%) · {i.citation or ''}"[:300]
                         for i in group])
            target = routes if channel is None else routes.model_copy(
                update={"slack": [SlackRoute(channel=channel, verbosity="per_record")]})
            out.append((alert, target))
    return out
