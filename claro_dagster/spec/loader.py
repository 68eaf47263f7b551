"""Load `claro.yaml` into a `ProjectSpec`, with errors that point at a line.

The YAML is read with ruamel's round-trip loader because it remembers the line of every key and
list item. Pydantic errors and cross-reference problems carry a key path; `_line_of` walks that
path through the parsed document to find the line to report.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

from .checks import Loc, cross_check
from .models import ProjectSpec

#: The bundled demo project (spec, supplier files, confirmed mappings), package data: installed with the package.
DEMO_DIR: Path = Path(__file__).resolve().parents[1] / "demo"


@dataclass(frozen=True, order=True)
class SpecProblem:
    file: str
    line: int | None
    path: str  # dotted key path, e.g. catalogues.products.attributes.price.type ("" for the whole file)
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(Exception):
    """The spec is invalid; `str()` gives one `file:line path: message` line per problem."""

    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def default_spec_path() -> Path:
    """$CLARO_SPEC, else ./claro.yaml, else the bundled demo: with no spec of its own, claro runs the demo."""
    if env := os.environ.get("CLARO_SPEC"):
        return Path(env).expanduser()
    if Path("claro.yaml").is_file():
        return Path("claro.yaml")
    return DEMO_DIR / "claro.yaml"


def load_spec(path: str | Path) -> ProjectSpec:
    """Parse and validate a project spec; raise `SpecError` listing every problem found."""
    path = Path(path)
    name = str(path)

    def fail(line: int | None, message: str) -> SpecError:
        return SpecError([SpecProblem(name, line, "", message)])

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(None, f"cannot read the file: {exc}") from None

    try:
        raw = YAML(typ="rt").load(text)
    except DuplicateKeyError as exc:
        first = exc.context_mark.line + 1 if exc.context_mark else None
        key = re.search(r'duplicate key "([^"]*)"', exc.problem or "")
        what = f"duplicate key {key.group(1)!r}" if key else "duplicate key"
        where = f" in the mapping that starts on line {first}" if first else ""
        raise fail(_mark_line(exc), what + where) from None
    except MarkedYAMLError as exc:
        context = f" ({exc.context})" if exc.context else ""
        raise fail(_mark_line(exc), f"YAML syntax error: {exc.problem}{context}") from None

    if raw is None:
        raise fail(1, "the file is empty: a project spec needs at least a 'catalogues:' section")
    if not isinstance(raw, dict):
        raise fail(1, f"the top level must be a mapping of sections ({', '.join(ProjectSpec.model_fields)}), "
                   f"got {_describe(raw)}")

    try:
        spec = ProjectSpec.model_validate(_plain(raw))
    except ValidationError as exc:
        raise SpecError(sorted(_pydantic_problems(exc, raw, name), key=_order)) from None

    spec._spec_path = path.resolve()  # before the checks: paths in the spec are relative to its folder
    problems = [SpecProblem(name, _line_of(raw, loc), _dotted(loc), msg) for loc, msg in cross_check(spec)]
    if problems:
        raise SpecError(sorted(problems, key=_order))
    return spec


def _order(p: SpecProblem) -> tuple[int, str]:
    return (p.line or 0, p.path)


def _mark_line(exc: MarkedYAMLError) -> int | None:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark else None


def _plain(node: Any) -> Any:
    """ruamel's round-trip types (CommentedMap, ScalarFloat, ...) -> plain Python for pydantic."""
    if isinstance(node, dict):
        return {_plain(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    for plain in (int, float, str):
        if isinstance(node, plain):
            return plain(node)
    return node


def _line_of(raw: Any, loc: Loc) -> int:
    """Line (1-based) of the deepest part of `loc` present in the document.

    A key's own line for values and unknown keys; the parent's line for missing keys.
    """
    line, node = 1, raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            line = node.lc.key(part)[0] + 1
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
        else:
            break
        node = node[part]
    return line


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _data_loc(raw: Any, loc: tuple[Any, ...], missing: bool) -> Loc:
    """The part of a pydantic error location that names real keys in the document.

    Pydantic appends union member names ('str', 'int', ...) after the key; those are dropped.
    A missing key is not in the document, so it is kept when it is the last element.
    """
    node, out = raw, []
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            if missing and i == len(loc) - 1:
                out.append(part)
            break
        out.append(part)
    return tuple(out)


def _unwrap(tp: Any) -> Any:
    if get_origin(tp) in (Union, UnionType):
        args = [a for a in get_args(tp) if a is not NoneType]
        if len(args) == 1:
            return args[0]
    return tp


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class whose fields the last element of `loc` belongs to (for allowed-key lists)."""
    tp: Any = ProjectSpec
    for part in loc[:-1]:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _pydantic_problems(exc: ValidationError, raw: Any, file: str) -> list[SpecProblem]:
    # A value that fails every member of a union yields one error per member: group by key path.
    grouped: dict[Loc, list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        loc = _data_loc(raw, err["loc"], missing=err["type"] == "missing")
        grouped.setdefault(loc, []).append(err)
    problems = []
    for loc, errs in grouped.items():
        if len(errs) > 1 and all(e["msg"].startswith("Input should be ") for e in errs):
            # "should be a valid string, a valid number or a valid boolean, got a list"
            wanted = list(dict.fromkeys(e["msg"].removeprefix("Input should be ").split(",")[0]
                                        for e in errs))
            either = ", ".join(wanted[:-1]) + f" or {wanted[-1]}" if len(wanted) > 1 else wanted[0]
            message = f"should be {either}, got {_describe(errs[0]['input'])}"
        else:
            message = "; ".join(dict.fromkeys(_message(loc, e) for e in errs))
        problems.append(SpecProblem(file, _line_of(raw, loc), _dotted(loc), message))
    return problems


def _message(loc: Loc, err: dict[str, Any]) -> str:
    kind, value, key = err["type"], err.get("input"), loc[-1] if loc else ""
    if err["loc"] and err["loc"][-1] == "[key]":
        return f"the name {value!r} must be text: quote it"
    if kind == "extra_forbidden":
        model = _model_at(loc)
        allowed = list(model.model_fields) if model else []
        close = get_close_matches(str(key), allowed, n=1)
        if close:
            return f"unknown key {key!r}, did you mean {close[0]!r}?"
        return f"unknown key {key!r} (allowed keys: {', '.join(allowed)})"
    if kind == "missing":
        if len(loc) == 4 and loc[:2] == ("notifications", "webhooks") and key == "secret_env":
            return (f"webhook {loc[2]!r} has no secret_env: name the environment variable that holds "
                    "its signing secret")
        model = _model_at(loc)
        annotation = model.model_fields[key].annotation if model and key in model.model_fields else None
        allowed = [a for a in get_args(annotation) if isinstance(a, str)]
        return f"required key {key!r} is missing" + (f" (one of {', '.join(allowed)})" if allowed else "")
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        return f"{value!r} is not one of {', '.join(allowed)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping (key: value), got {_describe(value)}"
    if kind == "list_type":
        return f"expected a list, got {_describe(value)}"
    if kind == "value_error":
        return err["msg"].removeprefix("Value error, ")
    msg = err["msg"]
    msg = "should be " + msg.removeprefix("Input should be ") if msg.startswith("Input should be ") else msg
    return f"{msg}, got {_describe(value)}"
