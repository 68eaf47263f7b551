"""HTTP pull benchmark: 1,000,000 records in pages of 1,000 from a local server, against a plain `requests` loop.

    python benchmarks/http_pull.py [--records 1000000] [--page-size 1000] [--repeat 3]

A local HTTP/1.1 server (its own process, so its work does not share our interpreter) holds the feed's pages
pre-rendered as JSON (`{"data": [...]}`, 5 fields a record) and answers `GET /items?page=N&per_page=M`.
In the same run, alternately, median of `--repeat`:

- baseline: a plain loop with one `requests.Session`: GET each page, `response.json()["data"]`, keep the records;
- pull: `claro_dagster.resources.http_source.pull` with `paginate: {style: page}` through the project's
  `HttpClient` (retries, redaction, loop detection by request and body hash, JMESPath for the records);
- pull + batch file: the pull and the records written as the batch CSV (`records_csv`), as the sensor does.

Ratio = seconds / baseline seconds; target: the pull within 1.5x of the plain loop.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/http_pull.py` from anywhere

import requests  # noqa: E402

from claro_dagster.resources.http import HttpClient  # noqa: E402
from claro_dagster.resources.http_source import pull, records_csv  # noqa: E402
from claro_dagster.spec.models import HttpPullSpec  # noqa: E402

TARGET = 1.5


def serve(records: int, page_size: int, ready) -> None:
    pages = []
    for start in range(0, records, page_size):
        rows = [{"sku": f"ACM-{n:07d}", "title": f"Product {n}", "price": round(n % 1000 / 7, 2),
                 "brand": "Acme", "updated_at": f"2026-12-01T{n % 24:02d}:00:00Z"}
                for n in range(start, min(records, start + page_size))]
        pages.append(json.dumps({"data": rows}).encode())
    empty = b'{"data": []}'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            q = parse_qs(urlsplit(self.path).query)
            page = int(q["page"][0]) - 1
            body = pages[page] if page < len(pages) else empty
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ready.put(server.server_address[1])
    server.serve_forever()


def baseline(url: str, page_size: int) -> tuple[float, int]:
    start = time.perf_counter()
    records: list[dict] = []
    with requests.Session() as session:
        page = 1
        while True:
            response = session.get(f"{url}/items", params={"page": page, "per_page": page_size}, timeout=30)
            response.raise_for_status()
            data = response.json()["data"]
            records += data
            if len(data) < page_size:
                break
            page += 1
    return time.perf_counter() - start, len(records)


def ours(url: str, page_size: int, write: bool) -> tuple[float, int]:
    spec = HttpPullSpec.model_validate({"url": "/items", "records": "data", "paginate": {
        "style": "page", "limit_param": "per_page", "page_size": page_size, "max_pages": 100_000}})
    start = time.perf_counter()
    with HttpClient(timeout=30) as client:
        result = pull(spec, client, base_url=url)
    if write:
        records_csv(result.records)
    return time.perf_counter() - start, len(result.records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ready = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.records, args.page_size, ready), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ready.get(timeout=300)}"
    times: dict[str, list[float]] = {"baseline": [], "pull": [], "pull + batch file": []}
    try:
        for _ in range(args.repeat):
            for name, run in (("baseline", lambda: baseline(url, args.page_size)),
                              ("pull", lambda: ours(url, args.page_size, False)),
                              ("pull + batch file", lambda: ours(url, args.page_size, True))):
                seconds, count = run()
                assert count == args.records, f"{name} got {count} records, expected {args.records}"
                times[name].append(seconds)
    finally:
        server.terminate()
    base = statistics.median(times["baseline"])
    print(f"{args.records:,} records in pages of {args.page_size:,}, median of {args.repeat}")
    print("| measurement | seconds | ratio to the plain loop |")
    print("|---|---:|---|")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / base
        verdict = "" if name == "baseline" else (
            f"{ratio:.2f}x" + (f": {'met' if ratio <= TARGET else 'missed'} (target {TARGET}x)" if name == "pull"
                               else ""))
        print(f"| {name} | {median:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
