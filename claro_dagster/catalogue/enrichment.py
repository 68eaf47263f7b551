"""Bulk Enrichment against the catalogue store: read what the methods need, run them (operations/enrich.py),
and write the proposals through the one change-set writer with operation `enrich`.

The spec's thresholds for `enrich` gate each value; routing rules assign the held-back ones to reviewers;
provenance keeps the confidence, the citation and (for a model) the model name and prompt hash; rollback of the
run undoes it. Everything is computed before anything is written, and the change sets of one run are written
in one transaction: a model endpoint that fails half-way leaves the catalogue as it was.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from claro_dagster.catalogue.changes import OPEN, Change, ChangeSet, StoreError, coerce_value, gate, is_missing
from claro_dagster.catalogue.common import dumps, values_equal
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.schema import prov_column
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.operations.enrich import (
    OPERATION,
    EnrichResult,
    ModelClient,
    ReferenceTable,
    enrich_records,
    enrichable,
)
from claro_dagster.spec.models import ProjectSpec


@dataclass
class EnrichReport:
    """What one enrichment run proposed and what the gate made of it, per attribute."""

    catalogue: str
    result: EnrichResult
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # attribute -> filled, queued, rejected, ...
    change_sets: list[str] = field(default_factory=list)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for c in self.counts.values():
            for k, v in c.items():
                out[k] += v
        return dict(out)

    def summary(self) -> str:
        t = self.totals()
        verb = "would be " if self.dry_run else ""
        return (f"{self.catalogue}: {t.get('wanted', 0)} missing or weak value(s); {t.get('filled', 0)} {verb}filled, "
                f"{t.get('queued', 0)} {verb}queued for review, {t.get('rejected', 0)} rejected"
                + (" (dry run: nothing written)" if self.dry_run else ""))


def reference_file_path(spec: ProjectSpec, file: str) -> Path:
    path = Path(file)
    return path if path.is_absolute() else spec.base_dir / path


def read_reference_file(path: Path, key_column: str, name: str | None = None) -> ReferenceTable:
    """A CSV reference file keyed by `key_column`, each row with its line number (the citation)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if key_column not in (reader.fieldnames or []):
                raise StoreError(f"{path}: no column {key_column!r} (columns: {', '.join(reader.fieldnames or [])})")
            rows, lines = {}, {}
            for row in reader:
                key = (row.get(key_column) or "").strip()
                if key and key not in rows:
                    rows[key], lines[key] = row, reader.line_num
    except FileNotFoundError:
        raise StoreError(f"reference file {path} does not exist; fix 'file' of the lookup method") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise StoreError(f"reference file {path} cannot be read as UTF-8 CSV: {exc}") from None
    return ReferenceTable(name or str(path), rows, lines)


def load_references(store: CatalogueStore, catalogue: str, attributes: Sequence[str],
                    notes: list[str] | None = None) -> dict[str, ReferenceTable]:
    """Per `"<attribute>:<method index>"`, the table each lookup method reads. A reference file that does not
    exist leaves its lookup out, with a note (in `notes`) saying where it was looked for."""
    spec = store.spec
    cat = store.catalogue(catalogue)
    out: dict[str, ReferenceTable] = {}
    catalogues: dict[str, ReferenceTable] = {}
    for name in attributes:
        for i, method in enumerate(cat.attributes[name].enrich.methods):
            if method.method != "lookup":
                continue
            if method.via:
                target = cat.attributes[method.via].target
                if target not in catalogues:
                    frame = store.records(target)
                    key = spec.catalogues[target].key
                    catalogues[target] = ReferenceTable(f"catalogue {target}", {
                        str(k): r for k, r in zip(frame[key], frame.to_dict("records"), strict=True)})
                out[f"{name}:{i}"] = catalogues[target]
            elif method.file:
                path = reference_file_path(spec, method.file)
                if not path.is_file():
                    if notes is not None:
                        notes.append(f"{name}: the lookup in {method.file} was skipped: no file at {path} (paths "
                                     "are relative to the spec's folder; copy the file beside the spec)")
                    continue
                out[f"{name}:{i}"] = read_reference_file(path, method.key_column or method.key or "",
                                                         name=method.file)
    return out


def weak_values(store: CatalogueStore, catalogue: str, attribute: str, keys: Sequence[str],
                below: float) -> set[str]:
    """Keys among `keys` whose stored value of `attribute` was written with a confidence under `below`."""
    table = store.rec[catalogue]
    key_col = table.c[store.catalogue(catalogue).key]
    prov = store.t["provenance"]
    pid = sa.func.coalesce(table.c[prov_column(attribute)], table.c._created_prov)
    query = (sa.select(key_col).select_from(table.join(prov, prov.c.id == pid))
             .where(table.c[attribute].is_not(None), prov.c.confidence < below))
    wanted = set(keys)
    with store.engine.connect() as conn:
        return {str(k) for k in conn.execute(query).scalars() if str(k) in wanted}


def run_enrichment(store: CatalogueStore, catalogue: str, *, run_id: str, filter: str | None = None,
                   attributes: Sequence[str] | None = None, dry_run: bool = False, model: ModelClient | None = None,
                   on_progress: Callable[[int], None] | None = None) -> EnrichReport:
    """Enrich a catalogue's records (those matching `filter`; the attributes named, else every attribute with
    `enrich` methods) and write the proposals as change sets of `run_id` (nothing with `dry_run`)."""
    cat = store.catalogue(catalogue)
    configured = enrichable(cat)
    if attributes:
        for name in attributes:
            if name not in cat.attributes:
                raise StoreError(f"unknown attribute {name!r} of {catalogue}; attributes are: "
                                 f"{', '.join(cat.attributes)}")
            if name not in configured:
                raise StoreError(f"attribute {name!r} of {catalogue} has no 'enrich' methods in the spec; "
                                 f"attributes with methods: {', '.join(configured) or 'none'}")
        names = list(dict.fromkeys(attributes))
    else:
        names = list(configured)
    report = EnrichReport(catalogue, EnrichResult(), dry_run=dry_run)
    if not names:
        report.notes.append(f"no attribute of {catalogue} has 'enrich' methods in the spec: nothing to do")
        return report
    pool = store.records(catalogue)
    frame = pool if not filter else store.records(catalogue, filter=filter)
    keys = [str(k) for k in frame[cat.key]]
    wanted: dict[str, list[str]] = {}
    for name in names:
        missing = [str(k) for k, v in zip(frame[cat.key], frame[name], strict=True) if is_missing(v)]
        below = cat.attributes[name].enrich.weak_below
        weak = weak_values(store, catalogue, name, keys, below) if below is not None else set()
        wanted[name] = missing + sorted(weak - set(missing))
    reference_keys = {n: [str(k) for k in store.records(a.target, columns=[store.spec.catalogues[a.target].key])
                          [store.spec.catalogues[a.target].key]]
                      for n, a in cat.attributes.items() if n in names and a.type == "reference" and a.target}
    references = load_references(store, catalogue, names, report.notes)
    result = enrich_records(frame, cat, wanted=wanted, references=references,
                            model=model, pool=pool, reference_keys=reference_keys, on_progress=on_progress)
    report.result = result
    for name in sorted(result.skipped_model):
        method = next(m for m in cat.attributes[name].enrich.methods if m.method == "model")
        report.notes.append(f"{name}: the model method was skipped: {method.url_env or 'url_env'} is not set "
                            "(the other methods ran)")
    current = {str(k): r for k, r in zip(frame[cat.key], frame.to_dict("records"), strict=True)}
    counts = {n: {"wanted": len(wanted[n]), "filled": 0, "queued": 0, "rejected": 0, "unchanged": 0,
                  "already_proposed": 0} for n in names}
    # A value already waiting for review, or one a reviewer rejected, is not proposed again by every later run.
    seen = {(i.record, i.field, dumps(i.new)) for i in ReviewQueue(store).list(
        catalogue=catalogue, operation=OPERATION, status=(*OPEN, "rejected")) if i.field in names}
    groups: dict[str | None, list[Change]] = defaultdict(list)
    for p in result.proposals:
        if values_equal(current[p.record].get(p.attribute), p.value):
            counts[p.attribute]["unchanged"] += 1
            continue
        if (p.record, p.attribute, dumps(coerce_value(p.value, cat.attributes[p.attribute], where=p.attribute))) \
                in seen:
            counts[p.attribute]["already_proposed"] += 1
            continue
        outcome = gate(p.confidence, store.writer.thresholds(catalogue, OPERATION, p.attribute, None))
        counts[p.attribute][{"applied": "filled", "queued": "queued", "suggested": "queued",
                             "discarded": "rejected"}[outcome]] += 1
        groups[p.model].append(Change(p.record, p.attribute, p.value, p.confidence, p.reason, citation=p.citation))
    for r in result.rejections:
        counts[r.attribute]["rejected"] += 1
    report.counts = counts
    if dry_run or not groups:
        return report
    change_sets = [ChangeSet(f"enrich:{run_id}:{catalogue}" + (f":model{i}" if label else ""), catalogue, OPERATION,
                             changes=changes, run_id=run_id, model=label)
                   for i, (label, changes) in enumerate(sorted(groups.items(), key=lambda g: g[0] or ""))]
    with store.writer.transaction() as tx:  # one transaction: the run's values are written together or not at all
        for cs in change_sets:
            opened = tx.open(cs)
            if opened is None:
                continue  # this run's enrichment was written before (a retried step)
            opened.write(cs.changes, kind="update")
            opened.finish()
            report.change_sets.append(cs.id)
    return report


def rejected_lines(report: EnrichReport, limit: int = 20) -> list[str]:
    return [f"{r.record} · {r.attribute} ({r.method}): {r.reason}" for r in report.result.rejections[:limit]]


# ---------------------------------------------------------------------------------------------- batch stage
BATCH_COLUMN = "__enrich__"  # per batch row: the JSON list of its proposals, carried from batch_enriched to records


def enrich_batch(store: CatalogueStore, catalogue: str, frame, *, model: ModelClient | None = None):
    """The proposals for one onboarding batch's rows (`batch_enriched`): a row's value is wanted when neither the
    batch nor the stored record has one. Returns (the frame with BATCH_COLUMN, the report). The catalogue is read,
    never written: `records` writes the proposals after it publishes the batch."""
    import json

    import pandas as pd

    cat = store.catalogue(catalogue)
    names = list(enrichable(cat))
    report = EnrichReport(catalogue, EnrichResult(), dry_run=True)
    out = frame.copy()
    out[BATCH_COLUMN] = None
    if not names or not len(frame):
        return out, report
    keys = frame[cat.key].where(frame[cat.key].notna(), frame["__record__"]) if "__record__" in frame.columns \
        else frame[cat.key]
    stored = store.records(catalogue)
    by_key = {str(k): r for k, r in zip(stored[cat.key], stored.to_dict("records"), strict=True)}
    rows = []
    for k, row in zip(keys, frame.to_dict("records"), strict=True):
        if k is None or k != k:
            rows.append(None)
            continue
        merged = dict(by_key.get(str(k), {a: None for a in cat.attributes}))
        merged.update({a: row[a] for a in cat.attributes if a in row and not is_missing(row[a])})
        merged[cat.key] = str(k)
        rows.append(merged)
    effective = pd.DataFrame([r for r in rows if r is not None], columns=list(cat.attributes))
    if not len(effective):
        return out, report
    pool_rows = {**by_key, **{r[cat.key]: r for r in rows if r is not None}}
    pool = pd.DataFrame(list(pool_rows.values()), columns=list(cat.attributes))
    wanted = {n: [r[cat.key] for r in rows if r is not None and is_missing(r.get(n))] for n in names}
    reference_keys = {n: [str(k) for k in store.records(a.target, columns=[store.spec.catalogues[a.target].key])
                          [store.spec.catalogues[a.target].key]]
                      for n, a in cat.attributes.items() if n in names and a.type == "reference" and a.target}
    references = load_references(store, catalogue, names, report.notes)
    result = enrich_records(effective, cat, wanted=wanted, references=references, model=model, pool=pool,
                            reference_keys=reference_keys)
    report.result = result
    per_record: dict[str, list[dict]] = defaultdict(list)
    counts = {n: {"wanted": len(wanted[n]), "filled": 0, "queued": 0, "rejected": 0} for n in names}
    for p in result.proposals:
        outcome = gate(p.confidence, store.writer.thresholds(catalogue, OPERATION, p.attribute, None))
        counts[p.attribute][{"applied": "filled", "queued": "queued", "suggested": "queued",
                             "discarded": "rejected"}[outcome]] += 1
        per_record[p.record].append({"record": p.record, "attribute": p.attribute, "value": p.value,
                                     "confidence": p.confidence,
                                     "reason": p.reason, "citation": p.citation, "model": p.model})
    for r in result.rejections:
        counts[r.attribute]["rejected"] += 1
    report.counts = counts
    out[BATCH_COLUMN] = [json.dumps(per_record[str(k)]) if k is not None and k == k and per_record.get(str(k))
                         else None for k in keys]
    return out, report


def write_batch_enrichment(store: CatalogueStore, catalogue: str, frame, *, run_id: str, batch: str,
                           digest: str) -> dict[str, int]:
    """Write the proposals `batch_enriched` carried (BATCH_COLUMN) as change sets of operation `enrich`, in one
    transaction, after the batch was published; idempotent by batch and content. Counts applied and queued."""
    import json

    counts = {"enriched_applied": 0, "enriched_queued": 0, "enriched_rejected": 0}
    if BATCH_COLUMN not in frame.columns:
        return counts
    groups: dict[str | None, list[Change]] = defaultdict(list)
    for cell in frame[BATCH_COLUMN]:
        if not cell or cell != cell:
            continue
        for p in json.loads(cell):
            record = p.get("record")
            groups[p["model"]].append(Change(record, p["attribute"], p["value"], p["confidence"], p["reason"],
                                             citation=p["citation"]))
    if not groups:
        return counts
    change_sets = [ChangeSet(f"enrich:{batch}:{digest}" + (f":model{i}" if label else ""), catalogue, OPERATION,
                             changes=changes, run_id=run_id, model=label)
                   for i, (label, changes) in enumerate(sorted(groups.items(), key=lambda g: g[0] or ""))]
    with store.writer.transaction() as tx:
        for cs in change_sets:
            opened = tx.open(cs)
            if opened is None:
                continue
            opened.write(cs.changes, kind="update")
            result = opened.finish()
            counts["enriched_applied"] += result.applied
            counts["enriched_queued"] += result.queued + result.suggested
            counts["enriched_rejected"] += result.rejected
    return counts
