"""Bulk Enrichment: fill missing or weak attribute values from the methods the spec configures per attribute.

Pure logic (no Dagster, no I/O): the caller reads the records, the referenced catalogues and reference files,
and passes a model client (resources/model_endpoint.py) that answers chat-completions requests. What comes
out are proposals (record, attribute, value, confidence, reason, citation) for the one change-set writer, and
rejections (a model that answered prose or a value outside the enum) with their reasons, never applied.

An attribute's methods are tried in order; the first that proposes a value wins. The cheap methods (rules,
lookup, similar) are all evaluated, so the others count as agreement or disagreement; the model is asked only
when no earlier method found a value.

Confidence (0-100) of a proposal, from four documented factors:

    confidence = reliability x evidence x certainty + agreement      (clamped to 0-100, rounded to 0.1)

* reliability: how far the method is trusted (its spec key `reliability`, else rules 80, lookup through a
  reference 95, lookup from a file 90, similar 75, model 70);
* evidence quality (0-1): rules 1.0 for a match in the first `from` attribute, 0.9 in a later one, x0.95 when a
  unit had to be converted; lookup 1.0 on the whole key, 0.9 on a prefix; similar: the share of the
  near-identical records that agree (at least 0.5), x0.9 when only `min_records` agree;
* certainty (0-1): the model's probability of its answer, exp(sum of the answer's token log-probabilities),
  when the API returns log-probabilities; 0.9 when it does not; 1 for the other methods;
* agreement: +10 per other method proposing the same value, -15 per other method proposing a different one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from claro_dagster.operations.values import _fold, enum_lookup, parse_quantity, resolve_unit
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, EnrichMethodSpec

OPERATION = "enrich"
DEFAULT_RELIABILITY = {"rules": 80.0, "lookup_reference": 95.0, "lookup_file": 90.0, "similar": 75.0, "model": 70.0}
AGREEMENT_BONUS = 10.0
DISAGREEMENT_PENALTY = 15.0
NO_LOGPROBS_CERTAINTY = 0.9
_CONTEXT = 30  # characters of text quoted on each side of a rule's match
_NUMBER_UNIT = re.compile(r"(?<![\w.])(?P<number>\d+(?:[.,]\d+)?)\s?(?P<unit>[A-Za-zµ\"]+(?: ?oz)?)(?!\w)")


class ModelUnavailable(RuntimeError):
    """The model endpoint could not answer (down, timed out, refused the request): the run fails, nothing is written."""


@dataclass(frozen=True)
class ModelAnswer:
    """What a chat-completions call returned: the message text, the answer tokens' log-probabilities (None when
    the API sent none) and the model that answered."""

    content: str | None
    logprobs: list[float] | None
    model: str


class ModelClient(Protocol):
    def available(self, method: EnrichMethodSpec) -> bool: ...

    def complete(self, method: EnrichMethodSpec, messages: list[dict[str, str]],
                 schema: dict[str, Any]) -> ModelAnswer: ...


@dataclass(frozen=True)
class Proposal:
    """A value proposed for one field, with its confidence and where it came from."""

    record: str
    attribute: str
    value: Any
    confidence: float
    method: str
    reason: str
    citation: str
    model: str | None = None  # "<model> prompt:<sha256 prefix>" when a model answered


@dataclass(frozen=True)
class Rejection:
    """A value a method produced that cannot be used (never applied), with the reason."""

    record: str
    attribute: str
    method: str
    reason: str
    model: str | None = None


@dataclass
class EnrichResult:
    proposals: list[Proposal] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    wanted: dict[str, int] = field(default_factory=dict)  # attribute -> values that were missing or weak
    skipped_model: set[str] = field(default_factory=set)  # attributes whose model method has no endpoint configured

    def counts(self) -> dict[str, dict[str, int]]:
        """Per attribute: values wanted, proposed and rejected by the methods."""
        out = {a: {"wanted": n, "proposed": 0, "rejected": 0} for a, n in self.wanted.items()}
        for p in self.proposals:
            out.setdefault(p.attribute, {"wanted": 0, "proposed": 0, "rejected": 0})["proposed"] += 1
        for r in self.rejections:
            out.setdefault(r.attribute, {"wanted": 0, "proposed": 0, "rejected": 0})["rejected"] += 1
        return out


@dataclass(frozen=True)
class _Candidate:
    value: Any
    method: str
    reliability: float
    evidence: float
    reason: str
    citation: str
    certainty: float = 1.0
    model: str | None = None


class EnrichError(ValueError):
    """The spec's enrichment settings cannot be used as they are (names the attribute and method)."""


def enrichable(catalogue: CatalogueSpec) -> dict[str, AttributeSpec]:
    """The attributes with `enrich` methods."""
    return {n: a for n, a in catalogue.attributes.items() if a.enrich is not None and a.enrich.methods}


def prompt_hash(template: str) -> str:
    return hashlib.sha256(template.encode()).hexdigest()[:12]


def model_label(method: EnrichMethodSpec, template: str) -> str:
    """What the provenance records as the model: its name and the hash of the prompt template."""
    return f"{method.model} prompt:{prompt_hash(template)}"


def default_prompt(name: str, attr: AttributeSpec, sources: Sequence[str]) -> str:
    fields = "\n".join(f"{s}: {{{s}}}" for s in sources)
    what = f"the {name}" + (f" ({attr.description})" if attr.description else "")
    return f"From this product record, give {what}. Answer only with JSON matching the schema.\n{fields}"


def answer_schema(name: str, attr: AttributeSpec, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON schema the model's answer must match: `{"value": ...}`, an enum for enum and reference
    attributes (a classification task), a number in the attribute's unit for numbers."""
    if attr.type == "enum" or allowed is not None:
        value: dict[str, Any] = {"type": "string", "enum": list(allowed if allowed is not None else attr.values or [])}
    elif attr.type == "number":
        value = {"type": "number", "description": f"{name} in {attr.unit}" if attr.unit else name}
        if attr.unit:
            return {"type": "object", "additionalProperties": False, "required": ["value", "unit"],
                    "properties": {"value": value, "unit": {"type": "string", "enum": [attr.unit]}}}
    else:
        value = {"type": "string"}
    return {"type": "object", "additionalProperties": False, "required": ["value"], "properties": {"value": value}}


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def _quote(attribute: str, text: str, start: int, end: int) -> str:
    before = max(0, start - _CONTEXT)
    after = min(len(text), end + _CONTEXT)
    return (f'{attribute}: "{"…" if before else ""}{text[before:after]}{"…" if after < len(text) else ""}" '
            f"(matched {text[start:end]!r})")


# ---------------------------------------------------------------------------------------------- rules
def _rules(name: str, attr: AttributeSpec, method: EnrichMethodSpec, row: Mapping[str, Any]) -> _Candidate | None:
    reliability = method.reliability if method.reliability is not None else DEFAULT_RELIABILITY["rules"]
    sources = method.from_
    for position, source in enumerate(sources):
        text = _text(row.get(source))
        if text is None:
            continue
        found = _match(name, attr, method, text)
        if found is None:
            continue
        value, start, end, converted = found
        evidence = (1.0 if position == 0 else 0.9) * (0.95 if converted else 1.0)
        return _Candidate(value, "rules", reliability, evidence, f"enriched by rule from {source}",
                          _quote(source, text, start, end))
    return None


def _match(name: str, attr: AttributeSpec, method: EnrichMethodSpec, text: str):
    """(value, start, end, unit converted) of the first unambiguous match in `text`, else None."""
    if method.patterns:
        for pattern in method.patterns:
            m = re.search(pattern, text)
            if m is None:
                continue
            raw = m.group("value") if "value" in m.re.groupindex else m.group(0)
            span = m.span("value") if "value" in m.re.groupindex else m.span()
            value, converted = _as_value(attr, raw)
            if value is not None:
                return value, span[0], span[1], converted
        return None
    if attr.type == "enum":
        lookup = enum_lookup(attr)
        # longest spellings first, so "navy blue" is read before "blue"
        spellings = sorted(lookup, key=len, reverse=True)
        pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(s).replace(r"\ ", r"[\s_-]+") for s in spellings)
                             + r")(?!\w)", re.IGNORECASE)
        hits = [(lookup[_fold(m.group(1))][0], m.start(), m.end()) for m in pattern.finditer(text)]
        if not hits or len({h[0] for h in hits}) > 1:
            return None  # nothing, or two different values (a "red and blue" jacket): not a rule's call
        value, start, end = hits[0]
        return value, start, end, False
    if attr.type == "number" and attr.unit:
        target = resolve_unit(attr.unit)
        hits = []
        for m in _NUMBER_UNIT.finditer(text):
            try:
                unit = resolve_unit(m.group("unit"))
            except ValueError:
                continue
            if unit.dimensionality != target.dimensionality:
                continue
            value = parse_quantity(f"{m.group('number').replace(',', '.')} {m.group('unit')}", attr.unit)
            hits.append((round(value, 6), m.start(), m.end(), unit != target))
        if not hits or len({h[0] for h in hits}) > 1:
            return None
        return hits[0]
    return None


def _as_value(attr: AttributeSpec, raw: str) -> tuple[Any, bool]:
    """A pattern's matched text as a value of the attribute (None when it is not one)."""
    raw = raw.strip()
    if attr.type == "enum":
        hit = enum_lookup(attr).get(_fold(raw))
        return (hit[0], False) if hit else (None, False)
    if attr.type == "number":
        try:
            if attr.unit:
                number = parse_quantity(raw.replace(",", "."), attr.unit)
                return round(number, 6), not re.fullmatch(r"[\d.]+", raw.replace(",", "."))
            return float(raw.replace(",", ".")), False
        except ValueError:
            return None, False
    return (raw or None), False


# ---------------------------------------------------------------------------------------------- lookup
@dataclass(frozen=True)
class ReferenceTable:
    """Rows of another catalogue (by key) or of a reference file (by its key column), with where each came from."""

    name: str  # "catalogue suppliers" or the file's path
    rows: Mapping[str, Mapping[str, Any]]  # key -> row
    lines: Mapping[str, int] = field(default_factory=dict)  # key -> line in the file (files only)


def _lookup(name: str, attr: AttributeSpec, method: EnrichMethodSpec, row: Mapping[str, Any],
            table: ReferenceTable | None) -> _Candidate | None:
    if table is None or not method.field:
        return None
    by_reference = method.via is not None
    key_attr = method.via if by_reference else method.key
    key = _text(row.get(key_attr)) if key_attr else None
    if key is None:
        return None
    key = key.strip()
    tried = [(key, 1.0)] + [(key[:n], 0.9) for n in sorted(method.prefix_lengths, reverse=True) if n < len(key)]
    for probe, evidence in tried:
        source = table.rows.get(probe)
        if source is None:
            continue
        raw = _text(source.get(method.field))
        if raw is None:
            continue
        value, _ = _as_value(attr, raw) if attr.type in ("enum", "number") else (raw.strip(), False)
        if value is None:
            continue
        default = DEFAULT_RELIABILITY["lookup_reference" if by_reference else "lookup_file"]
        reliability = method.reliability if method.reliability is not None else default
        where = f"{table.name} line {table.lines[probe]}" if probe in table.lines else f"{table.name} record {probe!r}"
        shown = ", ".join(f"{k}={v}" for k, v in source.items() if _text(v) is not None)
        return _Candidate(value, "lookup", reliability, evidence,
                          f"enriched by lookup of {key_attr} {probe!r} in {table.name}", f"{where}: {shown}")
    return None


# ---------------------------------------------------------------------------------------------- similar
class _Neighbours:
    """Records near-identical in `match_on`, found by blocking on the first attribute's first word and comparing
    with rapidfuzz (token-sort ratio) within each block."""

    def __init__(self, frame: pd.DataFrame, key: str, match_on: Sequence[str]):
        self.key, self.match_on = key, list(match_on)
        self.rows = {str(k): r for k, r in zip(frame[key], frame.to_dict("records"), strict=True)}
        self.blocks: dict[str, list[str]] = {}
        for k, r in self.rows.items():
            self.blocks.setdefault(self._block(r), []).append(k)

    def _block(self, row: Mapping[str, Any]) -> str:
        text = _text(row.get(self.match_on[0])) or ""
        words = _fold(text).split()
        return words[0] if words else ""

    def of(self, record: str, min_similarity: float) -> list[str]:
        from rapidfuzz import fuzz

        row = self.rows[record]
        mine = [_fold(_text(row.get(a)) or "") for a in self.match_on]
        if not all(mine):
            return []
        out = []
        for other in self.blocks.get(self._block(row), []):
            if other == record:
                continue
            theirs = [_fold(_text(self.rows[other].get(a)) or "") for a in self.match_on]
            if all(fuzz.token_sort_ratio(x, y) >= min_similarity for x, y in zip(mine, theirs, strict=True)):
                out.append(other)
        return out


def _similar(name: str, attr: AttributeSpec, method: EnrichMethodSpec, record: str,
             neighbours: _Neighbours | None) -> _Candidate | None:
    if neighbours is None or record not in neighbours.rows:
        return None
    near = neighbours.of(record, method.min_similarity)
    values = {k: neighbours.rows[k].get(name) for k in near}
    values = {k: v for k, v in values.items() if _text(v) is not None}
    if not values:
        return None
    counts = Counter(_fold(str(v)) for v in values.values())
    top, agreeing = counts.most_common(1)[0]
    if agreeing < method.min_records or agreeing / len(values) < 0.5:
        return None
    keys = sorted(k for k, v in values.items() if _fold(str(v)) == top)
    value = values[keys[0]]
    share = agreeing / len(values)
    evidence = max(0.5, share) * (0.9 if agreeing == method.min_records else 1.0)
    reliability = method.reliability if method.reliability is not None else DEFAULT_RELIABILITY["similar"]
    return _Candidate(value, "similar", reliability, evidence,
                      f"enriched from {agreeing} of {len(values)} near-identical records "
                      f"({', '.join(method.match_on)})", f"records {', '.join(keys)} agree on {value!r}")


# ---------------------------------------------------------------------------------------------- model
def _model(name: str, attr: AttributeSpec, method: EnrichMethodSpec, record: str, row: Mapping[str, Any],
           client: ModelClient, allowed: Sequence[str] | None, readable: Sequence[str]) -> _Candidate | Rejection:
    template = method.prompt or default_prompt(name, attr, readable)
    label = model_label(method, template)
    values = {k: ("" if _text(v) is None else str(v)) for k, v in row.items()}
    prompt = string.Formatter().vformat(template, (), _Defaulting(values))
    schema = answer_schema(name, attr, allowed)
    system = ("You fill in one missing attribute of a product catalogue record. Answer with one JSON object "
              "matching the given schema and nothing else.")
    answer = client.complete(method, [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                             schema)
    label = f"{answer.model or method.model} prompt:{prompt_hash(template)}"

    def reject(reason: str) -> Rejection:
        return Rejection(record, name, "model", reason, label)

    text = (answer.content or "").strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return reject(f"the model answered prose, not JSON: {text[:80]!r}")
    if not isinstance(parsed, dict) or "value" not in parsed:
        return reject(f"the model's JSON has no 'value': {text[:80]!r}")
    raw = parsed["value"]
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return reject("the model gave no value")
    if attr.type == "enum" or allowed is not None:
        choices = list(allowed if allowed is not None else attr.values or [])
        if str(raw) not in choices:
            return reject(f"the model answered {str(raw)[:40]!r}, which is not one of the allowed values "
                          f"({', '.join(choices[:12])}{', …' if len(choices) > 12 else ''})")
        value: Any = str(raw)
    elif attr.type == "number":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return reject(f"the model answered {raw!r}, not a number")
        unit = parsed.get("unit")
        value = float(raw)
        if attr.unit and unit and unit != attr.unit:
            try:
                value = parse_quantity(f"{raw} {unit}", attr.unit)
            except ValueError as exc:
                return reject(f"the model's unit cannot be used: {exc}")
    else:
        value = str(raw).strip()
    certainty = (math.exp(sum(answer.logprobs)) if answer.logprobs else NO_LOGPROBS_CERTAINTY)
    reliability = method.reliability if method.reliability is not None else DEFAULT_RELIABILITY["model"]
    citation = (f"model {label} answered {text[:120]}"
                + (f" (p={certainty:.2f})" if answer.logprobs else " (no log-probabilities)"))
    return _Candidate(value, "model", reliability, 1.0, f"enriched by model {answer.model or method.model}",
                      citation, certainty=certainty, model=label)


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return ""


# ---------------------------------------------------------------------------------------------- the run
def _score(chosen: _Candidate, others: Iterable[_Candidate]) -> tuple[float, str]:
    """The confidence of the chosen value and its factors in words (kept in the change's reason)."""
    agreement = 0.0
    agreeing = []
    for other in others:
        same = _fold(str(other.value)) == _fold(str(chosen.value))
        agreement += AGREEMENT_BONUS if same else -DISAGREEMENT_PENALTY
        agreeing.append(f"{other.method} {'agrees' if same else f'says {other.value!r}'}")
    score = round(min(100.0, max(0.0, chosen.reliability * chosen.evidence * chosen.certainty + agreement)), 1)
    factors = (f"confidence {score:g} = reliability {chosen.reliability:g} x evidence {chosen.evidence:.2f} "
               f"x certainty {chosen.certainty:.2f} {'+' if agreement >= 0 else '-'} agreement {abs(agreement):g}"
               + (f" ({'; '.join(agreeing)})" if agreeing else ""))
    return score, factors


def enrich_records(frame: pd.DataFrame, catalogue: CatalogueSpec, *, wanted: Mapping[str, Iterable[str]],
                   references: Mapping[str, ReferenceTable] | None = None, model: ModelClient | None = None,
                   pool: pd.DataFrame | None = None, reference_keys: Mapping[str, Sequence[str]] | None = None,
                   on_progress: Callable[[int], None] | None = None) -> EnrichResult:
    """Propose values for the `wanted` fields (attribute -> record keys whose value is missing or weak).

    `frame`: the records to enrich (at least the wanted ones); `pool`: the records `similar` compares with
    (default: `frame`); `references`: per attribute and method position `"<attribute>:<i>"`, the table a lookup
    reads; `reference_keys`: for a reference attribute, the keys of its target catalogue (the allowed answers
    of a model); `model`: the chat-completions client (None, or a method whose endpoint is not configured:
    model methods are skipped, noted in `skipped_model`).
    Raises ModelUnavailable when the model endpoint cannot answer.
    """
    key = catalogue.key
    references = references or {}
    rows = {str(k): r for k, r in zip(frame[key], frame.to_dict("records"), strict=True)}
    pool = frame if pool is None else pool
    result = EnrichResult()
    neighbours: dict[tuple[str, ...], _Neighbours] = {}
    for name, records in wanted.items():
        attr = catalogue.attributes[name]
        if attr.enrich is None:
            raise EnrichError(f"attribute {name!r} has no enrich methods")
        records = [r for r in dict.fromkeys(str(k) for k in records) if r in rows]
        result.wanted[name] = len(records)
        readable = [a for a in catalogue.attributes if a != name]
        # a reference's value must be a key of its target catalogue, whichever method proposes it
        allowed_keys = set((reference_keys or {}).get(name, [])) if attr.type == "reference" and reference_keys \
            and name in reference_keys else None
        for record in records:
            row = rows[record]
            found: list[_Candidate] = []
            for i, method in enumerate(attr.enrich.methods):
                if method.method == "rules":
                    c = _rules(name, attr, method, row)
                elif method.method == "lookup":
                    c = _lookup(name, attr, method, row, references.get(f"{name}:{i}"))
                elif method.method == "similar":
                    group = tuple(method.match_on)
                    if group not in neighbours:
                        neighbours[group] = _Neighbours(pool, key, group)
                    c = _similar(name, attr, method, record, neighbours[group])
                else:
                    if found:
                        continue  # an earlier method found a value: the model is not asked
                    if model is None or not model.available(method):
                        result.skipped_model.add(name)  # offline: the other methods still work
                        continue
                    allowed = (reference_keys or {}).get(name) if attr.type == "reference" else None
                    c = _model(name, attr, method, record, row, model, allowed, readable)
                    if isinstance(c, Rejection):
                        result.rejections.append(c)
                        continue
                if c is not None and allowed_keys is not None and str(c.value) not in allowed_keys:
                    result.rejections.append(Rejection(record, name, c.method, f"{c.value!r} is not a record of "
                                                       f"catalogue {attr.target!r} ({c.citation})"[:300], c.model))
                    continue
                if c is not None:
                    found.append(c)
            if on_progress:
                on_progress(1)
            if not found:
                continue
            chosen = found[0]
            confidence, factors = _score(chosen, found[1:])
            result.proposals.append(Proposal(record, name, chosen.value, confidence, chosen.method,
                                             f"{chosen.reason}; {factors}", chosen.citation, chosen.model))
    return result
