"""The side-by-side view of a merge proposal on the review page (both records, per-field similarity, the value a
merge keeps and why). Every value is escaped."""

from __future__ import annotations

import html
from typing import Any


def _e(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return html.escape(f"{value:g}" if isinstance(value, float) else str(value), quote=True)


def load_merges(store, items) -> dict[int, tuple[Any, dict, dict, list[str]]]:
    """For each merge proposal among the review items: (proposal, survivor's values, duplicate's values, fields)."""
    from claro_dagster.catalogue.duplicates import Duplicates

    duplicates = Duplicates(store)
    out = {}
    for item in items:
        if duplicates.is_merge_item(item):
            p = duplicates.get(item.id)
            out[item.id] = (p, store.record(p.catalogue, p.survivor) or {},
                            store.record(p.catalogue, p.duplicate) or {}, list(store.catalogue(p.catalogue).attributes))
    return out


def merge_table(item_id: int, proposal, survivor: dict, duplicate: dict, fields: list[str]) -> str:
    """One table: a row per field with the survivor's value, the duplicate's, their similarity and what is kept."""
    rows = []
    for f in fields:
        sim = proposal.similarity.get(f)
        keep = proposal.keep.get(f, {})
        kept = ' class="new"' if keep and keep.get("source") != proposal.survivor else ""  # a value the merge fills
        rows.append(f'<tr><th scope="row">{_e(f)}</th><td>{_e(survivor.get(f))}</td><td>{_e(duplicate.get(f))}</td>'
                    f"<td>{'' if sim is None else _e(float(sim))}</td>"
                    f'<td{kept}>{_e(keep.get("value")) if keep else ""}'
                    f'<br><span class="small">{_e(keep.get("reason"))}</span></td></tr>')
    caption = (f"Merge proposal {item_id}: {_e(proposal.duplicate)} into {_e(proposal.survivor)}, score "
               f"{_e(float(proposal.score))}, paired by {_e(', '.join(proposal.blocked_by))}")
    return (f'<table class="merge" aria-label="Merge proposal {item_id} side by side"><caption>{caption}</caption>'
            f'<thead><tr><th scope="col">Field</th><th scope="col">{_e(proposal.survivor)} (survivor)</th>'
            f'<th scope="col">{_e(proposal.duplicate)} (duplicate)</th><th scope="col">Similarity</th>'
            f'<th scope="col">Merge keeps</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
