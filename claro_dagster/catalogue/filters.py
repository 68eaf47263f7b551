"""Record filters: a small expression language compiled to parameterised SQLAlchemy Core.

    brand == "Acme" and price > 100
    status in ["active", "draft"] and not (title contains "sample")
    gtin is null or launch_date >= "2025-01-01"

Every literal becomes a bound parameter and every field is looked up in the store's columns, so no
text of a filter ever reaches the SQL string. A filter is true or false for every record: a null
field makes a comparison false, and `!=`, `not in` and `not` are exact complements that do match
nulls (`brand != "Acme"` selects records without a brand), unlike SQL's three-valued logic.

A filter selects the same records on SQLite and on PostgreSQL (the README's "Record filters" says so
to users):
- `contains` / `startswith` ignore case, by Unicode lower-casing both sides (Python's `str.lower`,
  registered as a function on every SQLite connection; `lower()` under the ICU root locale on
  PostgreSQL: the two agree, unlike PostgreSQL's libc `lower()` or SQLite's ASCII-only LIKE), and
  match `%`, `_` and `/` literally.
- `==`, `!=` and `in` on text are exact; `<`, `<=`, `>`, `>=` on text compare code points (bytes of
  UTF-8: SQLite's BINARY, PostgreSQL's "C" collation), whatever the database's collation.
- Numbers are compared as the 64-bit floats the store keeps (integers as integers).
- A literal whose type is not the attribute's (`gtin == 0123`, `price > "100"`, `price contains "5"`)
  is refused when the filter is compiled, with the attribute, its type and the position. Coercing
  would guess: `gtin == 0123` would look for 123 and miss "0123", `"9" > "10"` as text.
"""

from __future__ import annotations

import difflib
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["FilterError", "Node", "compile_filter", "filter_fields", "parse_filter"]

Value = str | int | Decimal | bool


class FilterError(ValueError):
    """A filter that cannot be compiled. .text (the filter), .position (0-based char offset), .message."""

    def __init__(self, text: str, position: int, message: str) -> None:
        super().__init__(text, position, message)
        self.text, self.position, self.message = text, position, message

    def __str__(self) -> str:
        start = self.text.rfind("\n", 0, self.position) + 1
        end = self.text.find("\n", self.position)
        line = self.text[start : len(self.text) if end == -1 else end].replace("\t", " ")
        caret = " " * (self.position - start) + "^"
        return f"filter error at position {self.position}: {self.message}\n  {line}\n  {caret}"


@dataclass(frozen=True)
class Field:
    name: str
    position: int = field(compare=False)  # two filters that differ only in spacing are equal


class Written(NamedTuple):
    """Where and how a literal or operator was written: for errors that quote it back."""

    position: int
    text: str


_NOWHERE = Written(0, "")


@dataclass(frozen=True)
class Compare:  # field == != < <= > >= value
    field: Field
    op: str
    value: Value
    written: Written = field(default=_NOWHERE, compare=False)


@dataclass(frozen=True)
class In:
    field: Field
    values: tuple[Value, ...]
    negated: bool = False
    written: tuple[Written, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Match:  # contains / startswith
    field: Field
    op: str
    value: str
    written: Written = field(default=_NOWHERE, compare=False)  # the operator


@dataclass(frozen=True)
class IsNull:
    field: Field
    negated: bool = False


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Compare | In | Match | IsNull | And | Or | Not

_KEYWORDS = {"and", "or", "not", "in", "contains", "startswith", "is", "null", "true", "false"}
_COMPARISONS = {"==": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__"}
_HINTS = {"=": "write '==' to compare", "&": "write 'and'", "|": "write 'or'", "!": "write 'not' or '!='"}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_TOKEN = re.compile(
    r"(?P<space>\s+)|(?P<number>-?[0-9]+(?:\.[0-9]+)?)(?![A-Za-z0-9_.])|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>==|!=|<=|>=|<|>)|(?P<punct>[()\[\],])",
    re.ASCII,
)
_MAX_DEPTH = 100  # deeper nesting is a mistake, and would otherwise surface as a RecursionError
_INT_RANGE = range(-(2**63), 2**63)  # what SQLite and PostgreSQL bigint can bind


class _Token(NamedTuple):
    kind: str  # word, string, number, op, punct, end
    text: str
    value: object
    pos: int


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of filter"
    text = tok.text if len(tok.text) <= 30 else tok.text[:27] + "..."
    if tok.kind == "word" and tok.text.lower() in _KEYWORDS:
        return f"keyword '{text}'"
    return f"string {text}" if tok.kind == "string" else f"'{text}'"


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        ch = text[pos]
        if ch in "\"'":
            pos = _read_string(text, pos, tokens)
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            bad = re.match(r"-?[0-9][A-Za-z0-9_.]*", text[pos:])
            if bad:
                raise FilterError(text, pos, f"malformed number '{bad.group()}'")
            hint = f"; {_HINTS[ch]}" if ch in _HINTS else ""
            raise FilterError(text, pos, f"unexpected character {ch!r}{hint}")
        kind, word = m.lastgroup or "", m.group()
        if kind == "number":
            whole = word.lstrip("-").split(".")[0]
            if len(whole) > 19 or ("." not in word and int(word) not in _INT_RANGE):
                raise FilterError(text, pos, f"number {word} is too large")
            value: object = Decimal(word) if "." in word else int(word)
            tokens.append(_Token(kind, word, value, pos))
        elif kind != "space":
            tokens.append(_Token(kind, word, None, pos))
        pos = m.end()
    tokens.append(_Token("end", "", None, len(text)))
    return tokens


def _read_string(text: str, start: int, tokens: list[_Token]) -> int:
    quote, pos, chars = text[start], start + 1, []
    while pos < len(text) and text[pos] != quote:
        ch = text[pos]
        if ch == "\\":
            if pos + 1 >= len(text):
                break
            if text[pos + 1] not in _ESCAPES:
                message = f"unknown escape '\\{text[pos + 1]}'; write '\\\\' for a backslash"
                raise FilterError(text, pos, message)
            ch, pos = _ESCAPES[text[pos + 1]], pos + 1
        elif ch == "\0" or "\ud800" <= ch <= "\udfff":
            raise FilterError(text, pos, f"strings cannot hold the character {ch!r}")
        chars.append(ch)
        pos += 1
    if pos >= len(text):
        raise FilterError(text, start, f"string starting here has no closing {quote}")
    tokens.append(_Token("string", text[start : pos + 1], "".join(chars), start))
    return pos + 1


class _Parser:
    # Hand-written recursive descent rather than a grammar library: the language has a dozen
    # tokens, errors must point at an exact character, and the core takes no extra dependency.
    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i, self.depth = text, _tokenize(text), 0, 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok.kind == "word" and tok.text.lower() == word:
            self.advance()
            return True
        return False

    def fail(self, expected: str, tok: _Token | None = None) -> FilterError:
        tok = tok or self.peek()
        return FilterError(self.text, tok.pos, f"expected {expected} but found {_describe(tok)}")

    def parse(self) -> Node:
        if not self.text.strip():
            raise FilterError(self.text, 0, "empty filter")
        node = self.or_()
        tok = self.peek()
        if tok.text == ")":
            raise FilterError(self.text, tok.pos, "')' has no matching '('")
        if tok.kind != "end":
            raise self.fail("'and', 'or' or the end of the filter")
        return node

    def or_(self) -> Node:
        operands = [self.and_()]
        while self.keyword("or"):
            operands.append(self.and_())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_(self) -> Node:
        operands = [self.not_()]
        while self.keyword("and"):
            operands.append(self.not_())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_(self) -> Node:
        tok = self.peek()
        if not self.keyword("not"):
            return self.primary()
        self.nest(tok)
        node = Not(self.not_())
        self.depth -= 1
        return node

    def nest(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise FilterError(self.text, tok.pos, f"filter nests deeper than {_MAX_DEPTH} levels")

    def primary(self) -> Node:
        tok = self.advance()
        if tok.text == "(" and tok.kind == "punct":
            self.nest(tok)
            node = self.or_()
            if self.peek().text != ")":
                raise self.fail(f"')' to close the '(' at position {tok.pos}")
            self.advance()
            self.depth -= 1
            return node
        if tok.kind == "word" and tok.text.lower() not in _KEYWORDS:
            return self.condition(Field(tok.text, tok.pos))
        raise self.fail("a field name", tok)

    def condition(self, field: Field) -> Node:
        tok = self.advance()
        if tok.kind == "op":
            value_tok, value = self.value(f"after '{tok.text}'")
            if value is None:
                fix = "is null" if tok.text == "==" else "is not null" if tok.text == "!=" else None
                why = f"write '{field.name} {fix}'" if fix else "nothing is ordered against null"
                raise FilterError(self.text, value_tok.pos, f"cannot compare with null: {why}")
            return Compare(field, tok.text, value, Written(value_tok.pos, value_tok.text))
        word = tok.text.lower() if tok.kind == "word" else ""
        if word == "in" or (word == "not" and self.keyword("in")):
            values, written = self.values()
            return In(field, values, negated=word == "not", written=written)
        if word in ("contains", "startswith"):
            value_tok, value = self.value(f"after '{tok.text}'")
            if not isinstance(value, str):
                raise FilterError(self.text, value_tok.pos, f"'{tok.text}' needs a quoted string")
            return Match(field, word, value, Written(tok.pos, tok.text))
        if word == "is":
            negated = self.keyword("not")
            if not self.keyword("null"):
                raise self.fail(f"'null' after 'is{' not' if negated else ''}'")
            return IsNull(field, negated)
        if word == "not":
            raise self.fail("'in' after 'not'")
        operators = "==, !=, <, <=, >, >=, in, contains, startswith, is"
        raise self.fail(f"an operator after '{field.name}' ({operators})", tok)

    def value(self, where: str) -> tuple[_Token, Value | None]:
        tok = self.advance()
        if tok.kind in ("string", "number"):
            return tok, tok.value  # type: ignore[return-value]
        word = tok.text.lower() if tok.kind == "word" else ""
        if word in ("true", "false", "null"):
            return tok, {"true": True, "false": False, "null": None}[word]
        raise self.fail(f"a value {where}", tok)

    def values(self) -> tuple[tuple[Value, ...], tuple[Written, ...]]:
        if self.advance().text != "[":
            raise self.fail("'[' to start a list after 'in'", self.tokens[self.i - 1])
        values: list[Value] = []
        written: list[Written] = []
        while not (self.peek().text == "]" and self.peek().kind == "punct"):
            tok, value = self.value("in the list")
            if value is None:
                raise FilterError(self.text, tok.pos, "null never matches in a list; write 'is null'")
            values.append(value)
            written.append(Written(tok.pos, tok.text))
            if self.peek().text == ",":
                self.advance()
            elif self.peek().text != "]":
                raise self.fail("',' or ']' in the list")
        if not values:
            raise FilterError(self.text, self.peek().pos, "'in' needs at least one value in the list")
        self.advance()
        return tuple(values), tuple(written)


def parse_filter(text: str) -> Node:
    """Parse a filter into an immutable syntax tree; raises FilterError."""
    return _Parser(text).parse()


def _fields(node: Node) -> list[Field]:
    if isinstance(node, And | Or):
        return [f for operand in node.operands for f in _fields(operand)]
    return _fields(node.operand) if isinstance(node, Not) else [node.field]


def filter_fields(text: str) -> set[str]:
    """The field names a filter mentions; raises FilterError."""
    return {f.name for f in _fields(parse_filter(text))}


def compile_filter(text: str, columns: Mapping[str, sa.ColumnElement]) -> sa.ColumnElement[bool]:
    """Compile a filter to a WHERE clause over `columns` (field name -> column); raises FilterError.

    The columns' types decide what a field may be compared with; a column of unknown type
    (`sa.column(name)`) is not checked.
    """
    node = parse_filter(text)
    for ref in _fields(node):
        if ref.name not in columns:
            close = difflib.get_close_matches(ref.name, list(columns), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(columns)) or "(none)"
            message = f"unknown field '{ref.name}'{hint}; fields are: {known}"
            raise FilterError(text, ref.position, message)
    _check_types(text, node, columns)
    return _sql(node, columns, False)


# ------------------------------------------------------------------ types
_KIND_WORDS = {"text": "a text attribute", "number": "a number attribute", "boolean": "a true/false attribute"}


def _kind(column: sa.ColumnElement) -> str | None:
    """text, number or boolean: what a column holds, in the words a user reads; None when unknown."""
    type_ = column.type
    if isinstance(type_, sa.Boolean):
        return "boolean"
    if isinstance(type_, sa.Integer | sa.Numeric | sa.Float):  # Float is no Numeric since SQLAlchemy 2.1
        return "number"
    if isinstance(type_, sa.String):  # Text is a String
        return "text"
    return None


def _value_kind(value: Value) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "boolean"
    return "text" if isinstance(value, str) else "number"


def _mismatch(name: str, kind: str, value: Value, written: Written) -> str:
    what = f"'{name}' is {_KIND_WORDS[kind]}"
    literal = written.text or repr(value)
    given = _value_kind(value)
    if kind == "text":
        # Quote what the user typed, not the parsed value: `gtin == 0123` means "0123", not 123.
        return f'{what} and {literal} is not text: quote it ("{literal}") to compare text'
    if kind == "number":
        if given == "text" and _NUMBER.fullmatch(str(value).strip()):
            return f"{what} and {literal} is text: write the number without quotes ({str(value).strip()})"
        return f"{what}: compare it with a number, not {literal}"
    return f"{what}: compare it with true or false, not {literal}"


_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _check_types(text: str, node: Node, columns: Mapping[str, sa.ColumnElement]) -> None:
    """Refuse a literal of another type than its attribute, at compile time and identically on every backend.

    Coercing would guess (`gtin == 0123` would look for 123; "9" > "10" as text), and left to the
    database the same filter fails at run time on PostgreSQL and silently compares on SQLite.
    """
    if isinstance(node, And | Or):
        for operand in node.operands:
            _check_types(text, operand, columns)
        return
    if isinstance(node, Not):
        _check_types(text, node.operand, columns)
        return
    if isinstance(node, IsNull):
        return
    name = node.field.name
    kind = _kind(columns[name])
    if kind is None:
        return
    if isinstance(node, Match):
        if kind != "text":
            message = (f"'{name}' is {_KIND_WORDS[kind]}: '{node.written.text or node.op}' works on text attributes "
                       f"only; compare {'numbers with ==, <, >' if kind == 'number' else 'it with == true or false'}")
            raise FilterError(text, node.written.position, message)
        return
    pairs = zip(node.values, node.written or [_NOWHERE] * len(node.values), strict=True) if isinstance(node, In) \
        else [(node.value, node.written)]
    for value, written in pairs:
        if _value_kind(value) != kind:
            raise FilterError(text, written.position, _mismatch(name, kind, value, written))


def _bind(column: sa.ColumnElement, value: Value) -> sa.BindParameter:
    # A number meets a float column as a float, on both backends: a Decimal would be compared as
    # numeric on PostgreSQL and a large integer exactly on SQLite, so the two would differ at the edges.
    if not isinstance(value, bool) and isinstance(value, int | Decimal) and _kind(column) == "number":
        integer_column = isinstance(column.type, sa.Integer)
        value = value if integer_column and isinstance(value, int) else float(value)
    return sa.literal(value)


# ------------------------------------------------------------------ text semantics shared by both backends
class _folded(FunctionElement):
    """Unicode lower case of a text expression, the same on SQLite and PostgreSQL."""

    type = sa.Text()
    name = "claro_fold"
    inherit_cache = True


@compiles(_folded)
def _fold_default(element, compiler, **kw):
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(_folded, "sqlite")
def _fold_sqlite(element, compiler, **kw):
    # SQLite's lower() and LIKE fold ASCII only; claro_lower is Python's str.lower (registered below).
    return f"{_SQLITE_LOWER}({compiler.process(element.clauses, **kw)})"


@compiles(_folded, "postgresql")
def _fold_postgresql(element, compiler, **kw):
    # The ICU root locale lower-cases like Python (É -> é, İ -> i̇, final sigma) whatever the
    # database's locale; libc's lower() under "C" folds ASCII only.
    return f'lower(({compiler.process(element.clauses, **kw)}) COLLATE "und-x-icu")'


class _codepoint_order(FunctionElement):
    """A text expression ordered by code point (UTF-8 bytes), the same on SQLite and PostgreSQL."""

    type = sa.Text()
    name = "claro_codepoint_order"
    inherit_cache = True


@compiles(_codepoint_order)
def _order_default(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)  # SQLite's default collation, BINARY, is code point order


@compiles(_codepoint_order, "postgresql")
def _order_postgresql(element, compiler, **kw):
    return f'({compiler.process(element.clauses, **kw)}) COLLATE "C"'


_SQLITE_LOWER = "claro_lower"


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


@sa.event.listens_for(sa.engine.Engine, "connect")
def _register_sqlite_lower(dbapi_connection, _record) -> None:
    # Every engine, so any store, test or tool that opens SQLite can run a compiled filter.
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.create_function(_SQLITE_LOWER, 1, _lower, deterministic=True)


def _sql(node: Node, columns: Mapping[str, sa.ColumnElement], negated: bool) -> sa.ColumnElement[bool]:
    # Negation is pushed down to the conditions (De Morgan), where a negated condition also
    # matches null: that keeps `not F` the exact complement of `F`.
    if isinstance(node, Not):
        return _sql(node.operand, columns, not negated)
    if isinstance(node, And | Or):
        join = sa.or_ if isinstance(node, And) == negated else sa.and_
        return join(*(_sql(operand, columns, negated) for operand in node.operands))
    column = columns[node.field.name]
    if isinstance(node, IsNull):
        return column.is_(None) if node.negated == negated else column.is_not(None)
    if isinstance(node, In):
        condition, negated = column.in_([_bind(column, v) for v in node.values]), negated != node.negated
    elif isinstance(node, Match):
        # Both sides lower-cased; autoescape makes % and _ (and its escape character /) literal.
        folded = _folded(column)
        like = folded.contains if node.op == "contains" else folded.startswith
        condition = like(node.value.lower(), autoescape=True)
    else:
        op = "==" if node.op == "!=" else node.op
        left = _codepoint_order(column) if op not in ("==", "!=") and _kind(column) == "text" else column
        condition = getattr(left, _COMPARISONS[op])(_bind(column, node.value))
        negated = negated != (node.op == "!=")
    return sa.or_(sa.not_(condition), column.is_(None)) if negated else condition
