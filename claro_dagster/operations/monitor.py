"""Monitors: the pure logic of price rules, competitor matching and catalogue drift. No I/O, no Dagster.

Price rules (`monitors.<name>.rules` with `kind: price`):

- threshold: an observation moved more than `percent` % from the previous observation of the same record,
  source and listing;
- absolute: `expression`, a condition over the record's attributes (`price < cost * 1.2`), holds;
- anomaly: an observation is a robust outlier against that record's history from the same source: its
  modified z-score 0.6745 * |x - median| / MAD exceeds `max_z` (Iglewicz and Hoaglin); with a MAD of 0 the
  mean absolute deviation stands in (x 1.2533), and with no spread at all any different price is an outlier;
- competitor_gap: a matched competitor listing is cheaper than the catalogue price by more than `percent` %.

Competitor listings are matched to records by GTIN (digits, leading zeros ignored), else MPN (letters and
digits, case ignored; the brands must not disagree), else name plus brand (both normalised to lower-case words,
the names at least `name_similarity` alike by rapidfuzz's token-sort ratio, the brands equal).

Drift (`kind: drift`) compares a catalogue profile (the Analyse figures: quality score and per-field fill rate,
plus each enum attribute's value shares) with the profiles of previous runs.
"""

from __future__ import annotations

import ast
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Detection", "ExpressionError", "Listing", "Match", "Observation", "Profile", "compile_expression",
    "competitor_gaps", "drift", "expression_names", "match_listings", "modified_z", "outliers", "price_changes",
]

RULE_KINDS: tuple[str, ...] = ("threshold", "absolute", "anomaly", "competitor_gap")
DEFAULT_MAX_Z = 3.5  # Iglewicz and Hoaglin's recommended cut-off for the modified z-score


@dataclass(frozen=True)
class Detection:
    """One thing a monitor found: the record (None for a catalogue-wide drift), the rule, and what it saw."""

    rule: str
    record: str | None
    message: str
    source: str = ""
    listing: str = ""
    value: float | None = None
    reference: float | None = None  # what it is compared with: the previous price, the median, the baseline
    detail: dict[str, Any] = field(default_factory=dict)
    observation: int | None = None  # threshold, anomaly: the observation judged (each is judged once per monitor)

    def line(self) -> str:
        """`record: message`, as alerts and `claro monitor history` list it."""
        return f"{self.record}: {self.message}" if self.record else self.message


# ---------------------------------------------------------------------------------------------- expressions
class ExpressionError(ValueError):
    """An `absolute` expression that is not allowed; the message says what is."""


# Python's own parser reads the expression, and only these nodes may appear: numbers and strings, attribute
# names, arithmetic, comparisons and and/or/not. No calls, attribute access, subscripts or lambdas, so a spec
# can never run code (the record filter language has no arithmetic, which `cost * 1.2` needs). Evaluation walks
# the tree itself: nothing is handed to eval().
_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.Mod: lambda a, b: a % b}
_COMPARE = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}
_ALLOWED = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp,
            ast.Compare, ast.Name, ast.Load, ast.Constant, *_BINARY, *_COMPARE)
_MAX_EXPRESSION = 500


def _parse(text: str) -> ast.Expression:
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("the expression is empty; write a condition such as 'price < cost * 1.2'")
    if len(text) > _MAX_EXPRESSION:
        raise ExpressionError(f"the expression is longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{text!r} does not parse (column {exc.offset}): write a condition such as "
                              "'price < cost * 1.2'") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(f"{text!r}: {type(node).__name__} is not allowed; use attribute names, numbers, "
                                  "+ - * / %, comparisons (< <= > >= == !=) and and/or/not")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str) or \
                isinstance(node, ast.Constant) and isinstance(node.value, bool):
            raise ExpressionError(f"{text!r}: only numbers and quoted text are literals")
    if not isinstance(tree.body, ast.Compare | ast.BoolOp) and not (
            isinstance(tree.body, ast.UnaryOp) and isinstance(tree.body.op, ast.Not)):
        raise ExpressionError(f"{text!r} is not a condition: compare something, e.g. 'price < cost * 1.2'")
    return tree


def expression_names(text: str) -> list[str]:
    """The attribute names an expression reads, in order of appearance; ExpressionError when it is not allowed."""
    names: list[str] = []
    for node in ast.walk(_parse(text)):
        if isinstance(node, ast.Name) and node.id not in names:
            names.append(node.id)
    return names


def compile_expression(text: str):
    """A function record -> True/False/None for an `absolute` expression (None: an attribute it reads is empty,
    or arithmetic failed, e.g. a division by zero: no detection)."""
    tree = _parse(text)

    class _Missing(Exception):
        pass

    def value(node: ast.AST, record: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            v = record.get(node.id)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                raise _Missing
            return v
        if isinstance(node, ast.UnaryOp):
            operand = value(node.operand, record)
            if isinstance(node.op, ast.Not):
                return not operand
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](value(node.left, record), value(node.right, record))
        if isinstance(node, ast.BoolOp):
            results = (bool(value(v, record)) for v in node.values)
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.Compare):
            left = value(node.left, record)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = value(comparator, record)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        raise ExpressionError(f"{type(node).__name__} is not allowed")  # _parse refused it already

    def evaluate(record: Mapping[str, Any]) -> bool | None:
        try:
            return bool(value(tree.body, record))
        except (_Missing, ZeroDivisionError, TypeError):
            return None

    return evaluate


# ---------------------------------------------------------------------------------------------- observations
@dataclass(frozen=True)
class Observation:
    """One observed price: of a record, from a source (`catalogue` for the catalogue's own price), for a listing
    ('' for the record's own, else the competitor listing's id), as of a time (ISO text, UTC)."""

    record: str
    source: str
    price: float
    observed_at: str
    listing: str = ""
    competitor: str = ""
    id: int | None = None


def price_changes(history: Sequence[Observation], new: Iterable[Observation], percent: float) -> list[Detection]:
    """threshold: each new observation that moved more than `percent` % from the observation before it (same
    record, source and listing). `history` holds every observation, the new ones included, oldest first."""
    previous: dict[tuple[str, str, str], Observation] = {}
    before: dict[tuple[str, str, str, str], Observation] = {}
    for obs in history:
        series = (obs.record, obs.source, obs.listing)
        if series in previous:
            before[(*series, obs.observed_at)] = previous[series]
        previous[series] = obs
    out = []
    for obs in new:
        prior = before.get((obs.record, obs.source, obs.listing, obs.observed_at))
        if prior is None or prior.price == 0:
            continue
        change = (obs.price - prior.price) / abs(prior.price) * 100
        if abs(change) > percent:
            where = f"{obs.source}" + (f" ({obs.competitor or obs.listing})" if obs.listing else "")
            out.append(Detection("threshold", obs.record,
                                 f"{where}: price {prior.price:g} -> {obs.price:g} ({change:+.1f}%, more than "
                                 f"{percent:g}%)", obs.source, obs.listing, obs.price, prior.price,
                                 {"change_percent": round(change, 2), "percent": percent}, obs.id))
    return out


def modified_z(value: float, history: Sequence[float]) -> float:
    """The robust z-score of `value` against `history`: 0.6745 (x - median) / MAD; with a MAD of 0,
    (x - median) / (1.2533 x mean absolute deviation); inf when the history has no spread and x differs."""
    median = statistics.median(history)
    mad = statistics.median(abs(h - median) for h in history)
    if mad > 0:
        return 0.6745 * (value - median) / mad
    mean_ad = statistics.fmean(abs(h - median) for h in history)
    if mean_ad > 0:
        return (value - median) / (1.253314 * mean_ad)
    return 0.0 if value == median else math.copysign(math.inf, value - median)


def outliers(history: Sequence[Observation], new: Iterable[Observation], *, max_z: float = DEFAULT_MAX_Z,
             min_history: int = 5) -> list[Detection]:
    """anomaly: each new observation whose modified z-score against the earlier observations of its series
    (record, source, listing) exceeds `max_z`; a series needs `min_history` earlier observations first."""
    series: dict[tuple[str, str, str], list[Observation]] = {}
    for obs in history:
        series.setdefault((obs.record, obs.source, obs.listing), []).append(obs)
    out = []
    for obs in new:
        earlier = [o.price for o in series.get((obs.record, obs.source, obs.listing), [])
                   if o.observed_at < obs.observed_at]
        if len(earlier) < min_history:
            continue
        z = modified_z(obs.price, earlier)
        if abs(z) > max_z:
            median = statistics.median(earlier)
            shown = "inf" if math.isinf(z) else f"{z:+.1f}"
            out.append(Detection("anomaly", obs.record,
                                 f"{obs.source}: price {obs.price:g} is an outlier against its last {len(earlier)} "
                                 f"(median {median:g}, robust z {shown}, limit {max_z:g})", obs.source, obs.listing,
                                 obs.price, median, {"z": None if math.isinf(z) else round(z, 2), "max_z": max_z,
                                                     "history": len(earlier)}, obs.id))
    return out


# ---------------------------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class Listing:
    """A competitor's listing of a product, as a source gives it."""

    competitor: str
    price: float | None
    gtin: str | None = None
    mpn: str | None = None
    name: str | None = None
    brand: str | None = None
    url: str | None = None
    observed_at: str | None = None

    @property
    def id(self) -> str:
        """Stable within a competitor: its GTIN, else MPN, else name (what it is matched by)."""
        ident = _gtin(self.gtin) or _code(self.mpn) or _words(self.name)
        return f"{self.competitor}:{ident}"


@dataclass(frozen=True)
class Match:
    record: str
    listing: Listing
    by: str  # gtin | mpn | name+brand


def _gtin(value: Any) -> str:
    digits = re.sub(r"\D", "", _text(value))
    return digits.lstrip("0")


def _code(value: Any) -> str:
    return re.sub(r"[^0-9a-z]", "", _text(value).lower())


def _words(value: Any) -> str:
    return " ".join(re.findall(r"[0-9a-z]+", _text(value).lower()))


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def match_listings(records: Iterable[Mapping[str, Any]], listings: Iterable[Listing], *, key: str,
                   gtin: str | None = "gtin", mpn: str | None = "mpn", name: str | None = "title",
                   brand: str | None = "brand", name_similarity: float = 90) -> list[Match]:
    """Each listing matched to at most one record: by GTIN, else MPN (brands not disagreeing), else name plus
    brand. The arguments name the catalogue attributes holding each identifier (None: not used)."""
    from rapidfuzz import fuzz

    by_gtin: dict[str, str] = {}
    by_mpn: dict[str, list[tuple[str, str]]] = {}
    by_brand: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        rid = _text(r.get(key))
        if not rid:
            continue
        b = _words(r.get(brand)) if brand else ""
        if gtin and _gtin(r.get(gtin)):
            by_gtin.setdefault(_gtin(r.get(gtin)), rid)
        if mpn and _code(r.get(mpn)):
            by_mpn.setdefault(_code(r.get(mpn)), []).append((rid, b))
        if name and b and _words(r.get(name)):
            by_brand.setdefault(b, []).append((rid, _words(r.get(name))))
    out = []
    for listing in listings:
        g, m, lb = _gtin(listing.gtin), _code(listing.mpn), _words(listing.brand)
        if g and g in by_gtin:
            out.append(Match(by_gtin[g], listing, "gtin"))
            continue
        candidates = [rid for rid, b in by_mpn.get(m, []) if not (b and lb and b != lb)] if m else []
        if len(candidates) == 1:
            out.append(Match(candidates[0], listing, "mpn"))
            continue
        n = _words(listing.name)
        if n and lb:
            scored = [(fuzz.token_sort_ratio(n, rn), rid) for rid, rn in by_brand.get(lb, [])]
            best = max(scored, default=(0.0, ""))
            if best[0] >= name_similarity and sum(s == best[0] for s, _ in scored) == 1:
                out.append(Match(best[1], listing, "name+brand"))
    return out


def competitor_gaps(prices: Mapping[str, float], latest: Iterable[Observation], percent: float) -> list[Detection]:
    """competitor_gap: records whose latest competitor observation is cheaper than the catalogue price by more
    than `percent` % (one detection per record and listing)."""
    out = []
    for obs in latest:
        own = prices.get(obs.record)
        if not obs.listing or own is None or own <= 0:
            continue
        gap = (own - obs.price) / own * 100
        if gap > percent:
            who = obs.competitor or obs.listing
            out.append(Detection("competitor_gap", obs.record,
                                 f"{who} sells it for {obs.price:g}, {gap:.1f}% under our {own:g} (more than "
                                 f"{percent:g}%)", obs.source, obs.listing, obs.price, own,
                                 {"gap_percent": round(gap, 2), "percent": percent, "competitor": who}))
    return out


# ---------------------------------------------------------------------------------------------- drift
@dataclass
class Profile:
    """What a drift monitor compares run to run: the Analyse quality score and fill rates (the same figures
    `<catalogue>/analyse` records as metadata), and the share of each value of each enum attribute."""

    score: float
    records: int
    fill_rates: dict[str, float]
    distributions: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "records": self.records, "fill_rates": self.fill_rates,
                "distributions": self.distributions}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        return cls(float(data["score"]), int(data.get("records", 0)), dict(data.get("fill_rates", {})),
                   {k: dict(v) for k, v in (data.get("distributions") or {}).items()})


def value_shares(values: Iterable[Any]) -> dict[str, float]:
    """Share of each filled value (text as stored), rounded to 6 places."""
    counts: dict[str, int] = {}
    for v in values:
        text = _text(v).strip()
        if text:
            counts[text] = counts.get(text, 0) + 1
    total = sum(counts.values())
    return {k: round(n / total, 6) for k, n in sorted(counts.items())} if total else {}


@dataclass(frozen=True)
class DriftTolerance:
    fill_rate: float = 0.05  # a drop of more than 5 points of fill rate
    score: float = 2.0  # a drop of more than 2 points of the 0-100 quality score
    distribution: float = 0.2  # total variation distance between value shares
    new_values: bool = True


def drift(current: Profile, previous: Sequence[Profile], tolerance: DriftTolerance) -> list[Detection]:
    """Drifts of `current` against the previous profiles (newest last): the baseline of a figure is its median
    over them; a value never seen in any of them is new. No previous profile: nothing (the baseline is set)."""
    if not previous:
        return []
    out = []
    base_score = statistics.median(p.score for p in previous)
    if base_score - current.score > tolerance.score:
        out.append(Detection("score", None, f"quality score fell from {base_score:g} to {current.score:g} "
                             f"(tolerance {tolerance.score:g} points)", value=current.score, reference=base_score))
    for attr, rate in current.fill_rates.items():
        earlier = [p.fill_rates[attr] for p in previous if attr in p.fill_rates]
        if not earlier:
            continue
        base = statistics.median(earlier)
        if base - rate > tolerance.fill_rate:
            out.append(Detection("fill_rate", None, f"{attr}: fill rate fell from {base:.1%} to {rate:.1%} "
                                 f"(tolerance {tolerance.fill_rate:.1%})", value=rate, reference=base,
                                 detail={"attribute": attr}))
    for attr, shares in current.distributions.items():
        earlier = [p.distributions[attr] for p in previous if attr in p.distributions]
        if not earlier:
            continue
        if tolerance.new_values:
            seen = set().union(*earlier)
            new = sorted(set(shares) - seen)
            if new:
                out.append(Detection("new_value", None, f"{attr}: new value(s) {', '.join(map(repr, new))}",
                                     detail={"attribute": attr, "values": new}))
        last = earlier[-1]
        distance = 0.5 * sum(abs(shares.get(v, 0.0) - last.get(v, 0.0)) for v in set(shares) | set(last))
        if distance > tolerance.distribution:
            out.append(Detection("distribution", None, f"{attr}: value shares moved by {distance:.2f} (total "
                                 f"variation; tolerance {tolerance.distribution:g})", value=round(distance, 4),
                                 detail={"attribute": attr, "before": last, "after": shares}))
    return out
