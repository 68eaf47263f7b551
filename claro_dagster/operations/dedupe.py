"""Find Duplicates: blocking, pairwise scoring, clustering and merge plans over a catalogue's records.

`find_duplicates(frame, config)` reads a DataFrame of records (one column per attribute, the key among them, in
the order the store reads them: by key) and returns `MergeProposal`s. No I/O, no Dagster.

Blocking
--------
Only pairs that share a blocking key are scored: the same GTIN (digits, leading zeros ignored, so a UPC-A and its
EAN-13 match), the same MPN (letters and digits, case ignored), or the same brand and two of the four rarest tokens
of their normalised titles (lowercase, accents and punctuation dropped, quantities in one unit: `0.5 L` and
`500ml` are both `500ml`). Rare tokens carry the identity of a product; two of four survive one typo or a missing
word, and reordered words give the same tokens. A key shared by more than `MAX_BLOCK` records is dropped (it names
a family, not a product).

Scoring
-------
Each configured attribute both records have gives a similarity in [0, 1]: text by rapidfuzz (the larger of
`token_sort_ratio`, robust to reordered words and typos, and 0.9 x `token_set_ratio`, for a title with extra
words), halved when the titles name different quantities or sizes (`500ml` vs `750ml`, `M` vs `L`: siblings, not
duplicates); GTIN and
codes exactly equal or not; numbers 1 within 1 %, falling to 0 at 50 % apart; other values equal or not. The
score is the weighted mean over the attributes both have, x 100. Why rapidfuzz rather than Splink: the weights
are configured, not learned, so Splink's EM training buys nothing here, and Splink plus DuckDB are large
dependencies; rapidfuzz's `cpdist` scores a column of pairs in C, 100,000 records in seconds
(benchmarks/dedupe.py).

Clusters and survivors
----------------------
Pairs at or above the threshold are joined into clusters (union-find). Each cluster's survivor is the record with
the most filled values (weighted by attribute importance), then one with a valid GTIN, then the first in the
frame. Each other member whose own pair with the survivor scores at least the threshold (a chain of similar
records is not one product) becomes one proposal: survivor + duplicate, their score and per-field similarity,
and per field the value to keep with its reason (the survivor's value, or the duplicate's where the survivor has
none). A pair in `exclude` (rejected before) is never proposed, even when a third record links the two.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from rapidfuzz import fuzz
from rapidfuzz.process import cpdist
from stdnum import ean

from claro_dagster.spec.models import CatalogueSpec

MAX_BLOCK = 50  # records sharing one blocking key at most; more and the key names a product family
RARE_TOKENS = 4  # title tokens per record that make its brand+title keys
DEFAULT_WEIGHTS = {"gtin": 4.0, "mpn": 3.0, "title": 3.0, "brand": 1.0}

# Quantities in titles, converted to one unit per dimension so `0.5 L`, `500 ml` and `50cl` are one token.
_UNITS = {"ml": ("ml", 1.0), "cl": ("ml", 10.0), "l": ("ml", 1000.0), "ltr": ("ml", 1000.0), "litre": ("ml", 1000.0),
          "liter": ("ml", 1000.0), "g": ("g", 1.0), "gr": ("g", 1.0), "kg": ("g", 1000.0), "mg": ("g", 0.001),
          "lb": ("g", 453.592), "lbs": ("g", 453.592), "oz": ("g", 28.3495), "mm": ("mm", 1.0), "cm": ("mm", 10.0),
          "m": ("mm", 1000.0), "in": ("mm", 25.4), "inch": ("mm", 25.4)}
_QUANTITY = re.compile(r"(\d+(?:[.,]\d+)?)\s*(" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_NUMERIC = re.compile(r"\d")
_SIZES = frozenset({"xxs", "xs", "s", "m", "l", "xl", "xxl", "xxxl", "small", "medium", "large"})
_BRAND_SUFFIX = re.compile(r"\b(ltd|limited|inc|gmbh|co|corp|plc|llc|sa|bv)\b")


@dataclass(frozen=True)
class DedupeConfig:
    """What to compare and how; `from_catalogue` reads it from the spec."""

    key: str
    weights: Mapping[str, float]
    kinds: Mapping[str, str]  # attribute -> text | gtin | code | number | exact
    threshold: float = 80.0
    gtin: str | None = None
    mpn: str | None = None
    brand: str | None = None
    title: str | None = None
    importance: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_catalogue(cls, catalogue: CatalogueSpec) -> DedupeConfig:
        attrs = catalogue.attributes
        spec = catalogue.dedupe
        blocking = spec.blocking if spec else None

        def pick(name: str, default: str | None) -> str | None:
            chosen = getattr(blocking, name) if blocking else None
            return chosen or (default if default in attrs else None)

        gtin = pick("gtin", next((a for a, s in attrs.items() if s.format == "gtin"), None))
        mpn, brand, title = pick("mpn", "mpn"), pick("brand", "brand"), pick("title", "title")
        if spec and spec.attributes:
            weights = dict(spec.attributes)
        else:
            weights = {a: DEFAULT_WEIGHTS[role] for role, a in
                       (("gtin", gtin), ("mpn", mpn), ("title", title), ("brand", brand)) if a}
        kinds = {}
        for a in weights:
            s = attrs[a]
            kinds[a] = ("gtin" if a == gtin or s.format == "gtin" else "code" if s.identifier or a == mpn
                        else "number" if s.type == "number" else "text" if s.type in ("text", "image") else "exact")
        return cls(key=catalogue.key, weights=weights, kinds=kinds,
                   threshold=float(spec.threshold) if spec else 80.0, gtin=gtin, mpn=mpn, brand=brand, title=title,
                   importance={a: s.importance for a, s in attrs.items() if a != catalogue.key})


@dataclass(frozen=True)
class KeptValue:
    value: Any
    source: str  # the record the value comes from
    reason: str


@dataclass(frozen=True)
class MergeProposal:
    """Merge `duplicate` into `survivor`: their score, per-field similarity (0-100, None when a side has no value),
    the blocking keys that paired them, and per field the value to keep with its reason."""

    cluster: str  # the survivor's key: every proposal of one cluster shares it
    survivor: str
    duplicate: str
    score: float
    similarity: dict[str, float | None]
    blocked_by: tuple[str, ...]
    keep: dict[str, KeptValue]

    def fills(self) -> dict[str, Any]:
        """The survivor's fields the merge changes (value to keep differs from the survivor's)."""
        return {f: k.value for f, k in self.keep.items() if k.source != self.survivor}


# ---------------------------------------------------------------------------------- normalising
def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""


def _quantity(match: re.Match) -> str:
    unit, factor = _UNITS[match.group(2)]
    number = float(match.group(1).replace(",", ".")) * factor
    return f" {round(number, 3):g}{unit} "


def normalise_text(value: Any) -> str:
    """Lowercase ASCII letters and digits separated by single spaces, quantities in one unit per dimension."""
    if not _present(value):
        return ""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode().lower()
    text = _QUANTITY.sub(_quantity, text)
    return " ".join(_NOT_WORD.sub(" ", text).split())


def normalise_brand(value: Any) -> str:
    return " ".join(_BRAND_SUFFIX.sub(" ", normalise_text(value)).split())


def normalise_gtin(value: Any) -> str:
    if not _present(value):
        return ""
    digits = re.sub(r"\D", "", str(value).split(".")[0] if isinstance(value, float) else str(value))
    return digits.lstrip("0")


def normalise_code(value: Any) -> str:
    return re.sub(r"[^A-Z0-9]", "", str(value).upper()) if _present(value) else ""


def _normalised(frame: pd.DataFrame, config: DedupeConfig) -> dict[str, np.ndarray]:
    """Per compared or blocking attribute, its values as compared (text normalised; numbers as float, NaN missing)."""
    out: dict[str, np.ndarray] = {}
    wanted = dict(config.kinds)
    for role, kind in (("gtin", "gtin"), ("mpn", "code"), ("title", "text"), ("brand", "brand")):
        a = getattr(config, role)
        if a and a not in wanted:
            wanted[a] = kind
    for a, kind in wanted.items():
        column = frame[a] if a in frame.columns else pd.Series([None] * len(frame), dtype=object)
        if kind == "number":
            out[a] = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
            continue
        fn = {"gtin": normalise_gtin, "code": normalise_code, "brand": normalise_brand}.get(kind, normalise_text)
        if a == config.brand:
            fn = normalise_brand
        out[a] = np.array([fn(v) for v in column.tolist()], dtype=object)
        if kind == "text":
            out[f"{a}\0quantities"] = np.array([_quantities(t) for t in out[a]], dtype=object)
    return out


# ---------------------------------------------------------------------------------- blocking
def _pairs_of_groups(keys: pd.Series) -> pd.DataFrame:
    """(i, j), i < j, for every two rows with the same non-empty key (groups over MAX_BLOCK dropped)."""
    frame = pd.DataFrame({"k": keys.to_numpy(), "i": np.arange(len(keys))})
    frame = frame[frame["k"] != ""]
    sizes = frame.groupby("k")["i"].transform("size")
    frame = frame[(sizes > 1) & (sizes <= MAX_BLOCK)]
    if frame.empty:
        return pd.DataFrame({"i": np.zeros(0, int), "j": np.zeros(0, int)})
    merged = frame.merge(frame, on="k", suffixes=("", "_b"))
    merged = merged[merged["i"] < merged["i_b"]]
    return pd.DataFrame({"i": merged["i"].to_numpy(), "j": merged["i_b"].to_numpy()})


def _title_keys(titles: np.ndarray, brands: np.ndarray) -> pd.Series:
    """brand|token|token for two of each title's RARE_TOKENS rarest tokens (one key per pair of them)."""
    tokens = [sorted(set(t.split())) for t in titles]
    counts = pd.Series([tok for ts in tokens for tok in ts], dtype=object).value_counts().to_dict()
    rows, keys = [], []
    for i, (ts, brand) in enumerate(zip(tokens, brands, strict=True)):
        if not ts:
            continue
        rare = sorted(ts, key=lambda t: (counts[t], t))[:RARE_TOKENS]
        for pair in (combinations(sorted(rare), 2) if len(rare) > 1 else [(rare[0],)]):
            rows.append(i)
            keys.append(f"{brand}|{'|'.join(pair)}")
    return pd.Series(keys, index=rows, dtype=object)


_VIA = {"gtin": 1, "mpn": 2, "brand+title": 4, "title": 8}


def candidate_pairs(values: Mapping[str, np.ndarray], config: DedupeConfig, n: int) -> pd.DataFrame:
    """Pairs of row positions (i < j) sharing a blocking key, with the keys that paired them (`via`, e.g.
    `gtin,mpn`)."""
    parts = []
    for role in ("gtin", "mpn"):
        a = getattr(config, role)
        if a:
            pairs = _pairs_of_groups(pd.Series(values[a], dtype=object))
            parts.append(pairs.assign(flag=_VIA[role]))
    if config.title:
        brands = values[config.brand] if config.brand else np.array([""] * n, dtype=object)
        keys = _title_keys(values[config.title], brands)
        if len(keys):
            frame = pd.DataFrame({"k": keys.to_numpy(), "i": keys.index.to_numpy()})
            sizes = frame.groupby("k")["i"].transform("size")
            frame = frame[(sizes > 1) & (sizes <= MAX_BLOCK)]
            merged = frame.merge(frame, on="k", suffixes=("", "_b"))
            merged = merged[merged["i"] < merged["i_b"]]
            parts.append(pd.DataFrame({"i": merged["i"].to_numpy(), "j": merged["i_b"].to_numpy(),
                                       "flag": _VIA["brand+title" if config.brand else "title"]}))
    if not parts:
        return pd.DataFrame({"i": np.zeros(0, int), "j": np.zeros(0, int), "via": np.zeros(0, object)})
    every = pd.concat(parts, ignore_index=True).drop_duplicates()
    # Distinct flags per pair summed = their bitwise or: one vectorised pass instead of a Python call per pair.
    flags = every.groupby(["i", "j"], sort=True)["flag"].sum().reset_index()
    names = {f: ",".join(v for v, bit in _VIA.items() if f & bit) for f in flags["flag"].unique().tolist()}
    return pd.DataFrame({"i": flags["i"].to_numpy(), "j": flags["j"].to_numpy(),
                         "via": flags["flag"].map(names).to_numpy()})


# ---------------------------------------------------------------------------------- scoring
def _quantities(text: str) -> str:
    """The tokens that tell variants of one product apart: quantities, numbers and clothing sizes."""
    return " ".join(sorted(t for t in text.split() if t in _SIZES or _NUMERIC.search(t)))


def score_pairs(values: Mapping[str, np.ndarray], i: np.ndarray, j: np.ndarray,
                config: DedupeConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Score (0-100) of each pair (i[k], j[k]) and per attribute its similarity (0-100, NaN: a side has none)."""
    m = len(i)
    total = np.zeros(m)
    weights = np.zeros(m)
    sims: dict[str, np.ndarray] = {}
    for a, w in config.weights.items():
        kind = config.kinds[a]
        left, right = values[a][i], values[a][j]
        if kind == "number":
            both = ~(np.isnan(left) | np.isnan(right))
            scale = np.maximum(np.abs(left), np.abs(right))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(scale > 0, np.abs(left - right) / scale, 0.0)
            sim = np.clip(1 - (rel - 0.01) / 0.49, 0, 1)
        else:
            both = (left != "") & (right != "")
            if kind == "text":
                sim = np.zeros(m)
                if both.any():
                    lb, rb = left[both].tolist(), right[both].tolist()
                    sort = cpdist(lb, rb, scorer=fuzz.token_sort_ratio, workers=1)
                    token_set = cpdist(lb, rb, scorer=fuzz.token_set_ratio, workers=1)
                    s = np.maximum(sort, 0.9 * token_set) / 100
                    quantities = values.get(f"{a}\0quantities")
                    if quantities is None:
                        quantities = np.array([_quantities(t) for t in values[a]], dtype=object)
                    ql, qr = quantities[i][both], quantities[j][both]
                    s = np.where((ql != "") & (qr != "") & (ql != qr), s * 0.5, s)  # different sizes: siblings
                    sim[both] = s
            else:
                sim = (left == right).astype(float)
        sim = np.where(both, sim, np.nan)
        sims[a] = np.round(sim * 100, 1)
        total += np.where(both, sim * w, 0.0)
        weights += np.where(both, w, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(weights > 0, total / weights * 100, 0.0)
    return np.round(score, 1), sims


# ---------------------------------------------------------------------------------- clusters
def _clusters(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    members = set()
    for a, b in pairs:
        members.update((a, b))
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in sorted(members):
        groups.setdefault(root(x), []).append(x)
    return list(groups.values())


def _completeness(row: Mapping[str, Any], config: DedupeConfig) -> float:
    return sum(config.importance.get(a, 1.0) or 0.01 for a, v in row.items() if a != config.key and _present(v))


def choose_survivor(rows: list[Mapping[str, Any]], config: DedupeConfig) -> int:
    """Index of the record that survives: most complete (importance-weighted), then a valid GTIN, then the first."""
    def rank(k: int):
        row = rows[k]
        gtin = row.get(config.gtin) if config.gtin else None
        valid = bool(_present(gtin) and ean.is_valid(str(gtin)))
        return (-_completeness(row, config), not valid, k)

    return min(range(len(rows)), key=rank)


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plan_fields(survivor: Mapping[str, Any], duplicate: Mapping[str, Any], config: DedupeConfig,
                fields: Iterable[str]) -> dict[str, KeptValue]:
    """Per field, the value the merged record keeps and why."""
    s_key, d_key = str(survivor[config.key]), str(duplicate[config.key])
    keep = {}
    for f in fields:
        if f == config.key:
            continue
        sv, dv = survivor.get(f), duplicate.get(f)
        s_has, d_has = _present(sv), _present(dv)
        if not s_has and not d_has:
            continue
        if s_has and not d_has:
            keep[f] = KeptValue(sv, s_key, f"only {s_key} has a value")
        elif d_has and not s_has:
            keep[f] = KeptValue(dv, d_key, f"filled from {d_key}: {s_key} has none")
        elif sv == dv:
            keep[f] = KeptValue(sv, s_key, "same in both")
        else:
            keep[f] = KeptValue(sv, s_key, f"{s_key} survives (more complete); {d_key} had {_show(dv)!r}")
    return keep


# ---------------------------------------------------------------------------------- the operation
def find_duplicates(frame: pd.DataFrame, config: DedupeConfig, *,
                    exclude: Iterable[tuple[str, str]] = ()) -> list[MergeProposal]:
    """Merge proposals for the records of `frame`. `exclude`: pairs of keys never to propose (in
    either order), e.g. pairs a reviewer rejected; they do not link clusters either."""
    n = len(frame)
    if n < 2:
        return []
    frame = frame.reset_index(drop=True)
    keys = frame[config.key].astype(str).to_numpy()
    values = _normalised(frame, config)
    pairs = candidate_pairs(values, config, n)
    if pairs.empty:
        return []
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    score, sims = score_pairs(values, i, j, config)
    banned = {frozenset(p) for p in exclude}
    above = score >= config.threshold
    if banned:
        above &= np.array([frozenset((keys[a], keys[b])) not in banned for a, b in zip(i, j, strict=True)])
    hits = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(i, j, strict=True)) if above[k]}
    vias = pairs["via"].to_numpy()
    clusters = _clusters(n, hits)
    wanted = sorted({x for members in clusters for x in members})
    records = dict(zip(wanted, frame.iloc[wanted].to_dict("records"), strict=True))
    fields = [c for c in frame.columns if c != config.key]
    proposals = []
    for members in clusters:
        rows = [records[x] for x in members]
        survivor = members[choose_survivor(rows, config)]
        for other in members:
            if other == survivor or frozenset((keys[survivor], keys[other])) in banned:
                continue
            a, b = min(survivor, other), max(survivor, other)
            if (a, b) in hits:
                k = hits[(a, b)]
                s, sim, via = float(score[k]), {f: _num(v[k]) for f, v in sims.items()}, tuple(vias[k].split(","))
            else:  # linked through a third record: proposed only if the pair itself scores high enough
                s1, sim1 = score_pairs(values, np.array([a]), np.array([b]), config)
                s, sim, via = float(s1[0]), {f: _num(v[0]) for f, v in sim1.items()}, ("cluster",)
                if s < config.threshold:
                    continue
            proposals.append(MergeProposal(
                cluster=keys[survivor], survivor=keys[survivor], duplicate=keys[other], score=s, similarity=sim,
                blocked_by=via, keep=plan_fields(records[survivor], records[other], config, fields)))
    return proposals


def compare(survivor: Mapping[str, Any], duplicate: Mapping[str, Any],
            config: DedupeConfig) -> tuple[float, dict[str, float | None]]:
    """Score and per-field similarity of two records (re-scoring a proposal whose records changed)."""
    frame = pd.DataFrame([dict(survivor), dict(duplicate)])
    values = _normalised(frame, config)
    score, sims = score_pairs(values, np.array([0]), np.array([1]), config)
    return float(score[0]), {f: _num(v[0]) for f, v in sims.items()}


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
