"""Cross-reference checks that pydantic cannot express, and the one-line `claro check` summary.

Checks run on the validated models and return `(key path, message)` pairs; the loader maps each
key path back to a line of the YAML file. Every message says what is allowed.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable
from difflib import get_close_matches
from fnmatch import fnmatchcase
from functools import cache
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from .enrich_checks import enrich_problems, pipeline_enrich_problems
from .models import (
    AttributeSpec,
    ProjectSpec,
    ThresholdOverride,
    Thresholds,
    amazon_attribute,
    rest_body_attributes,
    url_placeholders,
)
from .monitor_checks import check_monitors, monitors_of

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

# Operations a schedule may run on a catalogue besides its destinations (`<catalogue>/<operation>`).
SCHEDULABLE_OPERATIONS: tuple[str, ...] = ("analyse", "export", "enrich", "dedupe")
# What a schedule whose target is a pipeline runs besides its destinations. Enrichment writes values and dedupe's
# proposals wait for people: each runs only where a schedule names `<catalogue>/enrich|dedupe` or a chain lists it.
PIPELINE_SCHEDULED_OPERATIONS: tuple[str, ...] = ("analyse", "export")
# Kinds that work today. The models accept every kind the product plans for; a kind that is not built yet is
# refused here rather than accepted and then doing nothing (`build_destination` has no asset for it).
AVAILABLE_SOURCE_KINDS: tuple[str, ...] = ("upload", "inbox", "s3", "drive", "bigquery", "scrape", "postgres",
                                            "supabase", "http", "email")
AVAILABLE_DESTINATION_KINDS: tuple[str, ...] = ("s3", "postgres", "shopify", "amazon", "bigquery", "sheets",
                                                 "supabase", "rest")
#: Events the store's outbox holds, which webhook subscriptions (`notifications.webhooks.*.events`) can list.
OUTBOX_EVENTS: tuple[str, ...] = (
    "run.started", "run.completed", "run.failed",
    "change.applied", "change.approved", "change.rejected", "change.queued_for_review",
    "push.failed", "mail.quarantined",
    "monitor.drift",  # a monitor's detection (monitors:, see spec/monitor_checks.py)
    "batch.stuck",  # a batch unfinished or queued beyond notifications.batch_stuck_after_seconds
)
#: Alerts Slack routes (`notifications.slack[].events`, pipeline `routing[].events`) can hear; `slack.EVENTS`.
ALERT_EVENTS: tuple[str, ...] = (
    "run.failed", "run.completed", "batch.halted", "review.queued", "push.failed", "mail.quarantined", "monitor.drift",
    "batch.stuck",
    # change events, as the catalogue store writes them to its outbox
    "change.applied", "change.approved", "change.rejected", "change.queued_for_review",
)
# BigQuery's own limits (cloud.google.com/bigquery/docs/clustered-tables, .../partitioned-tables).
BIGQUERY_MAX_CLUSTER_FIELDS = 4
_BIGQUERY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,1023}")
# Slack channel ids: C (public), G (private), D (direct message) followed by upper-case alphanumerics.
_SLACK_CHANNEL = re.compile(r"#[^\s#]+|[CGD][A-Z0-9]{6,}")
# Who may use a slash command: a user id (U…, W… on Enterprise Grid), a user-group id (S…) or everyone.
_SLACK_PRINCIPAL = re.compile(r"[UWS][A-Z0-9]{6,}|\*")


def unknown(value: object, choices: Iterable[str], what: str, listing: str = "defined") -> str:
    """`'x' is not <what>, did you mean 'y'? (defined: a, b)`: the one wording for bad references."""
    choices = list(choices)
    msg = f"{value!r} is not {what}"
    close = get_close_matches(str(value), choices, n=1)
    if close:
        msg += f", did you mean {close[0]!r}?"
    return msg + (f" ({listing}: {', '.join(choices)})" if choices else " (none defined)")


def _event_problem(pattern: str, known: tuple[str, ...], where: str) -> str | None:
    """Why an `events` entry (a name or a shell-style pattern such as `change.*`) matches none of `known`."""
    if any(fnmatchcase(name, pattern) for name in known):
        return None
    if any(c in pattern for c in "*?["):
        return f"{pattern!r} matches no event {where} ({', '.join(known)})"
    return unknown(pattern, known, f"an event {where}", "events")


@cache
def _unit_registry() -> Any:
    # Building a pint registry takes most of a second: build it once, and only if a unit is used.
    import pint

    return pint.UnitRegistry()


#: Units catalogues use most, each one pint understands (tests/spec/test_spec_checks.py checks every one against
#: pint): a spec using only these is checked without building pint's registry, which costs most of a second of
#: every `claro` command that reads the spec.
COMMON_UNITS = frozenset({
    "mg", "g", "kg", "t", "lb", "oz", "mm", "cm", "m", "km", "in", "ft", "yd", "ml", "cl", "dl", "l", "L",
    "gram", "kilogram", "milligram", "pound", "ounce", "millimeter", "centimeter", "meter", "kilometer", "inch",
    "foot", "liter", "litre", "milliliter", "millilitre", "s", "min", "h", "hour", "day", "week", "month", "year",
    "second", "minute", "W", "kW", "V", "mAh", "Wh", "kWh", "percent", "degC",
})


def _unit_ok(unit: str) -> bool:
    if unit in COMMON_UNITS:
        return True
    try:
        _unit_registry().Unit(unit)
    except Exception:  # pint raises several unrelated types (UndefinedUnitError, ValueError, ...)
        return False
    return True


def _timezone_problem(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
        return None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    close = get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
    hint = (f", did you mean {close[0]!r}?" if close
            else " (use an IANA name such as 'Europe/London' or 'UTC')")
    return f"{name!r} is not an IANA timezone{hint}"


def _cron_problem(cron: str) -> str | None:
    # Dagster's own rules for a schedule's cron (spec/cron.py), so `claro check` and the code location agree,
    # without importing Dagster: `claro check` answers at once.
    from .cron import is_valid_cron

    if is_valid_cron(cron):
        return None
    return (f"{cron!r} is not a valid cron expression (five fields: minute hour day-of-month month "
            f"day-of-week, e.g. '0 * * * *', or @hourly/@daily/@weekly)")


def _override_problem(spec: ProjectSpec, override: ThresholdOverride | None) -> str | None:
    """An override is applied on top of the defaults; the result must still be ordered."""
    if override is None:
        return None
    merged = spec.thresholds.default.model_dump()
    merged.update({k: v for k, v in override.model_dump().items() if v is not None})
    try:
        Thresholds(**merged)
    except ValidationError:
        return (f"with this override the thresholds become reject={merged['reject']:g}, "
                f"review={merged['review']:g}, auto_apply={merged['auto_apply']:g}; "
                f"they must satisfy reject <= review <= auto_apply")
    return None


def _check_attribute(spec: ProjectSpec, loc: Loc, name: str, attr: AttributeSpec) -> list[Problem]:
    out: list[Problem] = []
    catalogues = list(spec.catalogues)
    if attr.type == "reference":
        if not attr.target:
            out.append((loc + ("target",), "a reference attribute needs 'target': the catalogue whose keys "
                        f"it holds (one of {', '.join(catalogues)})"))
        elif attr.target not in spec.catalogues:
            out.append((loc + ("target",), unknown(attr.target, catalogues, "a catalogue")))
        elif attr.reverse and attr.reverse in spec.catalogues[attr.target].attributes:
            out.append((loc + ("reverse",), f"reverse link {attr.reverse!r} clashes with attribute "
                        f"{attr.reverse!r} of catalogue {attr.target!r}; choose another name"))
    if attr.type == "enum":
        if not attr.values:
            out.append((loc + ("values",), "an enum attribute needs a non-empty 'values' list of its "
                        "canonical values"))
        else:
            for canonical in attr.synonyms:
                if canonical not in attr.values:
                    out.append((loc + ("synonyms", canonical),
                                unknown(canonical, attr.values, f"one of the values of {name!r}")))
            if attr.default is not None and str(attr.default) not in attr.values:
                out.append((loc + ("default",),
                            unknown(attr.default, attr.values, f"one of the values of {name!r}")))
    if attr.unit is not None and not _unit_ok(attr.unit):
        out.append((loc + ("unit",), f"{attr.unit!r} is not a unit pint understands (e.g. kg, g, cm, mm, "
                    "l, ml, day; leave it out for plain numbers such as prices)"))
    if attr.timezone is not None and (msg := _timezone_problem(attr.timezone)):
        out.append((loc + ("timezone",), msg))
    if attr.regex is not None:
        try:
            re.compile(attr.regex)
        except re.error as exc:
            out.append((loc + ("regex",), f"{attr.regex!r} is not a valid regular expression: {exc}"))
    if attr.min is not None and attr.max is not None and attr.min > attr.max:
        out.append((loc + ("min",), f"min ({attr.min:g}) is greater than max ({attr.max:g})"))
    if attr.min_length is not None and attr.max_length is not None and attr.min_length > attr.max_length:
        out.append((loc + ("min_length",),
                    f"min_length ({attr.min_length}) is greater than max_length ({attr.max_length})"))
    if msg := _override_problem(spec, attr.thresholds):
        out.append((loc + ("thresholds",), msg))
    return out


def cross_check(spec: ProjectSpec) -> list[Problem]:
    """Every rule that relates one part of the spec to another (names, units, crons, timezones)."""
    out: list[Problem] = []
    catalogues = list(spec.catalogues)

    for cname, cat in spec.catalogues.items():
        loc: Loc = ("catalogues", cname)
        if cat.key not in cat.attributes:
            out.append((loc + ("key",),
                        unknown(cat.key, cat.attributes, f"an attribute of catalogue {cname!r}")))
        for aname, attr in cat.attributes.items():
            out += _check_attribute(spec, loc + ("attributes", aname), aname, attr)
            out += enrich_problems(spec, cat, loc + ("attributes", aname, "enrich"), aname, attr)
        if cat.dedupe is not None:
            out += _check_dedupe(loc + ("dedupe",), cname, cat)

    for op, override in spec.thresholds.operations.items():
        if msg := _override_problem(spec, override):
            out.append((("thresholds", "operations", op), msg))
    for src, override in spec.thresholds.sources.items():
        if src not in spec.sources:
            out.append((("thresholds", "sources", src), unknown(src, spec.sources, "a source")))
        elif msg := _override_problem(spec, override):
            out.append((("thresholds", "sources", src), msg))

    for sname, source in spec.sources.items():
        loc = ("sources", sname)
        if source.catalogue not in spec.catalogues:
            out.append((loc + ("catalogue",), unknown(source.catalogue, catalogues, "a catalogue")))
        if source.kind not in AVAILABLE_SOURCE_KINDS:
            out.append((loc + ("kind",), _not_available("source", source.kind, AVAILABLE_SOURCE_KINDS)))
        if source.kind == "inbox" and not source.path:
            out.append((loc + ("path",), "an inbox source needs 'path': the folder suppliers drop "
                        "files into"))
        if source.kind == "s3" and not source.bucket:
            out.append((loc + ("bucket",), "an s3 source needs 'bucket'"))
        out += _drive_source_problems(loc, source)
        if source.supplier is not None and source.catalogue in spec.catalogues:
            out += _supplier_problems(spec, loc, source)
        if source.kind == "bigquery":
            out += _check_bigquery_source(loc, source)
        if source.kind == "scrape":
            out += _check_scrape_source(spec, loc, source)
        if source.kind in ("postgres", "supabase"):
            out += _check_db_source(spec, loc, source)
        if source.kind == "http" or source.http is not None:
            out += _check_http_source(loc, source)
        if source.kind == "email" or source.email is not None:
            out += _check_email_source(loc, source)
        if msg := _override_problem(spec, source.thresholds):
            out.append((loc + ("thresholds",), msg))

    for dname, dest in spec.destinations.items():
        loc = ("destinations", dname)
        if dname == "status":  # `claro push status DEST` reports on a destination: the word is taken
            out.append((loc, "a destination cannot be named 'status' (`claro push status DEST` reports on "
                             "destinations): rename it, e.g. 'status_feed'"))
        if dest.catalogue not in spec.catalogues:
            out.append((loc + ("catalogue",), unknown(dest.catalogue, catalogues, "a catalogue")))
        if dest.kind not in AVAILABLE_DESTINATION_KINDS:
            out.append((loc + ("kind",), _not_available("destination", dest.kind, AVAILABLE_DESTINATION_KINDS)))
        if dest.kind == "s3" and not dest.bucket:
            out.append((loc + ("bucket",), "an s3 destination needs 'bucket'"))
        if dest.kind == "postgres":
            if not dest.url_env:
                out.append((loc + ("url_env",), "a postgres destination needs 'url_env': the environment "
                            "variable that holds the database URL"))
            if not dest.table:
                out.append((loc + ("table",), "a postgres destination needs 'table'"))
        if dest.kind == "shopify" and dest.catalogue in spec.catalogues:
            out += _check_shopify(spec, loc, dest)
        if dest.kind == "amazon" and dest.catalogue in spec.catalogues:
            out += _check_amazon(spec, loc, dest)
        if dest.kind == "bigquery" and dest.catalogue in spec.catalogues:
            out += _check_bigquery_destination(spec, loc, dest)
        if dest.kind == "sheets" and dest.catalogue in spec.catalogues:
            out += _check_sheets(spec, loc, dest)
        if dest.kind in ("supabase", "rest", "bigquery"):
            out += _check_supabase_rest_modes(loc, dest)
        if dest.kind == "rest" and dest.catalogue in spec.catalogues:
            out += _check_rest_destination(spec, loc, dest)

    out += pipeline_enrich_problems(spec)
    for pname, pipe in spec.pipelines.items():
        loc = ("pipelines", pname)
        if pipe.catalogue not in spec.catalogues:
            out.append((loc + ("catalogue",), unknown(pipe.catalogue, catalogues, "a catalogue")))
        for i, src in enumerate(pipe.sources):
            if src not in spec.sources:
                out.append((loc + ("sources", i), unknown(src, spec.sources, "a source")))
            elif spec.sources[src].catalogue != pipe.catalogue:
                out.append((loc + ("sources", i), f"source {src!r} feeds catalogue "
                            f"{spec.sources[src].catalogue!r}, not {pipe.catalogue!r}"))
        for i, dest in enumerate(pipe.destinations):
            if dest not in spec.destinations:
                out.append((loc + ("destinations", i), unknown(dest, spec.destinations, "a destination")))
            elif spec.destinations[dest].catalogue != pipe.catalogue:
                out.append((loc + ("destinations", i), f"destination {dest!r} exports catalogue "
                            f"{spec.destinations[dest].catalogue!r}, not {pipe.catalogue!r}"))
        if pipe.after is not None:
            if pipe.after.catalogue not in spec.catalogues:
                out.append((loc + ("after", "catalogue"), unknown(pipe.after.catalogue, catalogues, "a catalogue")))
            if pipe.sources:
                out.append((loc + ("after",), "a pipeline started by 'after' runs catalogue operations, not "
                            "batches: remove its 'sources' or its 'after'"))
        elif pipe.operations:
            out.append((loc + ("operations",), "'operations' run when the pipeline is triggered: add 'after' "
                        "(the catalogue and operation whose completion starts it)"))
        chained = ["validate", *SCHEDULABLE_OPERATIONS, *monitors_of(spec, pipe.catalogue)]
        for k, op in enumerate(pipe.operations):
            if op not in chained:
                out.append((loc + ("operations", k), unknown(op, chained, f"an operation of {pipe.catalogue!r} a "
                                                                          "chained pipeline can run", "one of")))
        for j, rule in enumerate(pipe.routing):
            for k, src in enumerate(rule.sources):
                if src not in pipe.sources:
                    out.append((loc + ("routing", j, "sources", k), unknown(src, pipe.sources, "a source of "
                                "this pipeline", "sources")))
            cat = spec.catalogues.get(pipe.catalogue)
            for k, attr in enumerate(rule.attributes):
                if cat is not None and attr not in cat.attributes:
                    out.append((loc + ("routing", j, "attributes", k), unknown(attr, cat.attributes,
                                                                             "an attribute", "attributes")))
            for k, event in enumerate(rule.events):
                if msg := _event_problem(event, ALERT_EVENTS, "Slack alerts carry"):
                    out.append((loc + ("routing", j, "events", k), msg))
            if rule.notify is not None and not rule.notify.startswith("#"):
                out.append((loc + ("routing", j, "notify"), f"{rule.notify!r} is not a Slack channel: write it "
                            "as '#channel-name'"))
            elif rule.notify is not None and spec.notifications.channels and \
                    rule.notify not in spec.notifications.channels:
                out.append((loc + ("routing", j, "notify"), unknown(rule.notify, spec.notifications.channels,
                                                                  "a channel of notifications.channels", "channels")))

    for sname, sched in spec.schedules.items():
        loc = ("schedules", sname)
        if (sched.every is None) == (sched.cron is None):
            out.append((loc, "a schedule needs exactly one of 'every' (hourly, daily, weekly) or 'cron'"))
        if sched.cron is not None and (msg := _cron_problem(sched.cron)):
            out.append((loc + ("cron",), msg))
        if msg := _timezone_problem(sched.timezone):
            out.append((loc + ("timezone",), msg))
        if msg := _target_problem(spec, sched.target):
            out.append((loc + ("target",), msg))

    notes = spec.notifications
    if notes.slack and not notes.slack_token_env:
        out.append((("notifications", "slack_token_env"), "slack routes need 'slack_token_env': the "
                    "environment variable that holds the Slack bot token"))
    for i, route in enumerate(notes.slack):
        loc = ("notifications", "slack", i)
        if not _SLACK_CHANNEL.fullmatch(route.channel):
            out.append((loc + ("channel",), f"{route.channel!r} is not a Slack channel: write '#name' "
                        "or a channel id such as 'C0123456789'"))
        elif notes.channels and route.channel not in notes.channels:
            out.append((loc + ("channel",), unknown(route.channel, notes.channels, "a channel of "
                        "notifications.channels", "channels")))
        for j, cat_name in enumerate(route.catalogues):
            if cat_name not in spec.catalogues:
                out.append((loc + ("catalogues", j), unknown(cat_name, catalogues, "a catalogue")))
        for j, pipe_name in enumerate(route.pipelines):
            if pipe_name not in spec.pipelines:
                out.append((loc + ("pipelines", j), unknown(pipe_name, spec.pipelines, "a pipeline")))
        for j, event in enumerate(route.events):
            if msg := _event_problem(event, ALERT_EVENTS, "Slack alerts carry"):
                out.append((loc + ("events", j), msg))
    groups = False
    for command, who in notes.slack_commands:
        for j, entry in enumerate(who):
            if not _SLACK_PRINCIPAL.fullmatch(entry):
                out.append((("notifications", "slack_commands", command, j), f"{entry!r} is not a Slack user id "
                            "(U0123ABCD, from the member's profile: ⋮ > Copy member ID), a user-group id "
                            "(S0123ABCD) or '*' (every member of the workspace)"))
            groups = groups or entry.startswith("S")
    if groups and not notes.slack_token_env:
        out.append((("notifications", "slack_token_env"), "user groups in 'slack_commands' need "
                    "'slack_token_env': the bot token (with the usergroups:read scope) looks up their members"))
    for wname, hook in notes.webhooks.items():
        loc = ("notifications", "webhooks", wname)
        url = urlparse(hook.url)
        if url.scheme not in ("http", "https") or not url.netloc:
            out.append((loc + ("url",), f"{hook.url!r} is not an http(s) URL"))
        for j, event in enumerate(hook.events):
            if msg := _event_problem(event, OUTBOX_EVENTS, "webhooks carry"):
                out.append((loc + ("events", j), msg))
        if hook.mode == "scheduled" and not hook.cron:
            out.append((loc + ("cron",), "a webhook in 'scheduled' mode needs 'cron'"))
        if hook.cron is not None and (msg := _cron_problem(hook.cron)):
            out.append((loc + ("cron",), msg))
    if msg := _cron_problem(spec.retention.cron):
        out.append((("retention", "cron"), msg))
    out += check_monitors(spec)
    return out


# Shopify metafield types a catalogue attribute can fill, by attribute type (shopify.dev "metafield types").
SHOPIFY_METAFIELD_TYPES: dict[str, tuple[str, ...]] = {
    "single_line_text_field": ("text", "enum", "reference", "number", "date"),
    "multi_line_text_field": ("text", "enum"),
    "rich_text_field": ("text",),
    "number_integer": ("number",),
    "number_decimal": ("number",),
    "boolean": ("text", "enum"),
    "date": ("date",),
    "date_time": ("date",),
    "url": ("text", "image"),
    "color": ("text", "enum"),
    "json": ("text",),
    "weight": ("number",),
    "dimension": ("number",),
    "volume": ("number",),
    "list.single_line_text_field": ("text", "enum"),
}
SHOPIFY_STATUSES: tuple[str, ...] = ("active", "draft", "archived")
SHOPIFY_MAX_OPTIONS = 3
# Mapping keys naming one attribute, with the attribute types each accepts (None: any type).
_SHOPIFY_FIELDS: dict[str, tuple[str, ...] | None] = {
    "group_by": None, "title": ("text", "enum", "reference"), "description": ("text",),
    "vendor": ("text", "enum", "reference"), "product_type": ("text", "enum"), "tags": ("text", "enum"),
    "status": ("enum", "text"), "price": ("number",), "compare_at_price": ("number",),
    "sku": ("text",), "barcode": ("text",),
}


def _supplier_problems(spec: ProjectSpec, loc: Loc, source: Any) -> list[Problem]:
    """A source that speaks for one supplier names it through a reference attribute of its catalogue."""
    attrs = spec.catalogues[source.catalogue].attributes
    name = source.supplier_attribute
    refs = [n for n, a in attrs.items() if a.type == "reference"]
    if name not in attrs or attrs[name].type != "reference":
        return [(loc + ("supplier_attribute",), f"{name!r} is not a reference attribute of catalogue "
                 f"{source.catalogue!r}; 'supplier' needs the attribute that names a record's supplier "
                 f"(reference attributes: {', '.join(refs) or 'none'})")]
    if not str(source.supplier).strip():
        return [(loc + ("supplier",), "'supplier' is empty: give the key of the supplier this source speaks for, "
                 "or leave the key out")]
    return []


def _check_bigquery_source(loc: Loc, source: Any) -> list[Problem]:
    """A BigQuery pull names a project, a table or a query (not both), the key and the watermark column."""
    out: list[Problem] = []
    for key, what in (("project", "the Google Cloud project the query runs in"),
                      ("key", "the column identifying a row"),
                      ("watermark", "the column that grows with every change, e.g. updated_at")):
        if not getattr(source, key):
            out.append((loc + (key,), f"a bigquery source needs {key!r}: {what}"))
    if bool(source.query) == bool(source.table):
        out.append((loc, "a bigquery source needs exactly one of 'table' (with 'dataset') or 'query'"))
    elif source.table and not source.dataset:
        out.append((loc + ("dataset",), "a bigquery source reading a 'table' needs its 'dataset'"))
    return out


def _check_scrape_source(spec: ProjectSpec, loc: Loc, source: Any) -> list[Problem]:
    """A scrape names its pages one way (urls, url_template or sitemap), http(s) only, and what to extract."""
    from string import Formatter
    from urllib.parse import urlsplit

    from claro_dagster.resources.scrape import PRODUCT_FIELDS

    out: list[Problem] = []
    ways = [k for k in ("urls", "url_template", "sitemap") if getattr(source, k)]
    if len(ways) != 1:
        out.append((loc, "a scrape source needs exactly one of 'urls' (a list), 'url_template' (filled from the "
                         "catalogue's records, e.g. https://shop.example/p/{mpn}) or 'sitemap'"))
    for key in ("url_template", "sitemap"):
        if getattr(source, key) and urlsplit(getattr(source, key)).scheme not in ("http", "https"):
            out.append((loc + (key,), "only http and https URLs are scraped"))
    for i, url in enumerate(source.urls):
        if urlsplit(url).scheme not in ("http", "https"):
            out.append((loc + ("urls", str(i)), f"{url!r}: only http and https URLs are scraped"))
    if source.url_template and source.catalogue in spec.catalogues:
        attributes = spec.catalogues[source.catalogue].attributes
        try:
            names = [n for _, n, _, _ in Formatter().parse(source.url_template) if n is not None]
        except ValueError as exc:
            names = []
            out.append((loc + ("url_template",), f"not a URL template ({exc}): write fields as {{attribute}}"))
        for name in names:
            if name not in attributes:
                out.append((loc + ("url_template",), unknown(name, attributes, f"an attribute of {source.catalogue}")))
    if source.filter and not source.url_template:
        out.append((loc + ("filter",), "'filter' picks the records a 'url_template' is filled from; add one"))
    for column, name in source.extract.items():
        if name not in PRODUCT_FIELDS:
            out.append((loc + ("extract", column), f"{name!r} is not one of {', '.join(PRODUCT_FIELDS)}"))
    if not source.extract and not source.selectors:
        out.append((loc, "a scrape source needs 'extract' (column: product field) or 'selectors' (column: CSS "
                         "selector): what to take from each page"))
    return out


def _check_db_source(spec: ProjectSpec, loc: Loc, source: Any) -> list[Problem]:
    """A PostgreSQL / Supabase pull names its URL variable, a table or a query (not both), the key and the
    watermark; `soft_delete_sets` needs `soft_delete` and names attributes of the source's catalogue."""
    from claro_dagster.resources.db_source import parse_table_name

    kind = source.kind
    out: list[Problem] = []
    for key, what in (("url_env", "the variable holding the database URL"),
                      ("key", "the column identifying a row"),
                      ("watermark", "the column that grows with every change, e.g. updated_at")):
        if not getattr(source, key):
            out.append((loc + (key,), f"a {kind} source needs {key!r}: {what}"))
    if bool(source.query) == bool(source.table):
        out.append((loc, f"a {kind} source needs exactly one of 'table' or 'query'"))
    elif source.table:
        try:
            parse_table_name(source.table)
        except ValueError as exc:
            out.append((loc + ("table",), str(exc)))
    if source.soft_delete_sets and not source.soft_delete:
        out.append((loc + ("soft_delete_sets",), "'soft_delete_sets' needs 'soft_delete': the column marking "
                    "deleted rows"))
    catalogue = spec.catalogues.get(source.catalogue)
    for name in source.soft_delete_sets:
        if catalogue is not None and name not in catalogue.attributes:
            out.append((loc + ("soft_delete_sets", name), unknown(name, list(catalogue.attributes),
                                                                  f"an attribute of {source.catalogue}")))
    return out


def _check_email_source(loc: Loc, source: Any) -> list[Problem]:
    """A mailbox source has its `email:` block, senders it accepts (each an address or an @domain), and TLS unless
    the server is on this machine."""
    spec = source.email
    if source.kind != "email":
        return [(loc + ("email",), f"'email' belongs to a source of kind email, not {source.kind!r}")]
    if spec is None:
        return [(loc, "an email source needs an 'email:' block with host, user_env, password_env and "
                      "allowed_senders")]
    out: list[Problem] = []
    if not spec.allowed_senders:
        out.append((loc + ("email", "allowed_senders"), "list the senders whose mail is read (addresses such as "
                    "orders@acme.example or domains such as @acme.example); mail from anyone else is quarantined"))
    for i, entry in enumerate(spec.allowed_senders):
        local, at, domain = entry.strip().rpartition("@")
        if not at or not domain or "." not in domain or " " in entry:
            out.append((loc + ("email", "allowed_senders", i), f"{entry!r} is neither an address "
                        "(name@example.com) nor a domain (@example.com)"))
    if spec.tls == "none" and spec.host not in ("127.0.0.1", "::1", "localhost"):
        out.append((loc + ("email", "tls"), f"tls: none would send the password to {spec.host} in clear text: use "
                    "ssl or starttls (none is for a server on this machine only)"))
    for key in ("processed_folder", "quarantine_folder"):
        if getattr(spec, key) == spec.folder:
            out.append((loc + ("email", key), f"{key} must differ from folder ({spec.folder!r}): handled mail is "
                        "moved out of it"))
    reply = spec.reply
    if reply is not None and bool(reply.user_env) != bool(reply.password_env):
        out.append((loc + ("email", "reply"), "give both user_env and password_env (or neither, for a relay that "
                    "needs no login)"))
    if reply is not None and reply.tls == "none" and reply.host not in ("127.0.0.1", "::1", "localhost"):
        out.append((loc + ("email", "reply", "tls"), f"tls: none to {reply.host} sends mail in clear text: use "
                    "starttls or ssl (none is for a server on this machine only)"))
    return out


def _check_http_source(loc: Loc, source: Any) -> list[Problem]:
    """An HTTP pull has its `http:` block; each auth type names its secrets; each pagination style its paths."""
    http = source.http
    if source.kind != "http":
        return [(loc + ("http",), f"'http' belongs to a source of kind http, not {source.kind!r}")]
    if http is None:
        return [(loc, "an http source needs an 'http:' block with at least 'url'")]
    out: list[Problem] = _auth_problems(loc + ("http", "auth"), http.auth)
    style = http.paginate.style
    if style == "cursor" and not http.paginate.cursor_path:
        out.append((loc + ("http", "paginate", "cursor_path"),
                    "cursor pagination needs 'cursor_path': the JMESPath of the next cursor in the body"))
    if style == "next_url" and not http.paginate.next_url_path:
        out.append((loc + ("http", "paginate", "next_url_path"),
                    "next_url pagination needs 'next_url_path': the JMESPath of the next page's URL"))
    if style in ("cursor", "next_url") and http.format != "json":
        out.append((loc + ("http", "paginate", "style"), f"{style} pagination reads the JSON body: use format json"))
    if sum(1 for v in (http.every, http.interval_seconds, http.cron) if v) > 1:
        out.append((loc + ("http", "every"), "give one of 'every', 'interval_seconds' or 'cron'"))
    if http.cron:
        from claro_dagster.spec.cron import is_valid_cron

        if not is_valid_cron(http.cron):
            out.append((loc + ("http", "cron"), f"{http.cron!r} is not a cron expression (5 fields, e.g. "
                                                "'0 6 * * *' for 06:00 every day)"))
    return out


def _check_bigquery_destination(spec: ProjectSpec, loc: Loc, dest: Any) -> list[Problem]:
    """Where the table is, and its layout against BigQuery's rules: a partition column is a DATE (a date
    attribute, DAY/MONTH/YEAR) or an INTEGER range (a number attribute with start < end and an interval), or
    ingestion time; at most four clustering columns, each an attribute."""
    out: list[Problem] = []
    attributes = spec.catalogues[dest.catalogue].attributes
    for key in ("project", "dataset", "table"):
        value = getattr(dest, key)
        if not value:
            out.append((loc + (key,), f"a bigquery destination needs {key!r}"))
        elif key != "project" and not _BIGQUERY_NAME.fullmatch(value):
            out.append((loc + (key,), f"{value!r} is not a BigQuery {key} name: letters, digits and underscores, "
                                      "not starting with a digit"))
    part = dest.partition_by
    if part is not None:
        ploc = loc + ("partition_by",)
        ranged = (part.start, part.end, part.interval) != (None, None, None)
        if part.ingestion_time:
            if part.attribute or ranged:
                out.append((ploc, "partition by ingestion time takes only 'granularity'; remove 'attribute' "
                                  "and the range"))
        elif not part.attribute:
            out.append((ploc, "partition_by needs 'attribute' (a date or number attribute) or "
                              "'ingestion_time: true'"))
        elif part.attribute not in attributes:
            out.append((ploc + ("attribute",), unknown(part.attribute, attributes,
                                                       f"an attribute of catalogue {dest.catalogue!r}")))
        elif attributes[part.attribute].type == "date":
            if ranged:
                out.append((ploc, f"{part.attribute!r} is a date attribute: partition it by 'granularity' "
                                  "(DAY, MONTH or YEAR), not by an integer range"))
            elif part.granularity == "HOUR":
                out.append((ploc + ("granularity",), f"{part.attribute!r} is written as a DATE column, which "
                                                     "BigQuery partitions by DAY, MONTH or YEAR, not HOUR"))
        elif attributes[part.attribute].type == "number":
            if None in (part.start, part.end, part.interval):
                out.append((ploc, f"{part.attribute!r} is a number attribute: an integer-range partition needs "
                                  "'start', 'end' and 'interval'"))
            elif part.start >= part.end:
                out.append((ploc + ("end",), f"'end' ({part.end}) must be greater than 'start' ({part.start})"))
            if part.granularity:
                out.append((ploc + ("granularity",), "'granularity' is for date attributes and ingestion time; "
                                                     "an integer range takes 'start', 'end' and 'interval'"))
        else:
            out.append((ploc + ("attribute",), f"{part.attribute!r} is a {attributes[part.attribute].type} "
                                               "attribute; BigQuery partitions by a date or an integer column"))
    if len(dest.cluster_by) > BIGQUERY_MAX_CLUSTER_FIELDS:
        out.append((loc + ("cluster_by",), f"BigQuery clusters by at most {BIGQUERY_MAX_CLUSTER_FIELDS} columns, "
                                           f"got {len(dest.cluster_by)}: keep the four most filtered on"))
    for i, name in enumerate(dest.cluster_by):
        if name not in attributes:
            out.append((loc + ("cluster_by", i), unknown(name, attributes,
                                                         f"an attribute of catalogue {dest.catalogue!r}")))
        elif attributes[name].type == "number" and not (part and part.attribute == name and part.interval):
            out.append((loc + ("cluster_by", i), f"{name!r} is a number attribute, written as a FLOAT column, "
                                                 "which BigQuery cannot cluster by; cluster by text, enum, "
                                                 "reference or date attributes"))
    return out


def _check_shopify(spec: ProjectSpec, loc: Loc, dest: Any) -> list[Problem]:
    """The Shopify mapping against its catalogue: attributes exist and have a type Shopify can hold, at most
    three options, enum values of `status` are Shopify statuses, metafield types fit their attribute."""
    out: list[Problem] = []
    attributes = spec.catalogues[dest.catalogue].attributes
    where = f"an attribute of catalogue {dest.catalogue!r}"

    def attribute(path: Loc, name: str, types: tuple[str, ...] | None) -> None:
        if name not in attributes:
            out.append((path, unknown(name, attributes, where)))
        elif types and attributes[name].type not in types:
            out.append((path, f"{name!r} is a {attributes[name].type} attribute; this key takes "
                              f"{' or '.join(types)} attributes"))

    for key, what in (("shop_url_env", "the shop's base URL (e.g. https://example.myshopify.com)"),
                      ("token_env", "the Admin API access token")):
        if not getattr(dest, key):
            out.append((loc + (key,), f"a shopify destination needs {key!r}: the environment variable that "
                                      f"holds {what}"))
    for key, types in _SHOPIFY_FIELDS.items():
        if getattr(dest, key):
            attribute(loc + (key,), getattr(dest, key), types)
    if not dest.title:
        out.append((loc + ("title",), "a shopify destination needs 'title': the attribute that holds the "
                                      "product title"))
    if len(dest.options) > SHOPIFY_MAX_OPTIONS:
        out.append((loc + ("options",), f"Shopify allows at most {SHOPIFY_MAX_OPTIONS} options per product, "
                                        f"got {len(dest.options)}: keep three of {', '.join(dest.options)}"))
    for i, name in enumerate(dest.options):
        attribute(loc + ("options", i), name, ("enum", "text", "number"))
        if dest.options.index(name) != i:
            out.append((loc + ("options", i), f"{name!r} is listed twice in 'options'"))
    if dest.group_by and dest.group_by in dest.options:
        out.append((loc + ("group_by",), f"{dest.group_by!r} groups records into products, so it cannot also "
                                         "be an option that tells variants apart"))
    if dest.status in attributes and attributes[dest.status].type == "enum":
        wrong = [v for v in attributes[dest.status].values or [] if v.lower() not in SHOPIFY_STATUSES]
        if wrong:
            out.append((loc + ("status",), f"values {', '.join(map(repr, wrong))} of {dest.status!r} are not "
                                           f"Shopify statuses ({', '.join(SHOPIFY_STATUSES)})"))
    for i, field in enumerate(dest.metafields):
        path = loc + ("metafields", i)
        if field.type not in SHOPIFY_METAFIELD_TYPES:
            out.append((path + ("type",), unknown(field.type, SHOPIFY_METAFIELD_TYPES, "a Shopify metafield "
                                                  "type", "supported")))
        else:
            attribute(path + ("attribute",), field.attribute, SHOPIFY_METAFIELD_TYPES[field.type])
        if [(m.namespace, m.key) for m in dest.metafields].index((field.namespace, field.key)) != i:
            out.append((path + ("key",), f"metafield {field.namespace}.{field.key} is mapped twice"))
    if dest.images:
        for i, name in enumerate(dest.images.attributes):
            attribute(loc + ("images", "attributes", i), name, ("image", "text"))
        if dest.images.alt:
            attribute(loc + ("images", "alt"), dest.images.alt, ("text", "enum"))
    return out


_DRIVE_ID = re.compile(r"[A-Za-z0-9_-]{5,}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _drive_source_problems(loc: Loc, source: Any) -> list[Problem]:
    """A drive source needs its folder id and the variable naming its service-account key."""
    if source.kind != "drive":
        return []
    out: list[Problem] = []
    if not source.folder_id:
        out.append((loc + ("folder_id",), "a drive source needs 'folder_id': the id at the end of the folder's "
                    "address (drive.google.com/drive/folders/<folder_id>)"))
    elif not _DRIVE_ID.fullmatch(source.folder_id):
        out.append((loc + ("folder_id",), f"{source.folder_id!r} is not a Drive folder id: copy the part of the "
                    "folder's address after /folders/ (letters, digits, '-' and '_')"))
    if source.drive_id is not None and not _DRIVE_ID.fullmatch(source.drive_id):
        out.append((loc + ("drive_id",), f"{source.drive_id!r} is not a shared drive id: copy the part of the "
                    "shared drive's address after /folders/"))
    if not source.credentials_env:
        out.append((loc + ("credentials_env",), "a drive source needs 'credentials_env': the environment variable "
                    "holding the path of the service account's JSON key file (share the folder with its email)"))
    for key in ("credentials_env", "endpoint_url_env"):
        value = getattr(source, key)
        if value and not _ENV_NAME.fullmatch(value):
            out.append((loc + (key,), f"{value!r} is not an environment variable name: name the variable, not "
                        "its value"))
    return out


# Catalogue attribute types each Amazon attribute shape can be filled from.
_AMAZON_SHAPE_TYPES: dict[str, tuple[str, ...]] = {
    "text": ("text", "enum", "reference", "number", "date"), "value": ("text", "enum", "reference", "number", "date"),
    "offer": ("number",), "money": ("number",), "identifier": ("text",), "image": ("image", "text"),
    "list": ("text", "enum"), "quantity": ("number",),
}
_AMAZON_PRODUCT_TYPE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_AMAZON_MARKETPLACE = re.compile(r"^[A-Z0-9]{10,14}$")


def _check_amazon(spec: ProjectSpec, loc: Loc, dest: Any) -> list[Problem]:
    """The Amazon mapping against its catalogue: credentials named, seller and marketplaces given, a product type,
    and each mapped attribute exists with a type its shape can hold (money needs `currency`)."""
    out: list[Problem] = []
    attributes = spec.catalogues[dest.catalogue].attributes
    where = f"an attribute of catalogue {dest.catalogue!r}"

    def attribute(path: Loc, name: str, types: tuple[str, ...] | None, what: str = "this key") -> None:
        if name not in attributes:
            out.append((path, unknown(name, attributes, where)))
        elif types and attributes[name].type not in types:
            out.append((path, f"{name!r} is a {attributes[name].type} attribute; {what} takes "
                              f"{' or '.join(types)} attributes"))

    for key, what in (("client_id_env", "the SP-API application's LWA client id"),
                      ("client_secret_env", "the SP-API application's LWA client secret"),
                      ("refresh_token_env", "the seller's LWA refresh token (from authorising the app)")):
        if not getattr(dest, key):
            out.append((loc + (key,), f"an amazon destination needs {key!r}: the environment variable that "
                                      f"holds {what}"))
    if not dest.seller_id:
        out.append((loc + ("seller_id",), "an amazon destination needs 'seller_id': the selling partner id "
                                          "(Seller Central: Settings > Account Info > Merchant Token)"))
    if not dest.marketplace_ids:
        out.append((loc + ("marketplace_ids",), "an amazon destination needs 'marketplace_ids': at least one, "
                                                "e.g. [ATVPDKIKX0DER] for amazon.com or [A1F83G8C2ARO7P] for "
                                                "amazon.co.uk"))
    for i, marketplace in enumerate(dest.marketplace_ids):
        if not _AMAZON_MARKETPLACE.match(marketplace):
            out.append((loc + ("marketplace_ids", i), f"{marketplace!r} is not an Amazon marketplace id (e.g. "
                                                      "ATVPDKIKX0DER for amazon.com, A1F83G8C2ARO7P for amazon.co.uk)"))
    if dest.product_type is None:
        out.append((loc + ("product_type",), "an amazon destination needs 'product_type': an Amazon product type "
                                             "(e.g. LUGGAGE) or {attribute: <attr>} to read it from each record"))
    elif isinstance(dest.product_type, str):
        if not _AMAZON_PRODUCT_TYPE.match(dest.product_type):
            out.append((loc + ("product_type",), f"{dest.product_type!r} is not an Amazon product type name "
                                                 "(upper case, e.g. LUGGAGE); to read it from each record write "
                                                 "{attribute: <attr>}"))
    else:
        attribute(loc + ("product_type", "attribute"), dest.product_type.attribute, ("text", "enum"))
    for key, types in (("sku", ("text",)), ("status", ("enum", "text"))):
        if getattr(dest, key):
            attribute(loc + (key,), getattr(dest, key), types)
    if not dest.attributes:
        out.append((loc + ("attributes",), "an amazon destination needs 'attributes': Amazon attribute names "
                                           "mapped to catalogue attributes (item_name: title, brand: brand, ...)"))
    for name, entry in dest.attributes.items():
        mapped = amazon_attribute(name, entry)
        path = loc + ("attributes", name)
        what = f"shape {mapped.shape!r} of {name!r}"
        if mapped.attribute:
            attribute(path if isinstance(entry, str) else path + ("attribute",), mapped.attribute,
                      _AMAZON_SHAPE_TYPES[mapped.shape], what)
        for i, other in enumerate(mapped.attributes):
            attribute(path + ("attributes", i), other, _AMAZON_SHAPE_TYPES[mapped.shape], what)
        if mapped.shape in ("offer", "money") and not dest.currency:
            out.append((path, f"{name!r} is money: set the destination's 'currency' (e.g. GBP)"))
        if mapped.shape in ("text", "list") and not dest.language_tag:
            out.append((path, f"{name!r} is text in a language: set the destination's 'language_tag' (e.g. "
                              "en_GB), or give it `shape: value` if it has no language"))
    return out


# A named range's name: letters, digits and underscores, not starting with a digit, and not a cell reference.
_NAMED_RANGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,249}")
_A1_OR_R1C1 = re.compile(r"([A-Za-z]{1,3}[0-9]+|[Rr][0-9]*[Cc][0-9]*)")


def _check_sheets(spec: ProjectSpec, loc: Loc, dest: Any) -> list[Problem]:
    """A sheets destination: where (spreadsheet, named range, key file variable) and its columns, key first."""
    out: list[Problem] = []
    cat = spec.catalogues[dest.catalogue]
    if not dest.spreadsheet_id:
        out.append((loc + ("spreadsheet_id",), "a sheets destination needs 'spreadsheet_id': the id in the "
                                               "spreadsheet's URL (docs.google.com/spreadsheets/d/<id>/edit)"))
    if not dest.named_range:
        out.append((loc + ("named_range",), "a sheets destination needs 'named_range': the named range it syncs "
                                            "(created on the first sync), e.g. claro_products"))
    elif not _NAMED_RANGE.fullmatch(dest.named_range) or _A1_OR_R1C1.fullmatch(dest.named_range):
        out.append((loc + ("named_range",), f"{dest.named_range!r} is not a valid named range name: letters, "
                                            "digits and underscores, not starting with a digit and not a cell "
                                            "reference such as A1 or R1C1"))
    if not dest.credentials_env:
        out.append((loc + ("credentials_env",), "a sheets destination needs 'credentials_env': the environment "
                                                "variable holding the path of the service account's JSON key file"))
    if dest.columns:
        if dest.columns[0] != cat.key:
            out.append((loc + ("columns", 0), f"the first column must be the catalogue key {cat.key!r} (records are "
                                              "matched by it; its column is protected)"))
        for i, name in enumerate(dest.columns):
            if name not in cat.attributes:
                out.append((loc + ("columns", i), unknown(name, cat.attributes, f"an attribute of catalogue "
                                                          f"{dest.catalogue!r}", "attributes")))
            elif dest.columns.index(name) != i:
                out.append((loc + ("columns", i), f"{name!r} is listed twice in 'columns'"))
    return out


def _not_available(what: str, kind: str, available: Iterable[str]) -> str:
    return (f"{what} kind {kind!r} is not available yet (available now: {', '.join(available)}); "
            f"remove this {what} or change its kind")


def _target_problem(spec: ProjectSpec, target: str) -> str | None:
    if target in spec.pipelines:
        return None
    if "/" not in target:
        return (f"{target!r} is neither a pipeline ({', '.join(spec.pipelines) or 'none defined'}) "
                "nor '<catalogue>/<operation>'")
    cat, op = target.split("/", 1)
    if cat not in spec.catalogues:
        return unknown(cat, spec.catalogues, "a catalogue")
    ops = [*SCHEDULABLE_OPERATIONS, *(d for d, dest in spec.destinations.items() if dest.catalogue == cat),
           *monitors_of(spec, cat)]
    if op not in ops:
        return unknown(op, ops, f"an operation that can be scheduled on {cat!r}", listing="one of")
    return None


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summarize(spec: ProjectSpec, name: str | None = None) -> str:
    """One line for `claro check`: what the spec defines."""
    name = name or (spec.spec_path.name if spec.spec_path else "claro.yaml")
    # "products: 17 attributes, suppliers: 5": the unit once, on the first catalogue only.
    cats = [f"{c}: {_count(len(cat.attributes), 'attribute') if i == 0 else len(cat.attributes)}"
            for i, (c, cat) in enumerate(spec.catalogues.items())]
    return (f"{name}: OK — {_count(len(spec.catalogues), 'catalogue')} ({', '.join(cats)}), "
            f"{_count(len(spec.sources), 'source')}, {_count(len(spec.pipelines), 'pipeline')}, "
            f"{_count(len(spec.schedules), 'schedule')}, {_count(len(spec.destinations), 'destination')}")


def _check_supabase_rest_modes(loc: Loc, dest: Any) -> list[Problem]:
    """supabase: `mode` sql or rest with what each needs; `mode: sql|rest` belongs to supabase only."""
    out: list[Problem] = []
    if dest.kind == "bigquery":
        if dest.mode in ("sql", "rest"):
            out.append((loc + ("mode",), f"mode {dest.mode!r} is for supabase destinations; bigquery takes "
                                         "append, replace or merge"))
        return out
    if dest.kind == "rest":
        return out
    if "mode" not in dest.model_fields_set or dest.mode not in ("sql", "rest"):
        out.append((loc + ("mode",), "a supabase destination needs 'mode': sql (upsert through the database URL in "
                                     "url_env) or rest (PostgREST, with api_key_env)"))
        return out
    if not dest.table:
        out.append((loc + ("table",), "a supabase destination needs 'table' (with mode rest it must exist, with a "
                                      "primary key or unique index on the catalogue key)"))
    if dest.mode == "sql" and not dest.url_env:
        out.append((loc + ("url_env",), "a supabase sql destination needs 'url_env': the environment variable that "
                                        "holds the database URL (Project Settings > Database > connection string)"))
    if dest.mode == "rest":
        if not (dest.url_env or dest.rest_url_env):
            out.append((loc + ("url_env",), "a supabase rest destination needs 'url_env' (the variable holding the "
                                            "project URL, e.g. https://xyz.supabase.co) or 'rest_url_env'"))
        if not dest.api_key_env:
            out.append((loc + ("api_key_env",), "a supabase rest destination needs 'api_key_env': the variable "
                                                "holding the project's API key (a secret or service_role key)"))
    return out


def _check_rest_destination(spec: ProjectSpec, loc: Loc, dest: Any) -> list[Problem]:
    """A rest destination: a URL template and body reading attributes the catalogue has, auth with its secrets."""
    out: list[Problem] = []
    attributes = set(spec.catalogues[dest.catalogue].attributes) | {spec.catalogues[dest.catalogue].key}
    if not dest.url:
        out.append((loc + ("url",), "a rest destination needs 'url': the endpoint, a template such as "
                                    "https://erp.example/api/items/{sku}"))
    else:
        if dest.per == "batch" and url_placeholders(dest.url):
            out.append((loc + ("url",), "with per: batch the url cannot hold {attribute} placeholders (one request "
                                        "carries many records)"))
        for name in url_placeholders(dest.url):
            if name not in attributes:
                out.append((loc + ("url",), f"the url template names {{{name}}}, which is not an attribute of "
                                            f"{dest.catalogue}"))
        if not dest.url_env and not dest.url.startswith(("http://", "https://")):
            out.append((loc + ("url",), "the url must start with http:// or https:// (or be relative to the base "
                                        "URL in url_env)"))
    for name in sorted(rest_body_attributes(dest.body) - attributes):
        out.append((loc + ("body",), f"the body names {name!r}, which is not an attribute of {dest.catalogue}: "
                                     "write {value: ...} for a literal"))
    return out + _auth_problems(loc + ("auth",), dest.auth)


def _auth_problems(loc: Loc, auth: Any) -> list[Problem]:
    """Each auth type names the variables holding its secrets (an http source's and a rest destination's)."""
    if auth is None:
        return []
    needs = {"bearer": ["token_env"], "basic": ["username_env", "password_env"], "api_key": ["key_env"],
             "oauth2_client_credentials": ["client_id_env", "client_secret_env"]}[auth.type]
    out: list[Problem] = [(loc + (key,), f"auth type {auth.type} needs {key!r}: the environment variable holding "
                                         "the secret") for key in needs if not getattr(auth, key)]
    if auth.type == "oauth2_client_credentials" and not (auth.token_url or auth.token_url_env):
        out.append((loc + ("token_url",), "auth type oauth2_client_credentials needs 'token_url' (or "
                                          "'token_url_env'): the token endpoint"))
    return out


def _check_dedupe(loc: Loc, cname: str, cat: Any) -> list[Problem]:
    """`catalogues.<c>.dedupe`: compared and blocking attributes exist, weights are positive, retiring is complete."""
    out: list[Problem] = []
    spec = cat.dedupe
    what = f"an attribute of catalogue {cname!r}"
    for aname, weight in spec.attributes.items():
        if aname not in cat.attributes:
            out.append((loc + ("attributes", aname), unknown(aname, cat.attributes, what, "attributes")))
        elif aname == cat.key:
            out.append((loc + ("attributes", aname), f"{aname!r} is the catalogue key (unique per record): "
                        "comparing it finds nothing; remove it"))
        elif weight <= 0:
            out.append((loc + ("attributes", aname), f"weight {weight:g} must be above 0 (remove the attribute "
                        "to leave it out)"))
    for role in ("gtin", "mpn", "brand", "title"):
        aname = getattr(spec.blocking, role)
        if aname is not None and aname not in cat.attributes:
            out.append((loc + ("blocking", role), unknown(aname, cat.attributes, what, "attributes")))
    if (spec.retire_attribute is None) != (spec.retire_value is None):
        out.append((loc + ("retire_attribute" if spec.retire_attribute is None else "retire_value",),
                    "'retire_attribute' and 'retire_value' go together: the attribute a merge sets on the "
                    "duplicate and its value (e.g. status: archived)"))
    elif spec.retire_attribute is not None:
        attr = cat.attributes.get(spec.retire_attribute)
        if attr is None:
            out.append((loc + ("retire_attribute",), unknown(spec.retire_attribute, cat.attributes, what,
                                                              "attributes")))
        elif spec.retire_attribute == cat.key:
            out.append((loc + ("retire_attribute",), "the catalogue key cannot be changed by a merge"))
        elif attr.type == "enum" and spec.retire_value not in (attr.values or []):
            out.append((loc + ("retire_value",), unknown(spec.retire_value, attr.values or [],
                                                         f"a value of {spec.retire_attribute!r}", "values")))
    return out
