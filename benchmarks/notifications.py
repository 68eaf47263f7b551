"""Webhook delivery speed: batched throughput against a raw POST loop, and per-change delay.

    python benchmarks/notifications.py                       # 100,000 events batched, 2,000 per change
    python benchmarks/notifications.py --events 20000 --per-change-events 500

1. Batched throughput: N change events (one bulk import) are delivered by `run_delivery_loop` in
   `batched` mode (max_batch 500) to a local receiver (a threaded HTTP server in a subprocess), end
   to end: claiming, planning, reading the bodies, signing, POST, recording. The outbox exists
   before the import (a delivery process is running), so the database rendered each event's message
   as the import wrote it; the import's time is shown, outside the ratio. The baseline is a plain
   `requests.Session().post` loop sending the very same bodies to the same receiver right after
   (median of 3 loops). `--repeat` runs (default 3), each on its own store; the ratio reported is the
   median of the runs' ratios. Target: ratio >= 0.8.
2. Per-change delay: events are written at a steady rate by a producer thread while the loop
   delivers them one per request (`per_change`, loop interval at its minimum); the receiver
   takes each event's creation time from the body. Target: p99 < 2 s.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import requests

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.webhooks import MIN_INTERVAL, WebhookSender, delivery_body, run_delivery_loop
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    NotificationsSpec,
    ProjectSpec,
    WebhookSpec,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# A fast receiver: keep-alive, counts events without parsing in "count" mode; in "delay" mode parses
# each body and records arrival minus the event's timestamp. GET /stats returns the figures as JSON.
RECEIVER = r'''
import json, sys, threading, time
from datetime import datetime
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
mode, expect = sys.argv[1], int(sys.argv[2])
lock = threading.Lock()
stats = {"requests": 0, "events": 0, "bytes": 0, "first_at": None, "last_at": None, "delays": []}
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        now = time.time()
        if mode == "delay":
            msg = json.loads(body)
            items = msg["data"]["events"] if msg["type"] == "batch" else [msg]
            delays = [now - datetime.fromisoformat(i["timestamp"].replace("Z", "+00:00")).timestamp() for i in items]
            events = len(items)
        else:
            delays, events = [], body.count(b'"event_id":')
        with lock:
            stats["requests"] += 1
            stats["events"] += events
            stats["bytes"] += len(body)
            stats["first_at"] = stats["first_at"] or now
            stats["last_at"] = now
            stats["delays"].extend(delays)
            if stats["events"] >= expect and not stats.get("done"):
                stats["done"] = True
                print("done", flush=True)  # the benchmark waits on this line instead of polling
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        with lock:
            full = self.path == "/stats/full"
            data = json.dumps({k: v for k, v in stats.items() if full or k != "delays"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''


# Writes `events` price changes at `rate` per second, 4 per change set.
PRODUCER = r'''
import sys, time
from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec
spec = ProjectSpec.model_validate_json(sys.argv[1])
store = CatalogueStore(spec, sys.argv[2])
events, rate, per_set = int(sys.argv[3]), float(sys.argv[4]), 4
started = time.monotonic()
for n, i in enumerate(range(0, events, per_set)):
    changes = [Change(f"SKU-{k:07d}", "price", 1000.0 + n) for k in range(i, min(i + per_set, events))]
    store.apply(ChangeSet(f"bench-{n}", "products", "reprice", changes=changes))
    pause = started + (n + 1) * per_set / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
'''


class Receiver:
    def __init__(self, mode: str, expect: int):
        self.expect = expect
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, mode, str(expect)], stdout=subprocess.PIPE,
                                     text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"
        self.session = requests.Session()

    def stats(self, full: bool = False) -> dict:
        return self.session.get(self.url + ("/stats/full" if full else "/stats"), timeout=10).json()

    def wait_done(self, timeout: float) -> dict:
        """Block until the receiver has all the expected events. Reading its stdout keeps this process
        idle meanwhile: polling it over HTTP would take the GIL from the delivery loop being measured."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready or self.proc.stdout.readline().strip() != "done":
            raise SystemExit(f"timed out: the receiver got {self.stats()['events']:,} of {self.expect:,} events")
        return self.stats()

    def close(self) -> None:
        self.session.close()
        self.proc.kill()
        self.proc.wait()


def project(url: str, mode: str, max_batch: int) -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={"sku": AttributeSpec(type="text"),
                                                                     "title": AttributeSpec(type="text"),
                                                                     "price": AttributeSpec(type="number")})},
        notifications=NotificationsSpec(webhooks={"bench": WebhookSpec(
            url=url + "/hook", events=["change.*"], secret_env="CLARO_BENCH_WEBHOOK_SECRET", mode=mode,
            max_batch=max_batch, max_wait_seconds=0)}))


def records(n: int) -> pd.DataFrame:
    return pd.DataFrame({"sku": [f"SKU-{i:07d}" for i in range(n)],
                         "title": [f"Stainless steel bolt M{i % 40} pack of {i % 500}" for i in range(n)],
                         "price": [round(1 + (i % 9973) / 7, 2) for i in range(n)]})


def batched_once(events: int, max_batch: int, path: Path) -> dict:
    receiver = Receiver("count", events)
    try:
        spec = project(receiver.url, "batched", max_batch)
        store = CatalogueStore(spec, f"sqlite:///{path}")
        sender = WebhookSender()
        sender.outbox(store)  # the delivery process is up when the import writes its events (it renders them)
        t = time.perf_counter()
        store.import_records("products", records(events), change_set_id="bench-import")
        import_s = time.perf_counter() - t
        stop = threading.Event()
        start = time.time()
        loop = threading.Thread(target=run_delivery_loop, args=(store, spec, stop, MIN_INTERVAL),
                                kwargs={"sender": sender, "max_deliveries": 100}, daemon=True)
        loop.start()
        stats = receiver.wait_done(600)
        stop.set()
        loop.join()
        ours = stats["last_at"] - start
        outbox = sender.outbox(store)
        sent = sorted(outbox.log(status="delivered", limit=10 ** 9), key=lambda d: d.id)
        bodies = [delivery_body(outbox, d, "batched") for d in sent]
        assert sum(len(b) for b in bodies) == stats["bytes"], "the baseline must send the same bytes"
        session = requests.Session()
        session.post(receiver.url + "/hook", data=bodies[0], headers={"Content-Type": "application/json"})
        raws = []
        for _ in range(3):  # the baseline is short: its median of 3 is steadier on a busy machine
            t = time.perf_counter()
            for body in bodies:
                session.post(receiver.url + "/hook", data=body, headers={"Content-Type": "application/json"})
            raws.append(time.perf_counter() - t)
        store.dispose()
        return {"deliveries": len(sent), "bytes": stats["bytes"], "ours_s": ours, "raw_s": statistics.median(raws),
                "import_s": import_s}
    finally:
        receiver.close()


def batched_throughput(events: int, max_batch: int, home: Path, repeat: int) -> dict:
    """`repeat` runs, each with its own store and its baseline right after it; the ratio is the median of
    the runs' ratios (each compares two measurements taken under the same load)."""
    runs = [batched_once(events, max_batch, home / f"batched-{i}.db") for i in range(repeat)]
    ours = statistics.median(r["ours_s"] for r in runs)
    raw = statistics.median(r["raw_s"] for r in runs)
    ratios = sorted(r["raw_s"] / r["ours_s"] for r in runs)
    return {"events": events, "deliveries": runs[0]["deliveries"], "bytes": runs[0]["bytes"], "ours_s": ours,
            "raw_s": raw, "ours_eps": events / ours, "raw_eps": events / raw, "ratio": statistics.median(ratios),
            "ratios": ratios, "import_s": statistics.median(r["import_s"] for r in runs)}


def per_change_delay(events: int, rate: float, home: Path) -> dict:
    receiver = Receiver("delay", events)
    try:
        spec = project(receiver.url, "per_change", 1)
        store = CatalogueStore(spec, f"sqlite:///{home / 'per_change.db'}")
        base = records(events)
        store.import_records("products", base, change_set_id="bench-import")
        sender = WebhookSender()
        sender.outbox(store).seek("bench")  # the records exist already: measure only the changes below
        stop = threading.Event()
        loop = threading.Thread(target=run_delivery_loop, args=(store, spec, stop, MIN_INTERVAL),
                                kwargs={"sender": sender}, daemon=True)
        loop.start()
        # The producer is another process, as a Dagster run writing change sets would be.
        producer = subprocess.run([sys.executable, "-c", PRODUCER, spec.model_dump_json(), store.url,
                                   str(events), str(rate)], check=True)
        assert producer.returncode == 0
        stats = receiver.wait_done(300)
        stop.set()
        loop.join()
        store.dispose()
        delays = sorted(receiver.stats(full=True)["delays"])
        return {"events": len(delays), "rate": rate, "p50": statistics.median(delays),
                "p99": delays[min(len(delays) - 1, int(0.99 * len(delays)))], "max": delays[-1],
                "requests": stats["requests"]}
    finally:
        receiver.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for the batched run")
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--per-change-events", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s written during the per-change run")
    parser.add_argument("--only", choices=["batched", "per_change"], help="run one of the two measurements")
    parser.add_argument("--repeat", type=int, default=3, help="batched runs (the median ratio is reported)")
    args = parser.parse_args(argv)
    os.environ["CLARO_BENCH_WEBHOOK_SECRET"] = SECRET
    with tempfile.TemporaryDirectory(prefix="claro-bench-") as tmp:
        home = Path(tmp)
        b = batched_throughput(args.events, args.max_batch, home, args.repeat) if args.only != "per_change" else None
        p = per_change_delay(args.per_change_events, args.rate, home) if args.only != "batched" else None
    command = " ".join(["python benchmarks/notifications.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"\nWebhook delivery, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, `{command}`\n")
    print("| measurement | claro_dagster | baseline (same run) | result |")
    print("|---|---|---|---|")
    if b:
        print(f"| batched, max_batch {args.max_batch}: {b['events']:,} events in {b['deliveries']:,} signed POSTs "
              f"({b['bytes'] / 1e6:.1f} MB) | {b['ours_eps']:,.0f} events/s ({b['ours_s']:.2f} s) | "
              f"`requests.Session().post` loop of the same bodies: {b['raw_eps']:,.0f} events/s ({b['raw_s']:.2f} s) "
              f"| ratio {b['ratio']:.2f}, median of {len(b['ratios'])} runs "
              f"({', '.join(f'{r:.2f}' for r in b['ratios'])}) "
              f"(target >= 0.8: {'met' if b['ratio'] >= 0.8 else 'missed'}) |")
        print(f"| (the import that wrote the {b['events']:,} events, rendering their messages) | "
              f"{b['import_s']:.2f} s | - | not part of the ratio |")
    if p:
        print(f"| per_change: {p['events']:,} events written at {p['rate']:.0f}/s, loop interval {MIN_INTERVAL} s "
              f"| delay from event to receiver p50 {p['p50'] * 1000:,.0f} ms, p99 {p['p99'] * 1000:,.0f} ms, "
              f"max {p['max'] * 1000:,.0f} ms | - | p99 {'<' if p['p99'] < 2 else '>='} 2 s (target < 2 s) |")


if __name__ == "__main__":
    main()
