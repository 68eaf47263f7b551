"""Saved column mappings: one plain YAML file per (source, column-set shape) that a user can edit.

    <CLARO_HOME>/mappings/<source>/<shape>.yaml

A batch whose columns have a shape already saved reuses that mapping automatically; a new shape
gets a proposed mapping saved as a `draft` for the user to check (`claro mapping edit <source>`)
and mark `confirmed`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from claro_dagster.operations.mapping import (
    ColumnMapping,
    MappingError,
    column_shape_name,
    propose_mapping,
    shape_of,
)
from claro_dagster.spec.models import CatalogueSpec

__all__ = ["MappingBook", "MappingFileError", "STATUSES"]

STATUSES = ("draft", "confirmed")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class MappingFileError(MappingError):
    """A saved mapping file is broken; the message names the file, the line and the column."""


def _check_name(kind: str, value: str) -> str:
    if not _SAFE_NAME.fullmatch(value or "") or ".." in value:
        raise ValueError(f"{kind} {value!r} is not a safe file name (letters, digits, '_', '-', '.')")
    return value


class MappingBook:
    """Mappings per source and column-set shape, as YAML files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, source: str, shape: str) -> Path:
        return self.root / _check_name("source", source) / f"{_check_name('shape', shape)}.yaml"

    # -- reading ---------------------------------------------------------------------------
    def get(self, source: str, shape: str, *, catalogue: CatalogueSpec | None = None,
            columns: Sequence[str] | None = None) -> ColumnMapping | None:
        """The saved mapping, or None. With `catalogue`, attribute names are checked; with `columns`
        (the batch's), the file's columns are matched to them and unknown ones are errors."""
        path = self.path_for(source, shape)
        if not path.exists():
            return None
        return self._load(path, shape, catalogue, columns)

    def _load(self, path: Path, shape: str, catalogue: CatalogueSpec | None,
              columns: Sequence[str] | None) -> ColumnMapping:
        yaml = YAML(typ="rt")
        try:
            data = yaml.load(path.read_text(encoding="utf-8"))
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise MappingFileError(f"{where}: not valid YAML: {exc.problem or exc.context}") from None
        except YAMLError as exc:
            raise MappingFileError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise MappingFileError(f"{path}: expected keys source, shape, columns, status, created")
        status = data.get("status", "draft")
        if status not in STATUSES:
            raise MappingFileError(
                f"{path}:{_line(data, 'status')} status: {status!r} is not one of {', '.join(STATUSES)}")
        cols = data.get("columns")
        if not isinstance(cols, dict):
            raise MappingFileError(
                f"{path}: 'columns' must map each source column to an attribute name or null")
        attributes = list(catalogue.attributes) if catalogue is not None else None
        batch = {column_shape_name(c): c for c in columns} if columns is not None else None
        attribute_for: dict[str, str | None] = {}
        seen: dict[str, str] = {}
        for raw_column, attribute in cols.items():
            column = str(raw_column)
            where = f"{path}:{_line(cols, raw_column)} column {column!r}"
            if attribute is not None and not isinstance(attribute, str):
                raise MappingFileError(f"{where}: expected an attribute name or null, got {attribute!r}"
                                       + (f"; attributes are: {', '.join(attributes)}" if attributes else ""))
            if isinstance(attribute, str):
                attribute = attribute.strip() or None
            if attribute is not None and attributes is not None and attribute not in attributes:
                raise MappingFileError(f"{where}: {attribute!r} is not an attribute of this catalogue; "
                                       f"attributes are: {', '.join(attributes)} (or null to ignore it)")
            if attribute is not None and attribute in seen:
                raise MappingFileError(f"{where}: {attribute!r} is already mapped from column "
                                       f"{seen[attribute]!r}; map one column to it and set the other to null")
            if batch is not None:
                if column_shape_name(column) not in batch:
                    raise MappingFileError(f"{where}: the batch has no such column; its columns are: "
                                           f"{', '.join(repr(c) for c in columns)}")
                column = batch[column_shape_name(column)]
            if attribute is not None:
                seen[attribute] = column
            attribute_for[column] = attribute
        if columns is not None:
            for column in columns:  # a column deleted from the file is ignored, not an error
                if not str(column).startswith("__"):
                    attribute_for.setdefault(column, None)
        raw_scores = data.get("scores") or {}
        scores = {}
        for column in attribute_for:
            try:
                scores[column] = float(raw_scores.get(column, 0.0))
            except (TypeError, ValueError, AttributeError):
                scores[column] = 0.0
        return ColumnMapping(source_columns=tuple(attribute_for), attribute_for=attribute_for,
                             scores=scores, shape=shape, status=status)

    def list(self, source: str | None = None) -> list[tuple[str, str, Path, str]]:
        """(source, shape, path, status) of every saved mapping; status "invalid" for a broken file."""
        if not self.root.exists():
            return []
        folders = [self.root / _check_name("source", source)] if source else sorted(self.root.iterdir())
        out = []
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.yaml")):
                try:
                    status = self._load(path, path.stem, None, None).status
                except MappingError:
                    status = "invalid"
                out.append((folder.name, path.stem, path, status))
        return out

    # -- writing ---------------------------------------------------------------------------
    def save(self, source: str, mapping: ColumnMapping, status: str = "draft", *,
             catalogue: CatalogueSpec | None = None) -> Path:
        """Write (or overwrite) the mapping's file, keeping its original `created` time."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        path = self.path_for(source, mapping.shape)
        created = datetime.now(UTC).replace(microsecond=0).isoformat()
        if path.exists():
            try:
                previous = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
                created = str(previous.get("created") or created)
            except (YAMLError, AttributeError):
                pass
        body = {
            "source": source,
            "shape": mapping.shape,
            "status": status,
            "created": created,
            "columns": {c: mapping.attribute_for.get(c) for c in mapping.source_columns},
            "scores": {c: round(float(mapping.scores.get(c, 0.0)), 1) for c in mapping.source_columns},
        }
        header = [
            f"# Column mapping for source {source!r}, batch shape {mapping.shape}.",
            "# Each source column maps to a catalogue attribute, or null to ignore it.",
            "# Scores (0-100) say how sure the proposal was. Set status: confirmed once checked.",
        ]
        if catalogue is not None:
            header.append(f"# Attributes: {', '.join(catalogue.attributes)}")
        stream = io.StringIO()
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.sort_base_mapping_type_on_output = False
        yaml.allow_unicode = True
        yaml.dump(body, stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text("\n".join(header) + "\n" + stream.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
        mapping.status = status
        return path

    def resolve(self, source: str, columns: Sequence[str],
                catalogue: CatalogueSpec) -> tuple[ColumnMapping, bool]:
        """The saved mapping for this column shape (reused as is), else a proposal saved as a draft.

        Returns (mapping, newly_drafted).
        """
        shape = shape_of(columns)
        saved = self.get(source, shape, catalogue=catalogue, columns=columns)
        if saved is not None:
            return saved, False
        proposal = propose_mapping(columns, catalogue)
        self.save(source, proposal, "draft", catalogue=catalogue)
        return proposal, True


def _line(node: Any, key: Any) -> str:
    """1-based line of `key` in a ruamel round-trip mapping, or '?'."""
    try:
        return str(node.lc.key(key)[0] + 1)
    except (AttributeError, KeyError, TypeError):
        return "?"
