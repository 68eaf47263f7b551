"""The Supplier Portal's core (no HTTP, no Dagster): receive a supplier's upload, show its result at once, hand it
to the pipeline, and keep the supplier's history.

An upload is streamed to `<home>/portal/<source>/incoming/` and refused as soon as it passes the source's
`max_file_mb`; its type is decided by its content (a zip container is a workbook, text without NUL bytes is CSV,
anything else is refused), never by its name. Then, under a per-source lock (so two uploads of one file make one
batch, even from two worker processes):

1. Content already received from this source (same SHA-256) is not a new batch: the supplier is shown that batch.
2. `batch_raw`, `batch_mapped` and `batch_validated` run through `catalogue.intake`, the same functions the
   pipeline's assets call. A column shape without a confirmed mapping stops before mapping: the proposal is shown
   for the supplier to confirm (`confirm_mapping`), and the file waits in `pending/`; a confirmed shape is mapped
   automatically.
3. A batch past its pipeline's error budget is halted here (the file kept under `halted/<batch>/`, its rejected
   rows in the batch registry); an unreadable file is quarantined (`quarantine/<batch>/`). Neither reaches the
   pipeline.
4. A batch within budget is registered under the very batch key the source's inbox sensor will give it
   (`batch_key(source, name, receipt_version(name, size, mtime))`, the file placed in the inbox only after it is
   registered), so the pipeline run the sensor starts is this batch, not a second one: it runs raw -> records (and
   the review checkpoint), and the registry's status it leaves is what the history shows.

What the supplier saw (counts, the rows' errors with their own column names) is kept as
`results/<batch>.json` and `results/<batch>.errors.csv` beside it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from claro_dagster.catalogue.batches import Batch, BatchRegistry, batch_key, receipt_version
from claro_dagster.catalogue.common import now
from claro_dagster.catalogue.intake import map_batch, read_batch, user_columns, validate_mapped, verdict
from claro_dagster.catalogue.mappings import MappingBook
from claro_dagster.operations.mapping import ColumnMapping, MappingError, propose_mapping, shape_of
from claro_dagster.operations.read import SupplierFileError
from claro_dagster.spec.models import AttributeSpec, PipelineSpec, ProjectSpec, SourceSpec

#: Source kinds a supplier may upload to: their files go through the source's inbox.
UPLOAD_KINDS = ("upload", "inbox")
ZIP_MAGIC = b"PK\x03\x04"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
SNIFF_BYTES = 64 * 1024
ERROR_COLUMNS = ["line", "column", "value", "reason"]
#: History labels of the registry's statuses.
LABELS = {"published": "published", "awaiting_review": "awaiting review", "halted": "halted",
          "quarantined": "quarantined", "failed": "failed", "received": "publishing", "validated": "publishing"}
_ID = re.compile(r"[0-9a-f]{16}")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9 _.()+-]+")


class PortalError(Exception):
    """Something the supplier can act on; `message` is safe to show them. `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class UploadTooLarge(PortalError):
    def __init__(self, limit: int):
        super().__init__(f"The file is larger than this portal accepts ({limit / 1024 / 1024:.3g} MB). Split it "
                         "into smaller files, or ask the catalogue team to raise the limit.", 413)


def inbox_dir(spec: ProjectSpec, home: Path, source: str) -> Path:
    """A source's inbox: its `path` relative to the project home (as `CatalogueResource.inbox_dir`)."""
    path = Path(spec.sources[source].path or f"inbox/{source}")
    return path if path.is_absolute() else Path(home) / path


def safe_filename(name: str, kind: str) -> str:
    """The supplier's file name without any folder, odd characters or misleading extension: its extension is the
    type its content showed (`kind`)."""
    base = Path(str(name).replace("\\", "/")).name
    stem = _UNSAFE_NAME.sub("_", Path(base).stem).strip(" ._") or "upload"
    return f"{stem[:120]}.{kind}"


def sniff(head: bytes, nul_bytes: bool = False) -> str:
    """'xlsx' or 'csv' by content (`head`: the first bytes; `nul_bytes`: whether any NUL byte was seen anywhere in
    the file, which no CSV text holds); PortalError for anything else."""
    if head.startswith(ZIP_MAGIC):
        return "xlsx"
    if head.startswith(OLE2_MAGIC):
        raise PortalError("This is an Excel 97-2003 (.xls) or password-protected workbook. Save it as .xlsx "
                          "(Excel Workbook) or CSV UTF-8 without a password, then upload it again.", 415)
    if not head.strip():
        raise PortalError("The file is empty. Export it again and upload it.", 400)
    if nul_bytes or b"\x00" in head or _binary_share(head) > 0.1:
        raise PortalError("This file is neither CSV text nor an Excel workbook (.xlsx): it holds binary data. "
                          "Upload a CSV or XLSX file (the template links above show the columns).", 415)
    return "csv"


def _binary_share(head: bytes) -> float:
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return control / max(len(head), 1)


@dataclass
class Staged:
    path: Path
    filename: str
    kind: str
    size: int
    digest: str


class UploadWriter:
    """An upload streamed to disk chunk by chunk: hashed as it arrives, refused (and deleted) the moment it passes
    `limit` bytes, so an oversized upload is never stored in full."""

    def __init__(self, folder: Path, limit: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.size = 0
        self.head = b""
        self.nul_bytes = False
        self._hash = hashlib.sha256()
        fd, name = _mkstemp(folder)
        self.path = Path(name)
        self._out = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.limit:
            self.abort()
            raise UploadTooLarge(self.limit)
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[:SNIFF_BYTES - len(self.head)]
        self.nul_bytes = self.nul_bytes or b"\x00" in chunk
        self._hash.update(chunk)
        self._out.write(chunk)
        self.size += len(chunk)

    def finish(self, filename: str) -> Staged:
        self._out.close()
        try:
            kind = sniff(self.head, self.nul_bytes)
        except PortalError:
            self.abort()
            raise
        typed = self.path.with_suffix(f".{kind}")  # the reader goes by the extension: now the content's type
        self.path.rename(typed)
        self.path = typed
        return Staged(typed, safe_filename(filename, kind), kind, self.size, self._hash.hexdigest())

    def abort(self) -> None:
        if not self._out.closed:
            self._out.close()
        self.path.unlink(missing_ok=True)


def _mkstemp(folder: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)


@dataclass
class Outcome:
    """What an upload (or a mapping confirmation) came to."""

    kind: str  # accepted | halted | quarantined | duplicate | needs_mapping
    message: str
    key: str | None = None  # the batch
    pending: str | None = None  # the upload waiting for its mapping


@dataclass
class Pending:
    id: str
    filename: str
    uploaded_at: datetime
    columns: list[str]
    mapping: ColumnMapping


@dataclass
class Result:
    """A batch as its supplier sees it: the registry's record, what the portal showed, and its errors."""

    batch: Batch
    label: str
    rows_in: int | None
    rejected: int | None
    error_rate: float | None
    error_budget: float | None
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ERROR_COLUMNS))

    @property
    def accepted(self) -> int | None:
        return None if self.rows_in is None or self.rejected is None else self.rows_in - self.rejected


class Portal:
    """One project's Supplier Portal: `store` is an open CatalogueStore, `home` the project home."""

    def __init__(self, spec: ProjectSpec, store: Any, home: str | Path, *, clock: Callable[[], datetime] = now):
        self.spec = spec
        self.store = store
        self.home = Path(home)
        self.clock = clock
        self.registry = BatchRegistry(store)
        self.book = MappingBook(self.home / "mappings")

    # ------------------------------------------------------------------ the source and its settings
    def source(self, name: str) -> SourceSpec:
        source = self.spec.sources.get(name)
        if source is None:
            raise PortalError(f"Source {name!r} is no longer in this project. Ask the catalogue team.", 403)
        if source.kind not in UPLOAD_KINDS:
            raise PortalError(f"Source {name!r} receives its files another way ({source.kind}), not through the "
                              "portal. Ask the catalogue team.", 403)
        return source

    def pipeline(self, name: str) -> PipelineSpec:
        for pipe in self.spec.pipelines.values():
            if name in pipe.sources:
                return pipe
        raise PortalError(f"Source {name!r} is in no pipeline, so nothing would publish your file. Ask the "
                          "catalogue team to add it to one.", 409)

    def max_bytes(self, name: str) -> int:
        return int(self.source(name).max_file_mb * 1024 * 1024)

    def folder(self, name: str) -> Path:
        self.source(name)
        return self.home / "portal" / name

    def incoming(self, name: str) -> Path:
        """Where uploads of source `name` are streamed to (refused when nothing would publish them)."""
        self.pipeline(name)
        return self.folder(name) / "incoming"

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ receiving
    def submit(self, name: str, staged: Staged) -> Outcome:
        """Take an uploaded file of source `name` as far as it goes now (see the module docstring)."""
        try:
            with self._locked(name):
                return self._submit(name, staged)
        finally:
            staged.path.unlink(missing_ok=True)

    def _submit(self, name: str, staged: Staged) -> Outcome:
        source = self.source(name)
        seen = self.received(name, staged.digest)
        if seen is not None:
            return Outcome("duplicate", f"This file was uploaded before, as {seen.filename} on "
                                        f"{seen.received_at:%Y-%m-%d %H:%M} UTC ({LABELS.get(seen.status, seen.status)}"
                                        "). It is the same batch: nothing new was received.", key=seen.key)
        for waiting in self.pending(name):
            if waiting.id == staged.digest[:16]:
                return Outcome("needs_mapping", "This file was uploaded before and waits for you to confirm its "
                                                "columns.", pending=waiting.id)
        cat = self.store.catalogue(source.catalogue)
        try:
            raw = read_batch(staged.path, source, cat).frame
        except SupplierFileError as exc:
            return self._quarantine(name, staged, f"The file cannot be read: {exc}", stage="batch_raw")
        columns = user_columns(raw)
        mapping = self._confirmed(name, columns)
        if mapping is None:
            pending_id = staged.digest[:16]
            folder = self.folder(name) / "pending" / pending_id
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staged.path, folder / staged.filename)
            (folder / "upload.json").write_text(json.dumps({
                "filename": staged.filename, "digest": staged.digest, "uploaded_at": self.clock().isoformat()}))
            return Outcome("needs_mapping", "These columns are new: check which catalogue field each one holds, then "
                                            "confirm.", pending=pending_id)
        return self._evaluate(name, source, staged, raw, mapping)

    def received(self, name: str, digest: str) -> Batch | None:
        """The batch of this source that holds exactly this content, if any."""
        t = self.registry.t
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.source == name, t.c.content_version == digest)
                               .order_by(t.c.received_at).limit(1)).first()
        return None if row is None else self.registry._batch(row)

    def _confirmed(self, name: str, columns: list[str]) -> ColumnMapping | None:
        try:
            saved = self.book.get(name, shape_of(columns), catalogue=self.store.catalogue(self.source(name).catalogue),
                                  columns=columns)
        except MappingError:
            return None  # a broken saved mapping: the supplier confirms a fresh proposal
        return saved if saved is not None and saved.status == "confirmed" else None

    def _evaluate(self, name: str, source: SourceSpec, staged: Staged, raw: pd.DataFrame,
                  mapping: ColumnMapping) -> Outcome:
        catalogue = source.catalogue
        try:
            mapped = map_batch(raw, mapping, self.store, catalogue, name, source)
        except ValueError as exc:
            return self._quarantine(name, staged, f"The columns cannot be mapped: {exc}", stage="batch_mapped")
        result = validate_mapped(mapped, self.store, catalogue, source)
        judged = verdict(result, len(result.rejected), self.pipeline(name).error_budget)
        column_of = mapping.column_for()
        errors = pd.DataFrame({
            "line": result.errors["line"], "column": result.errors["attribute"].map(lambda a: column_of.get(a, a)),
            "value": result.errors["value"], "reason": result.errors["reason"]}, columns=ERROR_COLUMNS)
        summary = {"rows_in": judged.rows_in, "rejected": judged.rejected, "error_rate": judged.error_rate,
                   "error_budget": judged.error_budget, "mapping": mapping.attribute_for}
        if not judged.passed:
            key = batch_key(name, staged.filename, staged.digest)
            kept = self._keep(name, "halted", key, staged)
            self.registry.register(key, catalogue=catalogue, source=name, filename=staged.filename, uri=str(kept),
                                   content_version=staged.digest)
            self.registry.save_rejected(key, result.rejected)
            self._save_result(name, key, summary, errors)
            message = (f"Halted: {judged.text}. Nothing was published. Fix the rows listed below and upload the "
                       "whole file again.")
            self.registry.set_status(key, "halted", stage="batch_validated", message=message)
            return Outcome("halted", message, key=key)
        key = self._hand_over(name, catalogue, staged, result.rejected, summary, errors, judged.text)
        return Outcome("accepted", f"Accepted: {judged.text}. The batch is on its way to publishing.", key=key)

    def _hand_over(self, name: str, catalogue: str, staged: Staged, rejected: pd.DataFrame, summary: dict,
                   errors: pd.DataFrame, verdict_text: str) -> str:
        """Place the file in the source's inbox under the batch key its sensor will give it, registered first."""
        inbox = inbox_dir(self.spec, self.home, name)
        inbox.mkdir(parents=True, exist_ok=True)
        part = inbox / f".portal-{secrets.token_hex(8)}.part"  # dot-file and .part: the sensor never lists it
        try:
            try:
                os.link(staged.path, part)
            except OSError:
                shutil.copyfile(staged.path, part)
            stat = part.stat()
            stem, suffix = os.path.splitext(staged.filename)
            n = 1
            while True:
                final = inbox / (staged.filename if n == 1 else f"{stem}~{n}{suffix}")
                n += 1
                if final.exists():
                    continue
                key = batch_key(name, final.name, receipt_version(final.name, stat.st_size, stat.st_mtime_ns))
                if self.registry.get(key) is not None:
                    continue
                self.registry.register(key, catalogue=catalogue, source=name, filename=final.name,
                                       uri=str(final.resolve()), content_version=staged.digest)
                self.registry.save_rejected(key, rejected)
                self._save_result(name, key, summary, errors)
                # all said before the sensor can see the file: from then on, only the pipeline writes the status
                self.registry.set_status(key, "received", message=f"checked on upload: {verdict_text}; "
                                                                  "waiting for the pipeline to publish it")
                try:
                    os.link(part, final)  # never overwrites: a file of that name arrived meanwhile -> next name
                except FileExistsError:
                    self.registry.save_rejected(key, rejected.iloc[0:0])
                    self.registry.forget_receipt(key)
                    continue
                return key
        finally:
            part.unlink(missing_ok=True)

    def _keep(self, name: str, area: str, key: str, staged: Staged) -> Path:
        folder = self.folder(name) / area / key
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / staged.filename
        shutil.copyfile(staged.path, target)
        return target

    def _quarantine(self, name: str, staged: Staged, reason: str, *, stage: str) -> Outcome:
        key = batch_key(name, staged.filename, staged.digest)
        kept = self._keep(name, "quarantine", key, staged)
        self.registry.register(key, catalogue=self.source(name).catalogue, source=name, filename=staged.filename,
                               uri=str(kept), content_version=staged.digest)
        self.registry.set_status(key, "quarantined", stage=stage, message=reason)
        self._save_result(name, key, {}, pd.DataFrame(columns=ERROR_COLUMNS))
        return Outcome("quarantined", f"Quarantined: {reason}", key=key)

    def _save_result(self, name: str, key: str, summary: dict, errors: pd.DataFrame) -> None:
        folder = self.folder(name) / "results"
        folder.mkdir(parents=True, exist_ok=True)
        errors.to_csv(folder / f"{key}.errors.csv", index=False)
        (folder / f"{key}.json").write_text(json.dumps(summary, default=str))

    # ------------------------------------------------------------------ new column shapes
    def pending(self, name: str) -> list[Pending]:
        """Uploads waiting for their supplier to confirm the column mapping, oldest first."""
        root = self.folder(name) / "pending"
        found = []
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            try:
                found.append(self.get_pending(name, folder.name))
            except PortalError:
                continue
        return sorted(found, key=lambda p: p.uploaded_at)

    def get_pending(self, name: str, pending_id: str) -> Pending:
        if not _ID.fullmatch(pending_id or ""):
            raise PortalError("No such upload.", 404)
        folder = self.folder(name) / "pending" / pending_id
        try:
            meta = json.loads((folder / "upload.json").read_text())
        except (OSError, ValueError):
            raise PortalError("No such upload waits for its columns to be confirmed.", 404) from None
        source = self.source(name)
        cat = self.store.catalogue(source.catalogue)
        try:
            columns = user_columns(read_batch(folder / meta["filename"], source, cat).frame)
        except SupplierFileError as exc:
            raise PortalError(f"The file cannot be read: {exc}") from None
        try:
            saved = self.book.get(name, shape_of(columns), catalogue=cat, columns=columns)
        except MappingError:
            saved = None
        mapping = saved or propose_mapping(columns, cat)
        return Pending(pending_id, meta["filename"], datetime.fromisoformat(meta["uploaded_at"]), columns, mapping)

    def confirm_mapping(self, name: str, pending_id: str, choices: dict[str, str | None]) -> Outcome:
        """Save the supplier's mapping of a new shape as confirmed, then check the file waiting for it."""
        with self._locked(name):
            waiting = self.get_pending(name, pending_id)
            source = self.source(name)
            cat = self.store.catalogue(source.catalogue)
            attribute_for: dict[str, str | None] = {}
            used: dict[str, str] = {}
            for column in waiting.columns:
                chosen = (choices.get(column) or "").strip() or None
                if chosen is not None and chosen not in cat.attributes:
                    raise PortalError(f"{chosen!r} is not a field of the catalogue; choose one from the list.")
                if chosen is not None and chosen in used:
                    raise PortalError(f"Columns {used[chosen]!r} and {column!r} both hold {chosen!r}: choose one and "
                                      "set the other to “ignore”.")
                if chosen is not None:
                    used[chosen] = column
                attribute_for[column] = chosen
            missing = [n for n, a in cat.attributes.items() if a.required and a.default is None and n not in used]
            if missing:
                raise PortalError(f"Required field(s) {', '.join(missing)} have no column: choose the column that "
                                  "holds each one.")
            mapping = ColumnMapping(tuple(waiting.columns), attribute_for,
                                    {c: (100.0 if a else 0.0) for c, a in attribute_for.items()},
                                    shape_of(waiting.columns))
            self.book.save(name, mapping, "confirmed", catalogue=cat)
            folder = self.folder(name) / "pending" / pending_id
            path = folder / waiting.filename
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            work = self.folder(name) / "incoming" / f".confirmed-{pending_id}{Path(waiting.filename).suffix}"
            work.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, work)
            staged = Staged(work, waiting.filename, Path(waiting.filename).suffix.lstrip("."), path.stat().st_size,
                            digest)
            try:
                raw = read_batch(work, source, cat).frame
                outcome = self._evaluate(name, source, staged, raw, mapping)
            except SupplierFileError as exc:
                outcome = self._quarantine(name, staged, f"The file cannot be read: {exc}", stage="batch_raw")
            finally:
                work.unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            return outcome

    # ------------------------------------------------------------------ history and results
    def history(self, name: str) -> list[Result]:
        """The source's batches, newest first."""
        batches = [b for b in self.registry.list(self.source(name).catalogue) if b.source == name]
        return [self._result(name, b, with_errors=False) for b in reversed(batches)]

    def result(self, name: str, key: str) -> Result:
        batch = self.registry.get(key) if re.fullmatch(r"[A-Za-z0-9_.-]{1,240}", key or "") else None
        if batch is None or batch.source != name:  # another supplier's batch does not exist for this one
            raise PortalError("No such batch among your uploads.", 404)
        return self._result(name, batch, with_errors=True)

    def _result(self, name: str, batch: Batch, *, with_errors: bool) -> Result:
        folder = self.folder(name) / "results"
        try:
            summary = json.loads((folder / f"{batch.key}.json").read_text())
        except (OSError, ValueError):
            summary = {}
        errors = pd.DataFrame(columns=ERROR_COLUMNS)
        if with_errors:
            path = folder / f"{batch.key}.errors.csv"
            if path.exists():
                errors = pd.read_csv(path, dtype={"column": str, "value": str, "reason": str},
                                     keep_default_na=False)
            else:  # a batch that came another way: its rejected rows with their reasons
                rows = self.registry.rejected_rows(batch.key)
                if len(rows):
                    errors = pd.DataFrame({"line": rows["line"], "column": "", "value": "", "reason": rows["reasons"]},
                                          columns=ERROR_COLUMNS)
        rejected = summary.get("rejected")
        if rejected is None and batch.status in ("halted", "published", "awaiting_review", "validated"):
            rejected = len(self.registry.rejected_rows(batch.key))
        return Result(batch, LABELS.get(batch.status, batch.status), summary.get("rows_in"), rejected,
                      summary.get("error_rate"), summary.get("error_budget"), errors)

    def rejected_rows(self, name: str, key: str) -> pd.DataFrame:
        """The batch's rejected rows as the supplier sent them, with their line and reasons."""
        self.result(name, key)
        return self.registry.rejected_rows(key)

    # ------------------------------------------------------------------ templates
    def template_columns(self, name: str) -> list[tuple[str, str, AttributeSpec]]:
        """(header, attribute, spec) of the template's columns: every attribute, required ones marked."""
        cat = self.store.catalogue(self.source(name).catalogue)
        return [(f"{n} (required)" if a.required else n, n, a) for n, a in cat.attributes.items()]

    def _remember_template_shape(self, name: str) -> None:
        """The template's own shape is mapped already: a file built on it is mapped automatically."""
        columns = self.template_columns(name)
        headers = [h for h, _, _ in columns]
        shape = shape_of(headers)
        if self.book.get(name, shape) is None:
            mapping = ColumnMapping(tuple(headers), {h: n for h, n, _ in columns}, dict.fromkeys(headers, 100.0),
                                    shape)
            self.book.save(name, mapping, "confirmed", catalogue=self.store.catalogue(self.source(name).catalogue))

    def example_row(self, name: str) -> dict[str, str]:
        source = self.source(name)
        return {h: example_value(n, a, self.spec, source, self.store) for h, n, a in self.template_columns(name)}

    def template_csv(self, name: str) -> bytes:
        self._remember_template_shape(name)
        frame = pd.DataFrame([self.example_row(name)])
        return ("\ufeff" + frame.to_csv(index=False, lineterminator="\r\n")).encode("utf-8")  # BOM: Excel reads UTF-8

    def template_xlsx(self, name: str) -> bytes:
        from openpyxl import Workbook
        from openpyxl.comments import Comment
        from openpyxl.styles import Font, PatternFill
        from openpyxl.utils import get_column_letter, quote_sheetname
        from openpyxl.worksheet.datavalidation import DataValidation

        self._remember_template_shape(name)
        source = self.source(name)
        columns = self.template_columns(name)
        example = self.example_row(name)
        book = Workbook()
        sheet = book.active
        sheet.title = source.sheet if isinstance(source.sheet, str) and source.sheet else "Products"
        lists = None
        for i, (header, attribute, attr) in enumerate(columns, start=1):
            letter = get_column_letter(i)
            cell = sheet.cell(row=1, column=i, value=header)
            cell.font = Font(bold=True, color="FFFFFF" if attr.required else "000000")
            cell.fill = PatternFill("solid", fgColor="1F4E8C" if attr.required else "E8E8E8")
            cell.comment = Comment(_rule_text(attribute, attr), "claro")
            sheet.cell(row=2, column=i, value=example[header] or None)
            sheet.column_dimensions[letter].width = max(12, min(40, len(header) + 4))
            if attr.type == "enum" and attr.values:
                inline = '"' + ",".join(attr.values) + '"'
                if len(inline) <= 255 and not any("," in v or '"' in v for v in attr.values):
                    formula = inline
                else:  # Excel caps an inline list at 255 characters: the values go on a hidden sheet
                    if lists is None:
                        lists = book.create_sheet("Lists")
                        lists.sheet_state = "hidden"
                    col = lists.max_column + (1 if lists.max_row > 1 or lists["A1"].value else 0)
                    for r, value in enumerate(attr.values, start=1):
                        lists.cell(row=r, column=col, value=value)
                    ref = get_column_letter(col)
                    formula = f"{quote_sheetname('Lists')}!${ref}$1:${ref}${len(attr.values)}"
                check = DataValidation(type="list", formula1=formula, allow_blank=not attr.required,
                                       showErrorMessage=True, errorTitle=f"{attribute}: not an allowed value",
                                       error=f"Choose one of: {', '.join(attr.values)}"[:255])
                check.add(f"{letter}2:{letter}10001")
                sheet.add_data_validation(check)
        sheet.freeze_panes = "A2"
        about = book.create_sheet("About")
        about.append(["column", "required", "rules"])
        for header, attribute, attr in columns:
            about.append([header, "yes" if attr.required else "no", _rule_text(attribute, attr)])
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()


def _rule_text(name: str, attr: AttributeSpec) -> str:
    parts = [attr.description or name, f"type {attr.type}"]
    if attr.required:
        parts.append("required")
    if attr.unit:
        parts.append(f"in {attr.unit} (other units are converted)")
    if attr.values:
        parts.append("one of: " + ", ".join(attr.values))
    if attr.min is not None:
        parts.append(f"at least {attr.min:g}")
    if attr.max is not None:
        parts.append(f"at most {attr.max:g}")
    if attr.max_length:
        parts.append(f"at most {attr.max_length} characters")
    if attr.format:
        parts.append(f"a valid {attr.format.upper() if attr.format == 'gtin' else attr.format}")
    if attr.regex:
        parts.append(f"matching {attr.regex}")
    if attr.type == "reference" and attr.target:
        parts.append(f"a key of {attr.target}")
    return "; ".join(parts)


def example_value(name: str, attr: AttributeSpec, spec: ProjectSpec, source: SourceSpec, store: Any) -> str:
    """A value that passes the attribute's rules, for the template's example row ('' when none is known)."""
    if attr.type == "reference":
        if name == source.supplier_attribute and source.supplier:
            return source.supplier
        if attr.target and attr.target in spec.catalogues:
            keys = store.records(attr.target, columns=[spec.catalogues[attr.target].key], limit=1)
            return str(keys.iloc[0, 0]) if len(keys) else ""
        return ""
    if attr.type == "enum":
        return (attr.values or [""])[0]
    if attr.type == "number":
        low = attr.min if attr.min is not None else 0
        value = low + 1 if attr.max is None or low + 1 <= attr.max else low
        return f"{value:g}"
    if attr.type == "date":
        return date(2026, 1, 15).isoformat()
    if attr.format == "gtin":
        return "4006381333931"
    if attr.format == "email":
        return "orders@example.com"
    if attr.type == "image" or attr.format == "url":
        return "https://example.com/images/product.jpg"
    if attr.regex:
        return _matching(attr.regex) or ""
    text = f"Example {name.replace('_', ' ')}"
    return text[:attr.max_length] if attr.max_length else text


def _matching(pattern: str) -> str | None:
    """The smallest string a simple regular expression matches (literals, classes, repeats, groups), or None."""
    try:
        from re import _parser as parser  # type: ignore[attr-defined]

        text = _generate(parser.parse(pattern))
    except Exception:  # an expression this small generator does not cover: no example
        return None
    return text if re.fullmatch(pattern, text) else None


def _generate(items) -> str:
    from re import _constants as c  # type: ignore[attr-defined]

    out = []
    for op, arg in items:
        if op is c.LITERAL:
            out.append(chr(arg))
        elif op is c.IN:
            out.append(_from_class(arg, c))
        elif op is c.ANY:
            out.append("x")
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            low, _high, sub = arg  # the fewest repeats allowed
            out.append(_generate(sub) * low)
        elif op is c.SUBPATTERN:
            out.append(_generate(arg[-1]))
        elif op is c.BRANCH:
            out.append(_generate(arg[1][0]))
        elif op is c.AT:
            continue
        elif op is c.CATEGORY:
            out.append(_from_category(arg, c))
        else:
            raise ValueError(op)
    return "".join(out)


def _from_class(items, c) -> str:
    for op, arg in items:
        if op is c.RANGE:
            return chr(arg[0])
        if op is c.LITERAL:
            return chr(arg)
        if op is c.CATEGORY:
            return _from_category(arg, c)
        if op is c.NEGATE:
            raise ValueError("negated class")
    raise ValueError("empty class")


def _from_category(arg, c) -> str:
    return {c.CATEGORY_DIGIT: "1", c.CATEGORY_WORD: "a", c.CATEGORY_SPACE: " "}.get(arg) or "x"
