"""`claro check` rules for `monitors:` (called from `checks.cross_check`); every message names the monitor."""

from __future__ import annotations

from typing import Any

from .models import ProjectSpec

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

#: Destinations whose channel state holds the price the channel last accepted.
CHANNEL_KINDS = ("shopify", "amazon", "rest")
#: Asset names a monitor cannot take: the catalogue's own operations and onboarding stages.
RESERVED = ("analyse", "export", "validate", "records", "batch_raw", "batch_mapped", "batch_validated",
            "batch_normalized", "review_checkpoint", "batches")


def monitors_of(spec: ProjectSpec, catalogue: str) -> list[str]:
    """The monitors watching a catalogue (each is the asset `<catalogue>/<monitor>`)."""
    return [name for name, m in spec.monitors.items() if m.catalogue == catalogue]


def check_monitors(spec: ProjectSpec) -> list[Problem]:
    from .checks import unknown  # checks imports this module

    out: list[Problem] = []
    for name, mon in spec.monitors.items():
        loc: Loc = ("monitors", name)
        who = f"monitor {name!r}"
        cat = spec.catalogues.get(mon.catalogue)
        if cat is None:
            out.append((loc + ("catalogue",), f"{who}: " + unknown(mon.catalogue, spec.catalogues, "a catalogue")))
            continue
        taken = [*RESERVED, *(d for d, dest in spec.destinations.items() if dest.catalogue == mon.catalogue)]
        if name in taken:
            out.append((loc, f"{who}: the asset {mon.catalogue}/{name} would clash with "
                             f"{'a destination' if name in spec.destinations else 'an operation'} of that name: "
                             "rename the monitor"))
        if mon.kind == "drift":
            for key in ("price", "observe", "rules"):
                if key in mon.model_fields_set and getattr(mon, key):
                    out.append((loc + (key,), f"{who}: {key!r} is for price monitors; a drift monitor takes "
                                              "'tolerance' and 'baseline_runs'"))
            continue
        out += _check_price(spec, loc, who, mon, cat, unknown)
    return out


def _check_price(spec: ProjectSpec, loc: Loc, who: str, mon: Any, cat: Any, unknown) -> list[Problem]:
    from claro_dagster.operations.monitor import ExpressionError, expression_names

    out: list[Problem] = []
    attrs = cat.attributes
    if not mon.price:
        out.append((loc + ("price",), f"{who}: a price monitor needs 'price': the catalogue's price attribute"))
    elif mon.price not in attrs:
        out.append((loc + ("price",), f"{who}: " + unknown(mon.price, attrs, "an attribute", "attributes")))
    elif attrs[mon.price].type != "number":
        out.append((loc + ("price",), f"{who}: {mon.price!r} is a {attrs[mon.price].type} attribute; prices are "
                                      "numbers"))
    if not mon.rules:
        out.append((loc + ("rules",), f"{who}: a price monitor needs 'rules' (threshold, absolute, anomaly, "
                                      "competitor_gap)"))
    competitors = False
    for i, obs in enumerate(mon.observe):
        where = loc + ("observe", i)
        given = [k for k in ("channel", "file", "source") if getattr(obs, k)]
        if len(given) != 1:
            out.append((where, f"{who}: each 'observe' entry needs exactly one of 'channel' (a marketplace "
                               "destination), 'file' (a CSV of competitor listings) or 'source' (an http or scrape "
                               "source)"))
            continue
        if obs.channel:
            dest = spec.destinations.get(obs.channel)
            if dest is None:
                out.append((where + ("channel",), f"{who}: " + unknown(obs.channel, spec.destinations,
                                                                       "a destination")))
            elif dest.kind not in CHANNEL_KINDS or dest.catalogue != mon.catalogue:
                out.append((where + ("channel",), f"{who}: {obs.channel!r} is a {dest.kind} destination of "
                            f"{dest.catalogue!r}; a channel to watch is a {', '.join(CHANNEL_KINDS)} destination of "
                            f"{mon.catalogue!r}"))
        if obs.file:  # read when the monitor runs (a missing file fails that run, naming it), so a spec copied
            competitors = True  # without its data still checks and loads
            if not obs.file.lower().endswith(".csv"):
                out.append((where + ("file",), f"{who}: {obs.file!r} is not a .csv file: competitor listings are a "
                                               "CSV (competitor, price, gtin, mpn, name, brand, url, observed_at)"))
        if obs.source:
            source = spec.sources.get(obs.source)
            if source is None:
                out.append((where + ("source",), f"{who}: " + unknown(obs.source, spec.sources, "a source")))
            elif source.kind == "http":
                competitors = True
            elif source.kind == "scrape":
                competitors = True
                if not source.url_template:
                    out.append((where + ("source",), f"{who}: scrape source {obs.source!r} needs a 'url_template' "
                                                     "(one page per record) to be watched"))
                elif "price" not in source.extract and "price" not in source.selectors:
                    out.append((where + ("source",), f"{who}: scrape source {obs.source!r} gives no 'price' column: "
                                                     "add `price: price` to its 'extract' (or a 'selectors' entry)"))
            else:
                out.append((where + ("source",), f"{who}: source {obs.source!r} is of kind {source.kind}; prices are "
                                                 "watched from http and scrape sources"))
    for i, rule in enumerate(mon.rules):
        where = loc + ("rules", i)
        if rule.kind in ("threshold", "competitor_gap") and rule.percent is None:
            out.append((where + ("percent",), f"{who}: a {rule.kind} rule needs 'percent'"))
        if rule.kind == "competitor_gap" and not competitors:
            out.append((where, f"{who}: a competitor_gap rule needs competitor prices: add an 'observe' entry with a "
                               "'file' or an http/scrape 'source'"))
        if rule.kind == "absolute":
            if not rule.expression:
                out.append((where + ("expression",), f"{who}: an absolute rule needs 'expression', a condition "
                                                     "such as 'price < cost * 1.2'"))
                continue
            try:
                names = expression_names(rule.expression)
            except ExpressionError as exc:
                out.append((where + ("expression",), f"{who}: {exc}"))
                continue
            for n in names:
                if n not in attrs:
                    out.append((where + ("expression",), f"{who}: expression {rule.expression!r}: "
                                + unknown(n, attrs, f"an attribute of {mon.catalogue!r}", "attributes")))
        elif rule.expression is not None:
            out.append((where + ("expression",), f"{who}: 'expression' is for absolute rules"))
    for key in ("gtin", "mpn", "name", "brand"):
        value = getattr(mon.match, key)
        if key in mon.match.model_fields_set and value is not None and value not in attrs:
            out.append((loc + ("match", key), f"{who}: " + unknown(value, attrs, "an attribute", "attributes")))
    return out
