"""Amazon Listings Items benchmark: pushes against a fake SP-API enforcing the documented rates.

    python benchmarks/amazon.py --puts 60 --patches 30

The fake (`tests/amazon_fake.py`) keeps a token bucket per operation at Amazon's documented default
(putListingsItem 5 requests/s burst 10, patchListingsItem 5/s burst 5, from sp-api-rate-limits.json) and answers
429 past it. The client (`AmazonListings`) pushes PUTS valid listings, then PATCHES price changes, one after the
other, paced by its own buckets.

For each operation: in the time T between the first and the last request the fake accepted, the most the documented
ceiling allows is burst + rate x T requests; use = requests / that ceiling. The target is at least 0.9 with no
request rejected for rate (the fake's count of 429s it gave for an empty bucket).
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/amazon.py` from anywhere

from benchmarks.store import load_average  # noqa: E402
from claro_dagster.resources.amazon import AmazonListings, patch_replace  # noqa: E402
from tests.amazon_fake import (  # noqa: E402
    CLIENT_ID,
    CLIENT_SECRET,
    LIMITS,
    MARKETPLACE,
    REFRESH_TOKEN,
    SELLER,
    FakeAmazon,
)

TARGET = 0.9


def listing(sku: str, price: float) -> dict:
    return {
        "item_name": [{"value": f"Cabin case {sku}", "language_tag": "en_US", "marketplace_id": MARKETPLACE}],
        "brand": [{"value": "Claro", "marketplace_id": MARKETPLACE}],
        "externally_assigned_product_identifier": [{"type": "ean", "value": ean(sku)}],
        "bullet_point": [{"value": "Fits overhead bins", "language_tag": "en_US"}],
        "purchasable_offer": [offer(price)],
    }


def ean(sku: str) -> str:
    """A 13-digit identifier of its own per SKU (Amazon refuses one identifier listed under two SKUs)."""
    return f"{zlib.crc32(sku.encode()):013d}"


def offer(price: float) -> dict:
    return {"currency": "USD", "marketplace_id": MARKETPLACE, "our_price": [{"schedule": [{"value_with_tax": price}]}]}


def use(fake: FakeAmazon, method: str, operation: str, count: int) -> tuple[float, float]:
    times = [r.received_at for r in fake.server.requests if r.method == method and "/listings/" in r.path]
    span = times[-1] - times[0]
    rate, burst = LIMITS[operation]
    return count / (burst + rate * span), span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--puts", type=int, default=60)
    parser.add_argument("--patches", type=int, default=30)
    args = parser.parse_args()
    with FakeAmazon() as fake:
        client = AmazonListings(endpoint_url=fake.url, token_url=fake.token_url, client_id=CLIENT_ID,
                                client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, seller_id=SELLER,
                                marketplace_ids=[MARKETPLACE])
        client.product_type_schema("LUGGAGE")  # fetched once, not part of the pushes
        start = time.perf_counter()
        results = [client.put_listing(f"SKU-{n}", "LUGGAGE", listing(f"SKU-{n}", 50 + n)) for n in range(args.puts)]
        put_seconds = time.perf_counter() - start
        results += [client.patch_listing(f"SKU-{n}", [patch_replace("purchasable_offer", [offer(40 + n)])],
                                         product_type="LUGGAGE") for n in range(args.patches)]
        failed = [r.sku for r in results if not r.ok]
        put_use, put_span = use(fake, "PUT", "putListingsItem", args.puts)
        patch_use, patch_span = use(fake, "PATCH", "patchListingsItem", args.patches)
        print(f"load average {load_average()}")
        print(f"putListingsItem:   {args.puts} in {put_span:.2f}s between first and last "
              f"({put_seconds:.2f}s wall) -> {put_use:.1%} of the documented ceiling (5/s, burst 10)")
        print(f"patchListingsItem: {args.patches} in {patch_span:.2f}s -> {patch_use:.1%} "
              "of the documented ceiling (5/s, burst 5)")
        print(f"rejected for rate: {fake.throttled}; failed listings: {len(failed)}; contract violations: "
              f"{len(fake.violations)}")
        ok = min(put_use, patch_use) >= TARGET and fake.throttled == 0 and not failed and not fake.violations
        print(f"target >= {TARGET:.0%} with none rejected for rate: {'met' if ok else 'NOT met'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
