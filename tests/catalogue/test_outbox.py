"""Webhook delivery state: planning by mode, stable webhook-ids, retry schedule, dead letter, log and retry.

Runs on both backends (the embedded SQLite file and the real PostgreSQL) through `store_url`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import orjson
import pandas as pd
import pytest
import sqlalchemy as sa

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.outbox import (
    Delivery,
    OutboxError,
    RetryPolicy,
    WebhookOutbox,
    deliveries,
    event_matches,
    webhook_id,
)
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    NotificationsSpec,
    ProjectSpec,
    WebhookSpec,
)


def hook(mode: str = "per_change", events: tuple[str, ...] = ("change.*",), **kw) -> WebhookSpec:
    return WebhookSpec(url="http://127.0.0.1:9/hook", events=list(events), secret_env="CLARO_TEST_WEBHOOK_SECRET",
                       mode=mode, **kw)


def project(**webhooks: WebhookSpec) -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={"sku": AttributeSpec(type="text"),
                                                                     "price": AttributeSpec(type="number")})},
        notifications=NotificationsSpec(webhooks=webhooks or {"erp": hook()}))


@pytest.fixture
def store(store_url):
    s = CatalogueStore(project(), store_url)
    yield s
    s.dispose()


@pytest.fixture
def outbox(store):
    return WebhookOutbox(store, rng=__import__("random").Random(7))


def create(store: CatalogueStore, n: int, first: int = 0, cs: str | None = None) -> None:
    """n new records -> n change.applied events."""
    skus = [f"SKU-{i:04d}" for i in range(first, first + n)]
    store.import_records("products", pd.DataFrame({"sku": skus, "price": [10.0 + i for i in range(n)]}),
                         change_set_id=cs or f"import-{first}-{n}", run_id="run-1")


def event_times(store: CatalogueStore) -> dict[int, datetime]:
    return {e["id"]: e["at"] for e in store.events(limit=100_000)}


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------- planning by mode
def test_per_change_plans_one_delivery_per_event_in_order_and_advances_the_cursor(store, outbox):
    create(store, 3)
    planned = outbox.plan("erp", hook(), now())
    assert [d.event_ids for d in planned] == [(1,), (2,), (3,)]
    assert all(d.status == "pending" and d.attempts == 0 for d in planned)
    assert len({d.webhook_id for d in planned}) == 3 and all(d.webhook_id.startswith("msg_") for d in planned)
    assert outbox.cursor("erp") == 3
    assert outbox.plan("erp", hook(), now()) == []  # nothing new
    create(store, 2, first=3)
    assert [d.event_ids for d in outbox.plan("erp", hook(), now())] == [(4,), (5,)]


def test_subscription_gets_only_the_event_types_it_asked_for(store, outbox):
    create(store, 2)  # events 1-2: change.applied (new records)
    store.apply(ChangeSet("enrich-1", "products", "enrich", [Change("SKU-0000", "price", 99.0, confidence=70)]))
    store.apply(ChangeSet("enrich-2", "products", "enrich", [Change("SKU-0001", "price", 5.0, confidence=20)]))
    types = {e["id"]: e["type"] for e in store.events()}
    assert sorted(types.values()) == ["change.applied", "change.applied", "change.queued_for_review",
                                      "change.rejected"]
    review = hook(events=("change.queued_for_review",))
    planned = outbox.plan("reviewers", review, now())
    assert [types[d.first_event_id] for d in planned] == ["change.queued_for_review"]
    assert outbox.cursor("reviewers") == max(types)  # unwanted events are passed over, not re-read
    assert event_matches("change.rejected", ["change.*"]) and not event_matches("run.failed", ["change.*"])
    assert event_matches("run.failed", ["*"])


def test_batched_cuts_full_batches_of_max_batch_events(store, outbox):
    create(store, 7)
    planned = outbox.plan("erp", hook("batched", max_batch=3, max_wait_seconds=0), now())
    assert [d.event_ids for d in planned] == [(1, 2, 3), (4, 5, 6), (7,)]


def test_batched_partial_batch_waits_for_max_wait_or_for_more_events(store, outbox):
    spec = hook("batched", max_batch=3, max_wait_seconds=60)
    create(store, 7)
    created = event_times(store)[7]
    planned = outbox.plan("erp", spec, created + timedelta(seconds=1))
    assert [d.event_ids for d in planned] == [(1, 2, 3), (4, 5, 6)]
    assert outbox.cursor("erp") == 6  # event 7 waits
    assert outbox.plan("erp", spec, created + timedelta(seconds=30)) == []
    create(store, 1, first=7)  # event 8 joins the waiting batch
    assert outbox.plan("erp", spec, created + timedelta(seconds=31)) == []
    planned = outbox.plan("erp", spec, created + timedelta(seconds=61))  # the oldest waited long enough
    assert [d.event_ids for d in planned] == [(7, 8)]
    create(store, 3, first=8)  # 9, 10, 11: a full batch goes at once, the rest waits again
    assert [d.event_ids for d in outbox.plan("erp", spec, now())] == [(9, 10, 11)]


def test_scheduled_plans_everything_pending_when_called_in_batches_of_max_batch(store, outbox):
    create(store, 7)
    at = event_times(store)[7]
    planned = outbox.plan("nightly", hook("scheduled", max_batch=3, max_wait_seconds=3600, cron="0 2 * * *"), at)
    assert [d.event_ids for d in planned] == [(1, 2, 3), (4, 5, 6), (7,)]
    planned = outbox.plan("all", hook("scheduled", cron="0 2 * * *"), at)
    assert [d.event_ids for d in planned] == [tuple(range(1, 8))]


def test_plan_limit_caps_deliveries_per_call_and_the_rest_follows(store, outbox):
    create(store, 10)
    first = outbox.plan("erp", hook(), now(), limit=4)
    assert [d.event_ids for d in first] == [(1,), (2,), (3,), (4,)]
    assert outbox.cursor("erp") == 4
    rest = outbox.plan("erp", hook(), now(), limit=100)
    assert [d.first_event_id for d in rest] == [5, 6, 7, 8, 9, 10]


def test_seek_to_the_end_skips_the_backlog(store, outbox):
    create(store, 5)
    assert outbox.seek("erp") == 5
    assert outbox.plan("erp", hook(), now()) == []
    create(store, 1, first=5)
    assert [d.event_ids for d in outbox.plan("erp", hook(), now())] == [(6,)]


# ---------------------------------------------------------------------- stable webhook-ids, crashes, races
def test_webhook_id_depends_on_subscription_events_and_their_time():
    at = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert webhook_id("erp", 1, 5, at) == webhook_id("erp", 1, 5, at)
    assert webhook_id("erp", 1, 5, at) == webhook_id("erp", 1, 5, at.replace(tzinfo=None))  # SQLite drops the zone
    assert len({webhook_id("erp", 1, 5, at), webhook_id("pim", 1, 5, at), webhook_id("erp", 1, 6, at),
                webhook_id("erp", 2, 5, at), webhook_id("erp", 1, 5, at + timedelta(microseconds=1))}) == 5


def test_a_crash_while_planning_leaves_nothing_and_the_replan_has_the_same_webhook_ids(store, outbox):
    create(store, 5)
    spec = hook("batched", max_batch=2, max_wait_seconds=0)
    crash = {"armed": True}

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def die_on_insert(conn, cursor, statement, parameters, context, executemany):
        if crash["armed"] and statement.lstrip().upper().startswith("INSERT INTO CLARO_WEBHOOK_DELIVERIES"):
            crash["armed"] = False
            raise RuntimeError("process died here")

    at = now()
    with pytest.raises(RuntimeError, match="process died"):
        outbox.plan("erp", spec, at)  # the cursor had already moved inside the transaction
    assert outbox.cursor("erp") == 0 and outbox.log() == []
    planned = outbox.plan("erp", spec, at)
    times = event_times(store)
    assert [(d.event_ids, d.webhook_id) for d in planned] == [
        ((1, 2), webhook_id("erp", 1, 2, times[1])), ((3, 4), webhook_id("erp", 3, 4, times[3])),
        ((5,), webhook_id("erp", 5, 5, times[5]))]


def test_replanning_the_same_events_from_a_copy_of_the_database_gives_the_same_ids(tmp_path):
    spec = project()
    store = CatalogueStore(spec, f"sqlite:///{tmp_path / 'a.db'}")
    create(store, 6)
    store.dispose()
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")  # b = a as it was before the plan below committed
    ids = []
    for name in ("a.db", "b.db"):
        copy = CatalogueStore(spec, f"sqlite:///{tmp_path / name}")
        ids.append([d.webhook_id for d in WebhookOutbox(copy).plan("erp", hook("batched", max_batch=4,
                                                                               max_wait_seconds=0), now())])
        copy.dispose()
    assert len(ids[0]) == 2 and ids[0] == ids[1]


def test_moving_the_cursor_back_never_plans_the_same_delivery_twice(store, outbox):
    create(store, 3)
    first = outbox.plan("erp", hook(), now())
    outbox.seek("erp", 0)
    assert outbox.plan("erp", hook(), now()) == []
    assert len(outbox.log()) == len(first) == 3


def test_concurrent_planners_never_plan_an_event_twice(store):
    create(store, 40)
    outboxes = [WebhookOutbox(store) for _ in range(4)]
    barrier = threading.Barrier(len(outboxes))
    results: list[list] = [[] for _ in outboxes]
    errors: list[BaseException] = []

    def plan(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(5):
                results[i].extend(outboxes[i].plan("erp", hook("batched", max_batch=3, max_wait_seconds=0), now(),
                                                   limit=2))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=plan, args=(i,)) for i in range(len(outboxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    results[0].extend(outboxes[0].plan("erp", hook("batched", max_batch=3, max_wait_seconds=0), now()))  # the rest
    planned = [e for d in outboxes[0].log(limit=1000) for e in d.event_ids]
    assert sorted(planned) == list(range(1, 41))  # every event exactly once
    assert sum(len(r) for r in results) == len(outboxes[0].log(limit=1000))


def test_planning_waits_at_a_gap_in_event_ids_until_the_gap_is_old(store, outbox):
    """On PostgreSQL an event id can become visible after a later one (transactions commit out of order)."""
    e = store.t["events"]
    fresh, old = now(), now() - timedelta(minutes=10)
    with store.engine.begin() as conn:
        for i, at in ((1, fresh), (2, fresh), (4, fresh)):
            conn.execute(e.insert().values(id=i, type="change.applied", catalogue="products", record=f"r{i}",
                                           change_set="cs", payload="{}", at=at))
    assert [d.event_ids for d in outbox.plan("erp", hook(), now())] == [(1,), (2,)]
    assert outbox.cursor("erp") == 2  # 3 may still be committing: 4 waits
    with store.engine.begin() as conn:
        conn.execute(e.update().where(e.c.id == 4).values(at=old))  # a gap this old was a rollback
    assert [d.event_ids for d in outbox.plan("erp", hook(), now())] == [(4,)]


# ---------------------------------------------------------------------- due, ordering, retries, dead letter
def test_due_returns_each_subscription_in_event_order_and_blocks_behind_a_failing_delivery(store, outbox):
    create(store, 3)
    t0 = now()
    a = outbox.plan("a", hook(), t0)
    b = outbox.plan("b", hook(), t0)
    assert [d.id for d in outbox.due(t0)] == [d.id for d in a + b]
    outbox.mark_failed(a[0].id, 500, "HTTP 500", t0, RetryPolicy(jitter=0))
    assert [d.id for d in outbox.due(t0)] == [d.id for d in b]  # a waits behind its failed head
    assert [d.id for d in outbox.due(t0 + timedelta(seconds=31), subscriptions=["a"])] == [d.id for d in a]
    outbox.mark_delivered(b[0].id, 200, t0)
    assert [d.id for d in outbox.due(t0, subscriptions=["b"], limit=1)] == [b[1].id]


def test_failed_attempts_follow_the_retry_schedule_then_the_delivery_is_dead(store, outbox):
    create(store, 2)
    t0 = now()
    head, second = outbox.plan("erp", hook(), t0)
    policy = RetryPolicy(max_attempts=10, jitter=0)
    at, waits = t0, []
    for attempt in range(1, 10):
        d = outbox.mark_failed(head.id, 503, "HTTP 503: maintenance", at, policy)
        assert (d.status, d.attempts, d.last_status_code, d.last_error) == ("failed", attempt, 503,
                                                                            "HTTP 503: maintenance")
        waits.append((d.next_attempt_at - at).total_seconds())
        assert outbox.due(d.next_attempt_at - timedelta(seconds=1)) == []
        assert outbox.due(d.next_attempt_at)[0].id == head.id
        at = d.next_attempt_at
    assert waits == [30, 120, 600, 3600, 10800, 21600, 43200, 86400, 86400]
    dead = outbox.mark_failed(head.id, None, "connection failed: Connection refused", at, policy)
    assert (dead.status, dead.attempts, dead.next_attempt_at, dead.last_status_code) == ("dead", 10, None, None)
    assert [d.id for d in outbox.due(at)] == [second.id]  # the dead letter no longer holds the queue
    assert [d.id for d in outbox.log(status="dead")] == [head.id]


def test_retry_delays_are_jittered_around_the_schedule(outbox):
    policy = RetryPolicy(jitter=0.2)
    import random

    delays = [policy.delay(1, random.Random(seed)) for seed in range(50)]
    assert all(24 <= d <= 36 for d in delays) and len(set(delays)) > 40
    assert 0.8 * 3600 <= policy.delay(4, random.Random(1)) <= 1.2 * 3600
    assert policy.delay(50, random.Random(1)) <= 1.2 * 86400  # the last step repeats


def test_retry_makes_a_dead_delivery_due_now_with_the_same_webhook_id(store, outbox):
    create(store, 1)
    t0 = now()
    (d,) = outbox.plan("erp", hook(), t0)
    for _ in range(3):
        outbox.mark_failed(d.id, 410, "HTTP 410", t0, RetryPolicy(max_attempts=3))
    assert outbox.get(d.id).status == "dead"
    later = t0 + timedelta(days=3)
    again = outbox.retry(d.id, later)
    assert (again.status, again.attempts, again.webhook_id, again.next_attempt_at) == ("pending", 0, d.webhook_id,
                                                                                       later)
    assert [x.id for x in outbox.due(later)] == [d.id]
    outbox.mark_delivered(d.id, 204, later)
    done = outbox.get(d.id)
    assert (done.status, done.attempts, done.last_status_code, done.delivered_at) == ("delivered", 1, 204, later)
    with pytest.raises(OutboxError, match=f"delivery {d.id} is delivered"):
        outbox.retry(d.id)
    with pytest.raises(OutboxError, match="no webhook delivery 999"):
        outbox.retry(999)


def test_retry_of_a_failed_delivery_skips_its_wait(store, outbox):
    create(store, 1)
    t0 = now()
    (d,) = outbox.plan("erp", hook(), t0)
    outbox.mark_failed(d.id, 500, "HTTP 500", t0)
    assert outbox.due(t0) == []
    outbox.retry(d.id, t0)
    assert [x.id for x in outbox.due(t0)] == [d.id]


def test_an_answer_recorded_twice_keeps_the_first(store, outbox):
    create(store, 1)
    (d,) = outbox.plan("erp", hook(), now())
    outbox.mark_delivered_many([(d.id, 200)], now())
    after = outbox.mark_failed(d.id, 500, "late failure from a second sender", now())
    assert (after.status, after.attempts, after.last_error) == ("delivered", 1, None)


# ---------------------------------------------------------------------- reading: log, counts, events, prune
def test_log_is_newest_first_and_filters_by_subscription_and_status(store, outbox):
    create(store, 3)
    t0 = now()
    a = outbox.plan("a", hook(), t0)
    b = outbox.plan("b", hook("batched", max_batch=10, max_wait_seconds=0), t0)
    outbox.mark_failed(a[0].id, 500, "HTTP 500", t0)
    outbox.mark_delivered(b[0].id, 200, t0)
    assert [d.id for d in outbox.log()] == sorted([d.id for d in a + b], reverse=True)
    assert [d.id for d in outbox.log(subscription="a", limit=2)] == [a[2].id, a[1].id]
    assert [d.id for d in outbox.log(status="failed")] == [a[0].id]
    assert outbox.counts() == {"pending": 2, "delivered": 1, "failed": 1, "dead": 0}
    assert outbox.counts("b") == {"pending": 0, "delivered": 1, "failed": 0, "dead": 0}
    with pytest.raises(OutboxError, match="unknown delivery status 'lost'; statuses are: pending, delivered"):
        outbox.log(status="lost")


def test_events_of_a_delivery_are_the_outbox_events(store, outbox):
    create(store, 2)
    store.apply(ChangeSet("reprice", "products", "reprice", [Change("SKU-0001", "price", 12.5, reason="promo")]))
    (d,) = outbox.plan("erp", hook("scheduled", cron="@daily"), now())
    events = outbox.events_of(d)
    assert [e["id"] for e in events] == [1, 2, 3] and events == store.events()
    assert events[2]["payload"]["new"] == 12.5 and events[2]["payload"]["reason"] == "promo"
    assert events[0]["at"].tzinfo is not None


def test_events_of_many_deliveries_are_read_at_once_and_split_by_delivery(store, outbox):
    create(store, 6)
    store.apply(ChangeSet("queue", "products", "enrich", [Change("SKU-0002", "price", 1.0, confidence=60)]))
    planned = outbox.plan("erp", hook("batched", events=("change.applied",), max_batch=4, max_wait_seconds=0), now())
    assert [d.event_ids for d in planned] == [(1, 2, 3, 4), (5, 6)]  # event 7 is a review, not wanted here
    many = outbox.event_rows_many(planned)
    assert many == {d.id: outbox.event_rows(d) for d in planned}
    assert [r[0] for r in many[planned[1].id]] == [5, 6]
    assert outbox.event_rows_many([]) == {}


def test_prune_forgets_old_delivered_deliveries_only(store, outbox):
    create(store, 2)
    t0 = now()
    done, failing = outbox.plan("erp", hook(), t0)
    outbox.mark_delivered(done.id, 200, t0)
    outbox.mark_failed(failing.id, 500, "HTTP 500", t0)
    assert outbox.prune(t0) == 0
    assert outbox.prune(t0 + timedelta(days=31)) == 1
    assert [d.id for d in outbox.log()] == [failing.id]


def test_tables_are_created_in_the_store_database(store, outbox):
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"claro_webhook_cursors", "claro_webhook_deliveries"} <= names
    unique = sa.inspect(store.engine).get_unique_constraints("claro_webhook_deliveries")
    indexes = sa.inspect(store.engine).get_indexes("claro_webhook_deliveries")
    assert any(c["column_names"] == ["webhook_id"] for c in unique + indexes if c.get("unique", True))
    assert deliveries.c.webhook_id.unique


def test_the_outbox_does_not_import_dagster():
    code = "import sys, claro_dagster.catalogue.outbox; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------- messages rendered by the database
def test_the_database_renders_each_event_as_the_sender_would_and_leaves_what_it_cannot_to_the_sender(store, outbox):
    """Every kind of event (bulk-created records, updates whose payload repeats record and field, review
    proposals, run events with nested values, text that needs escaping) gets a stored message that parses to
    the same JSON `build_payload` renders; a value PostgreSQL's jsonb refuses (a NUL character) leaves the
    write intact and the message to the sender."""
    from claro_dagster.resources.webhooks import build_payload, delivery_body

    create(store, 3)
    store.apply(ChangeSet("edit-1", "products", "normalize", [
        Change("SKU-0000", "price", 12.5, reason='quotes " and \\ backslash, é, 🦆, \u2028'),
        Change("SKU-0001", "price", 99.0, 70, "needs a look")]))  # 70: queued for review (a proposal id)
    store.append_event("run.completed", change_set="run:r-1", catalogue="products", payload={
        "run_id": "r-1", "assets": ["products/records"], "counts": {"rows": 3}, "error": None, "score": 0.5})
    store.append_event("run.failed", change_set="run:r-2", catalogue="products", payload={"error": "nul\x00 byte"})
    events = store.events(limit=100)
    types = [e["type"] for e in events]
    assert {"change.applied", "change.queued_for_review", "run.completed", "run.failed"} <= set(types)
    spec = hook("batched", events=("*",), max_batch=100, max_wait_seconds=0)
    [delivery] = outbox.plan("all", spec, now() + timedelta(minutes=1))
    assert list(delivery.event_ids) == [e["id"] for e in events]
    python = orjson.loads(build_payload(delivery, outbox.event_rows(delivery), "batched"))
    assert orjson.loads(delivery_body(outbox, delivery, "batched")) == python
    single = [e["id"] for e in events if e["type"] == "run.completed"]
    rendered = {}
    for event_id in (e["id"] for e in events):
        one = Delivery(delivery.id, "all", "msg", (event_id,), "pending", 0, None, None, None, now(), None)
        body = outbox.rendered([one]).get(one.id)
        if body is not None:
            rendered[event_id] = body
            assert orjson.loads(body) == orjson.loads(build_payload(one, outbox.event_rows(one), "per_change"))
    nul = events[-1]["id"]
    expected = {e["id"] for e in events} - ({nul} if store.engine.dialect.name == "postgresql" else set())
    assert set(rendered) == expected and single[0] in rendered


def test_messages_are_rendered_only_while_the_spec_has_webhook_subscriptions(store, store_url):
    """The retention job opens the outbox of every project: without subscriptions it must not make writes dearer."""
    from claro_dagster.resources.webhooks import delivery_body

    outbox = WebhookOutbox(store)
    create(store, 2)
    spec = hook("batched", max_batch=10, max_wait_seconds=0)
    [first] = outbox.plan("erp", spec, now() + timedelta(minutes=1))
    assert set(outbox.rendered([first])) == {first.id}
    no_hooks = project()
    no_hooks.notifications.webhooks.clear()
    other = CatalogueStore(no_hooks, store_url)
    WebhookOutbox(other)  # removes the renderer
    create(store, 2, first=10)
    [second] = outbox.plan("erp", spec, now() + timedelta(minutes=1))
    assert outbox.rendered([second]) == {}
    body = orjson.loads(delivery_body(outbox, second, "batched"))  # the sender renders it instead
    assert [e["data"]["record"] for e in body["data"]["events"]] == ["SKU-0010", "SKU-0011"]
    WebhookOutbox(store)  # subscriptions again: rendered again from the next event on
    create(store, 1, first=20)
    [third] = outbox.plan("erp", spec, now() + timedelta(minutes=1))
    assert set(outbox.rendered([third])) == {third.id}
    other.dispose()
