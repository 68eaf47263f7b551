"""Where a price monitor reads prices: the catalogue, a sales channel's state, competitor files, HTTP pulls and
scrapes. No Dagster here; each reader returns observations (or competitor listings to match) with the time the
price was true at its source, which is what makes the price history idempotent (catalogue/monitoring.py).

- catalogue: the price attribute, as of the time its value was written (its provenance);
- channel: what a marketplace destination last accepted (its channel state's payload), as of that push;
- file: a CSV of competitor listings (competitor, price, gtin, mpn, name, brand, url, observed_at), as of its
  `observed_at` column or the file's modification time;
- http: the records of a spec `http` source's pull (the project's HTTP layer: retries, auth, pagination),
  listings as for a file, renamed by the monitor's `columns`, as of the pull;
- scrape: a spec `scrape` source's `url_template` filled from each watched record, through the SSRF-guarded,
  robots.txt-obeying scraper; each page's extracted `price` is that record's listing at the site.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.channels import ChannelState
from claro_dagster.catalogue.monitoring import iso
from claro_dagster.catalogue.schema import prov_column
from claro_dagster.operations.monitor import Listing, Observation

CATALOGUE_SOURCE = "catalogue"
LISTING_FIELDS = ("competitor", "price", "gtin", "mpn", "name", "brand", "url", "observed_at")


class PriceSourceError(ValueError):
    """A price source that cannot be read; the message names the file, line or source and what to do."""


_PRICE = re.compile(r"^[^\d\-+]{0,4}\s*([-+]?\d[\d,. ]*)\s*[^\d]{0,4}$")


def number(value: Any) -> float | None:
    """A price as a float: numbers, and text such as '12.50', '£12.50', '1,299.00' or '12,50 €'; None when empty
    or not a price (a currency sign or code may stand either side; nothing else)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    match = _PRICE.match(str(value).strip())
    if not match:
        return None
    digits = match.group(1).replace(" ", "")
    if "," in digits and "." in digits:
        digits = digits.replace(",", "") if digits.rfind(".") > digits.rfind(",") else \
            digits.replace(".", "").replace(",", ".")
    elif "," in digits:  # 12,50 is a decimal comma; 1,299 a thousands separator
        digits = digits.replace(",", ".") if re.search(r",\d{1,2}$", digits) else digits.replace(",", "")
    try:
        return float(digits)
    except ValueError:
        return None


def catalogue_prices(store: Any, catalogue: str, price: str, keys: Iterable[str] | None = None) -> list[Observation]:
    """The catalogue's own price of each record (of `keys`, if given), as of the time it was written."""
    table = store.rec[catalogue]
    prov = store.t["provenance"]
    key = store.catalogue(catalogue).key
    prov_id = sa.func.coalesce(table.c[prov_column(price)], table.c["_created_prov"])
    query = (sa.select(table.c[key], table.c[price], prov.c.at).select_from(table.outerjoin(prov, prov.c.id == prov_id))
             .where(table.c[price].is_not(None)))
    wanted = set(keys) if keys is not None else None
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [Observation(str(k), CATALOGUE_SOURCE, float(p), iso(at or datetime.now(UTC)))
            for k, p, at in rows if (wanted is None or str(k) in wanted) and p is not None and not math.isnan(p)]


def _path_of(template: Any, attribute: str, path: tuple = ()) -> tuple | None:
    """Where a REST destination's body template puts `attribute` (a leaf naming it, or {attribute: name})."""
    if template == attribute or template == {"attribute": attribute}:
        return path
    if isinstance(template, dict):
        for k, v in template.items():
            if (found := _path_of(v, attribute, (*path, k))) is not None:
                return found
    if isinstance(template, list):
        for i, v in enumerate(template):
            if (found := _path_of(v, attribute, (*path, i))) is not None:
                return found
    return None


def _dig(payload: Any, path: Iterable) -> Any:
    for step in path:
        try:
            payload = payload[step]
        except (KeyError, IndexError, TypeError):
            return None
    return payload


def channel_price(dest: Any, price: str, record: str, payload: Mapping[str, Any] | None) -> float | None:
    """The price a channel state's payload carries for one record: Shopify's variant price (the variant with the
    record's SKU), Amazon's purchasable_offer, or where a REST destination's body puts the price attribute."""
    if not payload:
        return None
    if dest.kind == "shopify":
        variants = payload.get("variants") or []
        chosen = next((v for v in variants if str(v.get("sku")) == record), variants[0] if len(variants) == 1 else None)
        return number(chosen.get("price")) if chosen else None
    if dest.kind == "amazon":
        attrs = payload.get("attributes") or {}
        offer = _dig(attrs, ("purchasable_offer", 0, "our_price", 0, "schedule", 0, "value_with_tax"))
        return number(offer if offer is not None else _dig(attrs, ("list_price", 0, "value_with_tax")))
    path = _path_of(dest.body, price) if getattr(dest, "body", None) else None
    return number(_dig(payload, path)) if path is not None else None


def channel_prices(store: Any, destination: str, dest: Any, price: str,
                   keys: Iterable[str] | None = None) -> list[Observation]:
    """What a marketplace destination last accepted for each record, as of that push (its channel state)."""
    c = ChannelState(store)
    entries = c.get(destination, list(keys) if keys is not None else None)
    from claro_dagster.catalogue.channels import channel_state

    with store.engine.connect() as conn:
        times = dict(conn.execute(sa.select(channel_state.c.record, channel_state.c.updated_at)
                                  .where(channel_state.c.destination == destination)).all())
    out = []
    for record, entry in sorted(entries.items()):
        if entry.status != "pushed":
            continue
        value = channel_price(dest, price, record, entry.payload)
        if value is not None:
            out.append(Observation(record, destination, value, iso(times.get(record) or datetime.now(UTC))))
    return out


def listing_from(row: Mapping[str, Any], *, competitor: str, observed_at: str, where: str) -> Listing:
    price = number(row.get("price"))
    if row.get("price") not in (None, "") and price is None:
        raise PriceSourceError(f"{where}: price {row.get('price')!r} is not a number")
    text = {k: (str(row[k]).strip() if row.get(k) not in (None, "") else None)
            for k in ("gtin", "mpn", "name", "brand", "url")}
    return Listing(competitor=str(row.get("competitor") or competitor), price=price,
                   observed_at=iso(row["observed_at"]) if row.get("observed_at") else observed_at, **text)


def file_listings(path: Path, *, competitor: str) -> list[Listing]:
    """Competitor listings from a CSV (header row; `price` and at least one of gtin, mpn or name+brand)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PriceSourceError(f"{path}: cannot be read ({exc.strerror}); check the monitor's 'file'") from None
    text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if "price" not in header:
        raise PriceSourceError(f"{path}:1: no 'price' column (columns: {', '.join(header) or 'none'}); a competitor "
                               f"file has {', '.join(LISTING_FIELDS)}")
    stamp = iso(datetime.fromtimestamp(path.stat().st_mtime, UTC))
    out = []
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        try:
            listing = listing_from(row, competitor=competitor, observed_at=stamp, where=f"{path}:{line}")
        except ValueError as exc:  # a bad observed_at or price: the line and what it holds
            raise PriceSourceError(f"{path}:{line}: {exc}") from None
        if listing.price is not None:
            out.append(listing)
    return out


def http_listings(name: str, source: Any, columns: Mapping[str, str], *, client: Any = None) -> list[Listing]:
    """Competitor listings from one pull of an http source (every page; no watermark is kept or moved)."""
    from claro_dagster.resources.http import HttpClient
    from claro_dagster.resources.http_source import pull

    spec = source.http
    base_url = os.environ.get(spec.url_env) if spec.url_env else None
    if spec.url_env and not base_url:
        raise PriceSourceError(f"source {name!r}: http.url_env names {spec.url_env!r}, which is not set")
    own = client is None
    client = client or HttpClient(timeout=spec.timeout_seconds, max_attempts=spec.max_attempts)
    try:
        result = pull(spec.model_copy(update={"incremental": None}), client, None, base_url=base_url)
    finally:
        if own:
            client.close()
    stamp = iso(datetime.now(UTC))
    out = []
    for i, record in enumerate(result.records):
        row = {f: record.get(columns.get(f, f)) for f in LISTING_FIELDS}
        listing = listing_from(row, competitor=name, observed_at=stamp, where=f"source {name!r} record {i + 1}")
        if listing.price is not None:
            out.append(listing)
    return out


def scrape_prices(name: str, source: Any, records: Iterable[Mapping[str, Any]], key: str, *, competitor: str,
                  scraper: Any = None) -> tuple[list[Observation], dict[tuple[str, str], str], list[str]]:
    """Each record's page at a scraped site (`url_template`): (observations, (record, listing) -> url, problems)."""
    from claro_dagster.resources.scrape import DEFAULT_USER_AGENT, Scraper, fill_template

    own = scraper is None
    scraper = scraper or Scraper(user_agent=source.user_agent or DEFAULT_USER_AGENT,
                                 delay_seconds=source.delay_seconds, allow_hosts=list(source.allow_hosts))
    stamp = iso(datetime.now(UTC))
    out, urls, problems = [], {}, []
    try:
        for record in records:
            rid = str(record.get(key))
            url = fill_template(source.url_template, record)
            if not url:
                continue
            page = scraper.page(url, source.extract, source.selectors)
            if page.failed:
                problems.append(f"{rid}: {url}: {page.reason}")
                continue
            value = number((page.values or {}).get("price"))
            if value is None:
                problems.append(f"{rid}: {url}: no price on the page")
                continue
            listing = f"{competitor}:{rid}"
            out.append(Observation(rid, name, value, stamp, listing, competitor))
            urls[(rid, listing)] = url
    finally:
        if own:
            scraper.close()
    return out, urls, problems
