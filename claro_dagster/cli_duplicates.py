"""`claro duplicates`: Find Duplicates' merge proposals (list, show side by side, merge, reject, unmerge)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from claro_dagster.cli import ByOption, CatalogueOption, FormatOption, check_format, console, ctx, print_frame, who

duplicates_app = typer.Typer(help="Merge proposals of Find Duplicates (`<catalogue>/dedupe`): list, show, merge, "
                                  "reject, unmerge. Their ids are review item ids.", no_args_is_help=True)


def _duplicates():
    from claro_dagster.catalogue.duplicates import Duplicates

    return Duplicates(ctx.store())


@duplicates_app.command("find")
def find(catalogue: CatalogueOption = None,
         filter: Annotated[str | None, typer.Option("--filter", "-f")] = None) -> None:
    """Look for duplicates now (the same as the dedupe asset) and queue new merge proposals for review."""
    import uuid

    result = _duplicates().find(ctx.catalogue(catalogue), run_id=f"cli-{uuid.uuid4().hex[:12]}", filter=filter)
    console.print(result.summary(), highlight=False)


@duplicates_app.command("list")
def list_(catalogue: CatalogueOption = None,
          status: Annotated[str, typer.Option(help="open (default), merged, rejected, withdrawn, rolled_back, "
                                                   "or all")] = "open",
          format: FormatOption = "table") -> None:
    """Merge proposals: survivor, duplicate, score, status."""
    import pandas as pd

    check_format(format)
    found = _duplicates().list(ctx.catalogue(catalogue) if catalogue else None, None if status == "all" else status)
    columns = ["id", "catalogue", "survivor", "duplicate", "score", "status", "paired_by", "decided_by"]
    print_frame(pd.DataFrame([{"id": p.id, "catalogue": p.catalogue, "survivor": p.survivor, "duplicate": p.duplicate,
                               "score": p.score, "status": p.status, "paired_by": ",".join(p.blocked_by),
                               "decided_by": p.decided_by} for p in found], columns=columns), format)
    if format == "table":
        console.print(f"{len(found)} proposal(s)")


@duplicates_app.command("show")
def show(proposal: int) -> None:
    """Both records side by side, with per-field similarity and the value a merge keeps (and why)."""
    duplicates = _duplicates()
    p = duplicates.get(proposal)
    store = ctx.store()
    survivor, duplicate = store.record(p.catalogue, p.survivor) or {}, store.record(p.catalogue, p.duplicate) or {}
    table = Table(title=f"proposal {p.id} ({p.status}): merge {p.duplicate} into {p.survivor}, score {p.score:g}, "
                        f"paired by {', '.join(p.blocked_by)}")
    for column in ("field", f"{p.survivor} (survivor)", f"{p.duplicate} (duplicate)", "similarity", "keeps",
                   "reason"):
        table.add_column(column, overflow="fold")
    for field in store.catalogue(p.catalogue).attributes:
        sim = p.similarity.get(field)
        keep = p.keep.get(field, {})
        table.add_row(field, _cell(survivor.get(field)), _cell(duplicate.get(field)),
                      "" if sim is None else f"{sim:g}", _cell(keep.get("value")) if keep else "",
                      keep.get("reason", ""))
    console.print(table, highlight=False, markup=False)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


@duplicates_app.command("merge")
def merge(proposal: int, by: ByOption = None, note: str | None = None) -> None:
    """Merge the duplicate into the survivor (through the change-set writer; `claro duplicates unmerge` undoes it)."""
    result = _duplicates().merge(proposal, by=who(by), note=note)
    p = _duplicates().get(proposal)
    console.print(f"merged {p.duplicate} into {p.survivor}: {result.applied} value(s) written (run {p.merge_run})",
                  highlight=False)


@duplicates_app.command("reject")
def reject(proposal: int, by: ByOption = None, note: str | None = None) -> None:
    """Not duplicates: the pair is never proposed again."""
    p = _duplicates().reject(proposal, by=who(by), note=note)
    console.print(f"rejected: {p.survivor} and {p.duplicate} will not be proposed again", highlight=False)


@duplicates_app.command("unmerge")
def unmerge(proposal: int, by: ByOption = None) -> None:
    """Roll back a merge: both records and every repointed reference get their values from before it."""
    result = _duplicates().unmerge(proposal, by=who(by))
    console.print(f"unmerged proposal {proposal}: " + (result.summary() if result else "it had changed no value"),
                  highlight=False)
