"""What a team scrapes from `claro serve`: `/metrics` in Prometheus text format, and `/readyz`.

Every value is read from the catalogue store when Prometheus scrapes (a custom collector, no counters kept in
the web process), so several `claro serve` replicas report the same numbers and a restart loses nothing.

| metric | labels | meaning |
|---|---|---|
| `claro_store_up` | | 1 when the store answered this scrape, else 0 (and nothing else is reported) |
| `claro_batches` | catalogue, status | batches by status: received, validated, halted, published, failed, quarantined |
| `claro_batches_oldest_unfinished_age_seconds` | catalogue | age of the oldest batch still received or validated |
| `claro_batches_stuck` | catalogue | unfinished batches older than the stuck age (below) |
| `claro_review_queue_depth` | catalogue | open review items (queued, suggested, snoozed, skipped) |
| `claro_webhook_backlog` | subscription | webhook deliveries not delivered yet (pending or failed, to be retried) |
| `claro_webhook_dead` | subscription | deliveries that exhausted their attempts (the dead-letter list) |
| `claro_webhook_oldest_undelivered_age_seconds` | subscription | age of the oldest delivery not delivered yet |
| `claro_push_errors` | destination | records a sales channel refused at the last push (channel state `failed`) |
| `claro_push_held` | destination | records held back from a channel at the last push |

The stuck age is the one the `claro_stuck_batches` sensor alerts on (`catalogue/stuck_batches.py`: the spec's
`notifications.batch_stuck_after_seconds`, default 3600, or $CLARO_BATCH_STUCK_AFTER_SECONDS when set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from claro_dagster.catalogue.changes import OPEN
from claro_dagster.catalogue.stuck_batches import UNFINISHED, stuck_after_seconds
from claro_dagster.catalogue.stuck_batches import age_seconds as _age

log = logging.getLogger(__name__)


def store_metrics(store, now: datetime, stuck_after: float) -> list[GaugeMetricFamily]:
    """The gauges of one scrape, read from the store in one connection."""
    t = store.t
    batches = GaugeMetricFamily("claro_batches", "Batches by status.", labels=["catalogue", "status"])
    oldest = GaugeMetricFamily("claro_batches_oldest_unfinished_age_seconds",
                               "Age of the oldest batch still received or validated.", labels=["catalogue"])
    stuck = GaugeMetricFamily("claro_batches_stuck", f"Unfinished batches older than {stuck_after:g} seconds "
                              "(notifications.batch_stuck_after_seconds).", labels=["catalogue"])
    review = GaugeMetricFamily("claro_review_queue_depth", "Open review items.", labels=["catalogue"])
    backlog = GaugeMetricFamily("claro_webhook_backlog", "Webhook deliveries not delivered yet.",
                                labels=["subscription"])
    dead = GaugeMetricFamily("claro_webhook_dead", "Webhook deliveries that exhausted their attempts.",
                             labels=["subscription"])
    undelivered = GaugeMetricFamily("claro_webhook_oldest_undelivered_age_seconds",
                                    "Age of the oldest webhook delivery not delivered yet.", labels=["subscription"])
    push_errors = GaugeMetricFamily("claro_push_errors", "Records the channel refused at the last push.",
                                    labels=["destination"])
    held = GaugeMetricFamily("claro_push_held", "Records held back from the channel at the last push.",
                             labels=["destination"])
    b, p = t["batches"], t["proposals"]
    with store.engine.connect() as conn:
        for catalogue, status, count in conn.execute(sa.select(b.c.catalogue, b.c.status, sa.func.count())
                                                     .group_by(b.c.catalogue, b.c.status)):
            batches.add_metric([catalogue, status], count)
        ages: dict[str, list[float]] = {}
        for catalogue, updated in conn.execute(sa.select(b.c.catalogue, b.c.updated_at)
                                               .where(b.c.status.in_(UNFINISHED))):
            ages.setdefault(catalogue, []).append(_age(now, updated))
        for catalogue, values in ages.items():
            oldest.add_metric([catalogue], max(values))
            stuck.add_metric([catalogue], sum(age > stuck_after for age in values))
        for catalogue in store.spec.catalogues:
            depth = conn.execute(sa.select(sa.func.count()).where(p.c.catalogue == catalogue,
                                                                  p.c.status.in_(OPEN))).scalar_one()
            review.add_metric([catalogue], depth)
        inspector = sa.inspect(conn)
        if inspector.has_table("claro_webhook_deliveries"):
            from claro_dagster.catalogue.outbox import deliveries as d

            waiting: dict[str, list] = {}  # subscription -> [count, oldest age] of pending and failed deliveries
            for subscription, status, count, first in conn.execute(
                    sa.select(d.c.subscription, d.c.status, sa.func.count(), sa.func.min(d.c.created_at))
                    .where(d.c.status != "delivered").group_by(d.c.subscription, d.c.status)):
                if status == "dead":
                    dead.add_metric([subscription], count)
                    continue
                total, age = waiting.get(subscription, (0, 0.0))
                waiting[subscription] = [total + count, max(age, _age(now, first))]
            for subscription, (count, age) in waiting.items():
                backlog.add_metric([subscription], count)
                undelivered.add_metric([subscription], age)
        if inspector.has_table("claro_channel_state"):
            from claro_dagster.catalogue.channels import channel_state as c

            for destination, status, count in conn.execute(
                    sa.select(c.c.destination, c.c.status, sa.func.count())
                    .where(c.c.status.in_(["failed", "held"])).group_by(c.c.destination, c.c.status)):
                (push_errors if status == "failed" else held).add_metric([destination], count)
    return [batches, oldest, stuck, review, backlog, dead, undelivered, push_errors, held]


class StoreCollector(Collector):
    """Reads the gauges from the store at each scrape; `open_store()` opens it (the caller disposes nothing:
    the collector disposes what it opened)."""

    def __init__(self, open_store: Callable[[], object], clock: Callable[[], float] = time.time):
        self.open_store = open_store
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("claro_store_up", "1 when the catalogue store answered this scrape.")
        try:
            store = self.open_store()
        except Exception as exc:  # a scrape must answer: the store being down is what it reports
            log.warning("metrics: the catalogue store cannot be opened: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        try:
            gauges = store_metrics(store, datetime.fromtimestamp(self.clock(), UTC), stuck_after_seconds(store.spec))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: reading the catalogue store failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        finally:
            store.dispose()
        up.add_metric([], 1)
        yield up
        yield from gauges


def metrics_text(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry's exposition (Prometheus text format 0.0.4) and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def store_ready(open_store: Callable[[], object]) -> str | None:
    """None when the catalogue store opens and answers a query, else why not (the password hidden)."""
    try:
        store = open_store()
    except Exception as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        with store.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except sa.exc.SQLAlchemyError as exc:
        return f"the catalogue store does not answer: {type(exc).__name__}"
    finally:
        store.dispose()
