"""Value rules: the one place each rule about a single cell lives.

Validation and normalization both go through `AttributeRules`, so a value is valid exactly when
normalization can turn it into something that meets the attribute's constraints: a rule is never
written twice. Columns are evaluated on Arrow arrays (`AttributeRules.evaluate_column`): pyarrow compute
kernels (RE2, casts, string functions) settle the common shapes for a whole column at once, a column that
repeats its values is dictionary-encoded and evaluated per distinct value, and only what no kernel settles
for certain goes through the scalar rules, each distinct value once. pyarrow rather than polars: the reader
already hands over Arrow-backed columns (no conversion), and every kernel needed is in pyarrow.compute.

Pure functions only: no I/O, no Dagster.
"""

from __future__ import annotations

import functools
import math
import os
import re
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import babel.numbers
import numpy as np
import pandas as pd
import pint
import pyarrow as pa
import pyarrow.compute as pc
from dateutil import parser as _dateutil_parser
from stdnum import ean as _ean

from claro_dagster.operations.read.common import CELL_DTYPE
from claro_dagster.spec.models import AttributeSpec

__all__ = [
    "AttributeRules",
    "ColumnOutcome",
    "canonical_enum",
    "clean_text",
    "email_is_valid",
    "enum_lookup",
    "gtin_is_valid",
    "gtin_problem",
    "gtin_validity",
    "is_blank",
    "parse_date",
    "parse_number",
    "parse_quantity",
    "resolve_unit",
    "strip_html",
    "url_is_valid",
]

# --------------------------------------------------------------------------------------------
# numbers

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# Grouping marks other than "." and ",": space, no-break space, narrow no-break / thin space, apostrophe.
_SPACE_GROUPS = " \u00a0\u202f\u2009'\u2019"
_NUMBER_BODY = re.compile(r"[0-9.,\u00a0\u202f\u2009' \u2019]+")
_ISO_CODE = re.compile(r"^([A-Za-z]{3})\s*(.*)$|^(.*?)\s*([A-Za-z]{3})$")
_MINUS = "-\u2212"


@functools.lru_cache(maxsize=64)
def _decimal_symbol(locale_hint: str | None) -> str:
    if not locale_hint:
        return "."
    try:
        return babel.numbers.get_decimal_symbol(locale_hint.replace("-", "_"))
    except Exception as exc:  # babel raises several types for unknown locales
        raise ValueError(f"unknown locale {locale_hint!r}") from exc


def _strip_currency(text: str) -> str:
    # Currency symbols (Unicode category Sc: £ $ € ¥ ...) at either end, then an ISO 4217 code.
    while text and unicodedata.category(text[0]) == "Sc":
        text = text[1:].lstrip()
    while text and unicodedata.category(text[-1]) == "Sc":
        text = text[:-1].rstrip()
    match = _ISO_CODE.match(text)
    if match:
        code, rest = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
        if code.isupper() and babel.numbers.is_currency(code):
            text = rest.strip()
    return text


def parse_number(text: str, *, locale_hint: str | None = None) -> float:
    """Parse a supplier's number: "1.299,00", "1,299.00", "£12.50", "12 500", "GBP 3.20".

    price-parser is not installed here and babel's `parse_decimal` only reads one locale's exact
    format, so this is a small documented rule instead:
    - currency symbols and ISO currency codes at either end are dropped;
    - spaces (incl. no-break and thin spaces) and apostrophes are digit-group marks;
    - with both "." and "," present, the one that comes last is the decimal mark;
    - with one of them present more than once, it groups digits;
    - with one present once, it is the decimal mark unless exactly three digits follow a 1-3 digit
      non-zero integer part ("1,299"): that case is ambiguous and is read as the locale reads it
      (`locale_hint`, e.g. "de_DE"; default English: "1,299" = 1299, "1.299" = 1.299);
    - groups after the first must have exactly three digits, so "1,2,3" is an error, not 123.
    """
    original = text
    text = str(text).strip()
    if _PLAIN_NUMBER.fullmatch(text) and (not locale_hint or _decimal_symbol(locale_hint) == "."):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{original!r} is not a number (too large)")
        return value
    text = _strip_currency(text)
    sign = 1.0
    if text and text[0] in _MINUS + "+":
        sign = -1.0 if text[0] in _MINUS else 1.0
        text = text[1:].lstrip()
    if not text or not _NUMBER_BODY.fullmatch(text) or not text[0].isdigit() and text[0] not in ".,":
        raise ValueError(f"{original!r} is not a number")
    if not text[-1].isdigit():
        raise ValueError(f"{original!r} is not a number")

    dots, commas = text.count("."), text.count(",")
    decimal: str | None
    if dots and commas:
        decimal = "." if text.rfind(".") > text.rfind(",") else ","
        if text.count(decimal) > 1:
            raise ValueError(f"{original!r} is not a number (more than one decimal mark)")
    elif dots + commas == 0:
        decimal = None
    elif dots > 1 or commas > 1:
        decimal = None  # the mark repeats, so it groups digits
    else:
        mark = "." if dots else ","
        whole, frac = text.split(mark)
        whole_digits = "".join(ch for ch in whole if ch.isdigit())
        ambiguous = len(frac) == 3 and 1 <= len(whole_digits) <= 3 and not whole_digits.startswith("0")
        ambiguous = ambiguous and whole == whole_digits  # "12 345,678" has spaces: ',' must be decimal
        if ambiguous:
            decimal = mark if _decimal_symbol(locale_hint) == mark else None
        else:
            decimal = mark
    group_marks = set(_SPACE_GROUPS) | ({".", ","} - {decimal})
    if decimal is not None:
        whole, frac = text.split(decimal)
    else:
        whole, frac = text, ""
    if not frac.isdigit() and frac != "":
        raise ValueError(f"{original!r} is not a number")
    groups = re.split("|".join(re.escape(m) for m in group_marks), whole) if whole else [""]
    if len(groups) > 1:
        if not (1 <= len(groups[0]) <= 3) or any(len(g) != 3 for g in groups[1:]):
            raise ValueError(f"{original!r} is not a number (digit groups must have three digits)")
    digits = "".join(groups)
    if not digits.isdigit() and not (digits == "" and frac):
        raise ValueError(f"{original!r} is not a number")
    return sign * float(f"{digits or '0'}.{frac or '0'}")


# --------------------------------------------------------------------------------------------
# units

UNITS = pint.UnitRegistry()
"""The one unit registry (pint registries are expensive and quantities from two do not mix)."""

# Spellings suppliers use that pint reads differently or not at all. "gr" is grain in pint but gram
# on European packaging; "pcs" would be parsec; "G" would be gauss.
_RETAIL_UNITS = {
    "g": "gram", "gr": "gram", "grs": "gram", "gm": "gram", "gms": "gram", "gram": "gram",
    "grams": "gram", "kg": "kilogram", "kgs": "kilogram", "kilo": "kilogram", "kilos": "kilogram",
    "mg": "milligram", "t": "metric_ton", "lb": "pound", "lbs": "pound", "oz": "ounce",
    "ml": "milliliter", "cl": "centiliter", "dl": "deciliter", "l": "liter", "lt": "liter",
    "ltr": "liter", "ltrs": "liter", "fl oz": "fluid_ounce", "fl. oz": "fluid_ounce",
    "fl.oz": "fluid_ounce", "floz": "fluid_ounce", "mm": "millimeter", "cm": "centimeter",
    "m": "meter", "mtr": "meter", "km": "kilometer", "in": "inch", '"': "inch", "ft": "foot",
    "pcs": None, "pc": None, "pieces": None, "units": None, "x": None,
}
_DIMENSION_NAMES = {
    "[mass]": "a mass", "[length]": "a length", "[length] ** 3": "a volume", "[length] ** 2": "an area",
    "[temperature]": "a temperature", "[time]": "a duration", "": "a plain number",
}


@functools.lru_cache(maxsize=1024)
def resolve_unit(text: str) -> pint.Unit:
    """A unit as suppliers write it ("kg", "KG", "lbs", "fl oz", "ml") -> pint unit; ValueError if unknown."""
    key = " ".join(text.split())
    lowered = key.lower()
    if lowered in _RETAIL_UNITS:
        name = _RETAIL_UNITS[lowered]
        if name is None:
            raise ValueError(f"{key!r} is a count, not a unit of measure")
        return UNITS.parse_units(name)
    for candidate in (key, lowered):
        try:
            return UNITS.parse_units(candidate)
        except Exception:  # pint raises UndefinedUnitError, AssertionError, TokenError, ...
            continue
    raise ValueError(f"unknown unit {key!r}")


def _dimension_name(unit: pint.Unit) -> str:
    dim = str(unit.dimensionality)
    return _DIMENSION_NAMES.get(dim, dim)


@functools.lru_cache(maxsize=1024)
def _converter(source: str, target: str) -> float | None:
    """The factor from `source` to `target`; None for offset units (°C), which need pint itself."""
    src, dst = resolve_unit(source), resolve_unit(target)
    if src.dimensionality != dst.dimensionality:
        raise ValueError(
            f"{source} is {_dimension_name(src)}, not convertible to {target} ({_dimension_name(dst)})"
        )
    if UNITS.Quantity(0.0, src).to(dst).magnitude != 0.0:
        return None  # an offset scale (°C -> °F): not a plain factor
    return float(UNITS.Quantity(1.0, src).to(dst).magnitude)


_QUANTITY = re.compile(r"\s*([-+\u2212]?[\d.,\u00a0\u202f\u2009' ]*\d)\s*(.*?)\s*")


def split_quantity(text: str) -> tuple[str, str | None]:
    """'500 g' -> ('500', 'g'); '12' -> ('12', None). ValueError when there is no leading number."""
    if _PLAIN_NUMBER.fullmatch(str(text).strip()):
        return str(text).strip(), None  # "1e3" is a number, not 1 of unit "e3"
    match = _QUANTITY.fullmatch(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a quantity (expected a number, optionally with a unit)")
    return match.group(1), (match.group(2) or None)


def parse_quantity(text: str, unit: str, *, locale_hint: str | None = None) -> float:
    """Read '500 g' as 0.5 when `unit` is 'kg'; a bare number is taken in `unit`."""
    number_text, source_unit = split_quantity(text)
    value = parse_number(number_text, locale_hint=locale_hint)
    if source_unit is None:
        return value
    try:
        factor = _converter(source_unit, unit)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if factor is None:
        return float(UNITS.Quantity(value, resolve_unit(source_unit)).to(resolve_unit(unit)).magnitude)
    return value * factor


# --------------------------------------------------------------------------------------------
# enums

def _fold(text: str) -> str:
    # case-, space-, hyphen- and underscore-insensitive: "Light-Grey" == "light grey"
    return " ".join(str(text).casefold().replace("-", " ").replace("_", " ").split())


def enum_lookup(attr: AttributeSpec) -> dict[str, tuple[str, bool]]:
    """Folded spelling -> (canonical value, reached through a synonym)."""
    lookup: dict[str, tuple[str, bool]] = {}
    for canonical, synonyms in attr.synonyms.items():
        for synonym in synonyms:
            lookup.setdefault(_fold(synonym), (canonical, True))
    # canonical values win over a synonym that folds to the same spelling
    for canonical in list(attr.values or []) + [c for c in attr.synonyms if c not in (attr.values or [])]:
        lookup[_fold(canonical)] = (canonical, False)
    return lookup


def _allowed(attr: AttributeSpec) -> str:
    values = list(attr.values or []) or list(attr.synonyms)
    return ", ".join(values)


def canonical_enum(text: str, attr: AttributeSpec,
                   lookup: dict[str, tuple[str, bool]] | None = None) -> str:
    """The canonical enum value for `text` (case/space-insensitive, synonyms allowed)."""
    found = (lookup if lookup is not None else enum_lookup(attr)).get(_fold(text))
    if found is None:
        raise ValueError(f"{str(text).strip()!r} is not one of: {_allowed(attr)}")
    return found[0]


# --------------------------------------------------------------------------------------------
# dates

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DMY = re.compile(
    r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?"
)
_DEFAULTS = (datetime(2001, 1, 1), datetime(2002, 2, 2))


@functools.lru_cache(maxsize=64)
def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {tz!r}") from exc


def _date_error(text: str) -> ValueError:
    return ValueError(f"{text!r} is not a date (expected e.g. 2025-03-01, 01/03/2025 or 1 March 2025)")


def parse_date(text: str, tz: str | None) -> str:
    """ISO 8601 text. Dates stay dates; "01/03/2025" is day-first (UK); datetimes get `tz`.

    A naive datetime is taken to be in `tz`, an aware one is converted to it. With no `tz`, a naive
    midnight ("2025-03-01 00:00:00", as spreadsheet readers write date cells) is a date.
    """
    original = text
    text = str(text).strip()
    if _ISO_DATE.fullmatch(text):
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise _date_error(original) from None
    value: date | datetime | None = None
    try:
        value = date.fromisoformat(text) if len(text) <= 10 else datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None:
        match = _DMY.fullmatch(text)
        if match:
            day, month, year = int(match.group(1)), int(match.group(2)), match.group(3)
            full_year = int(year)
            if len(year) == 2:  # two-digit years: 00-69 -> 2000s, 70-99 -> 1900s (as Excel reads them)
                full_year += 2000 if full_year < 70 else 1900
            try:
                if match.group(4) is None:
                    value = date(full_year, month, day)
                else:
                    value = datetime(full_year, month, day, int(match.group(4)), int(match.group(5)),
                                     int(match.group(6) or 0))
            except ValueError:
                raise ValueError(f"{original!r} is not a valid day/month/year date") from None
        elif any(ch.isalpha() for ch in text) and re.search(r"\d{4}", text):
            # Month names ("1 March 2025", "Mar 1, 2025"): dateutil, parsed against two different
            # defaults so that a missing day or month is an error rather than silently filled in.
            try:
                first, second = (_dateutil_parser.parse(text, dayfirst=True, default=d) for d in _DEFAULTS)
            except (ValueError, OverflowError):
                raise _date_error(original) from None
            if first.date() != second.date():
                raise _date_error(original)
            has_time = ":" in text
            value = first if has_time else first.date()
    if value is None:
        raise _date_error(original)
    if not isinstance(value, datetime):
        return value.isoformat()
    if tz:
        zone = _zone(tz)
        value = value.replace(tzinfo=zone) if value.tzinfo is None else value.astimezone(zone)
    elif value.tzinfo is None and value.time() == datetime.min.time():
        return value.date().isoformat()
    return value.isoformat()


# --------------------------------------------------------------------------------------------
# identifiers and formats

_GTIN_SHAPE = re.compile(r"[0-9]{8}|[0-9]{12,14}")


def gtin_is_valid(text: str) -> bool:
    """GTIN-8/12/13/14: ASCII digits only, one of those lengths, and a correct GS1 check digit."""
    text = str(text)
    # stdnum.ean.compact() would silently drop spaces and dashes; GS1 calls those non-digits.
    return bool(_GTIN_SHAPE.fullmatch(text)) and _ean.is_valid(text)


def gtin_validity(values: Sequence[str]) -> np.ndarray:
    """`gtin_is_valid` for many values at once (numpy), for columns of a million GTINs.

    stdnum takes ~14 µs a value, 14 s a million; this is the same GS1 mod-10 sum over zero-padded
    14-digit rows. tests/operations/test_validate.py checks it agrees with `gtin_is_valid` (stdnum).
    """
    arr = _arrow_strings(values)
    shaped = _regex_mask(arr, f"^(?:{_GTIN_SHAPE.pattern})$")
    result = np.zeros(len(arr), dtype=bool)
    if shaped.any():
        padded = pc.utf8_lpad(arr.filter(pa.array(shaped)), 14, "0")
        text = "".join(padded.to_pylist()) if padded.offset else None
        raw = (np.frombuffer(text.encode("ascii"), dtype=np.uint8) if text is not None
               else np.frombuffer(padded.buffers()[2], dtype=np.uint8)[: 14 * len(padded)])
        digits = raw.reshape(-1, 14)  # ASCII codes: each digit is its code - 48, 7 digits weigh 3, 7 weigh 1
        total = 3 * digits[:, 0::2].sum(axis=1, dtype=np.int32) + digits[:, 1::2].sum(axis=1, dtype=np.int32)
        result[shaped] = (total - 48 * 28) % 10 == 0
    return result


def gtin_problem(text: str) -> str | None:
    """Why `text` is not a GTIN, in a user's words; None when it is one."""
    text = str(text)
    if gtin_is_valid(text):
        return None
    if re.fullmatch(r"\d(?:[.,]\d+)?[eE]\+?\d+", text):
        return (f"GTIN {text!r} was turned into a number by a spreadsheet (scientific notation); "
                "export the column as text")
    if not text.isascii() or not text.isdigit():
        return f"GTIN {text!r} must contain digits only"
    if len(text) not in (8, 12, 13, 14):
        return f"GTIN {text!r} has {len(text)} digits; a GTIN has 8, 12, 13 or 14"
    expected = _ean.calc_check_digit(text[:-1])
    return f"GTIN {text!r} has a wrong check digit (expected {expected}, found {text[-1]})"


_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)


def email_is_valid(text: str) -> bool:
    return bool(_EMAIL.fullmatch(str(text)))


# A subset of what url_is_valid accepts (plain ASCII host name, no port or user), checked by a
# regex first because urlsplit costs ~5 µs a value.
_SIMPLE_URL = re.compile(r"https?://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?:[/?#][!-~]*)?")


def url_is_valid(text: str) -> bool:
    """An absolute http(s) address with a host name."""
    text = str(text)
    if _SIMPLE_URL.fullmatch(text):
        return True
    if any(ch.isspace() for ch in text):
        return False
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and ("." in host or host == "localhost")


# --------------------------------------------------------------------------------------------
# text

_BLOCK_TAGS = frozenset({"p", "br", "div", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5",
                         "h6", "section", "article", "header", "footer", "blockquote", "hr"})
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template"})


class _TextExtractor(HTMLParser):
    # stdlib html.parser rather than selectolax: selectolax is not installed here, descriptions are
    # small fragments (not pages), and only unique values are parsed, so speed is not the limit.
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


# Fast path for the common supplier fragment (`<p>..</p><ul><li>..</li></ul>`): plain tags without quoted
# attributes, comments, entities or script/style. Every `<` must open such a tag, else the parser decides.
_SIMPLE_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>\"']*)?/?>")
_SIMPLE_BLOCK = re.compile("(?i)</?(?:" + "|".join(sorted(_BLOCK_TAGS)) + r")\b(?:\s[^<>\"']*)?/?>")
_NOT_SIMPLE = re.compile("(?i)&|<(?:" + "|".join(sorted(_SKIP_TAGS)) + r")\b")


def strip_html(text: str) -> str:
    """Text content of an HTML fragment: tags removed, entities decoded, blocks on their own lines."""
    text = str(text)
    if "<" not in text and "&" not in text:
        return text
    if not _NOT_SIMPLE.search(text) and text.count("<") == len(_SIMPLE_TAG.findall(text)):
        return _clean_whitespace(_SIMPLE_TAG.sub("", _SIMPLE_BLOCK.sub("\n", text)))
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return _clean_whitespace("".join(parser.parts))


def _clean_whitespace(text: str) -> str:
    if "\n" not in text and "\r" not in text:
        return " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out: list[str] = []
    for line in lines:  # keep paragraph breaks, at most one blank line in a row
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


_SMALL_WORDS = frozenset({"a", "an", "and", "as", "at", "but", "by", "for", "in", "nor", "of", "on", "or",
                          "the", "to", "with", "via", "per"})


_HAS_DIGIT = re.compile(r"\d").search


def _title_word(word: str, first: bool) -> str:
    if _HAS_DIGIT(word):
        return word  # "500ml", "4K", "A4": leave sizes and codes alone
    rest = word[1:]
    if rest != rest.lower() and rest != rest.upper():
        return word  # mixed case is deliberate: "iPhone", "McDonald", "eBay"
    lowered = word.lower()
    if not first and lowered in _SMALL_WORDS:
        return lowered
    return "-".join(part[:1].upper() + part[1:] for part in lowered.split("-"))


# Cached per word: a catalogue's titles reuse a few thousand words, and `map` over a C-level cache
# avoids a Python call per word of every title.
_title_first = functools.lru_cache(maxsize=65536)(functools.partial(_title_word, first=True))
_title_rest = functools.lru_cache(maxsize=65536)(functools.partial(_title_word, first=False))


def _apply_casing(text: str, casing: str) -> str:
    if casing == "upper":
        return text.upper()
    if casing == "lower":
        return text.lower()
    if casing == "title":
        first, _, rest = text.partition(" ")
        return " ".join([_title_first(first), *map(_title_rest, rest.split(" "))]) if rest else _title_first(first)
    # sentence: shouting is lowered first; otherwise only the first letter changes
    if text.isupper():
        text = text.lower()
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
    return text


def clean_text(text: str, *, html: bool = False, casing: str | None = None,
               identifier: bool = False) -> tuple[str, list[str]]:
    """(cleaned text, reasons for each change made). Identifiers are only trimmed (and cased)."""
    reasons: list[str] = []
    value = str(text)
    if html and not identifier:
        stripped = strip_html(value)
        if stripped != value:
            reasons.append("stripped HTML")
            value = stripped
    spaced = value.strip() if identifier else _clean_whitespace(value)
    if spaced != value:
        reasons.append("trimmed whitespace")
        value = spaced
    if casing:
        cased = _apply_casing(value, casing)
        if cased != value:
            reasons.append(f"{casing} casing")
            value = cased
    return value, reasons


def is_blank(value: Any) -> bool:
    if type(value) is str:
        return not value.strip()
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-likes are values, not missing
        return False


def _fmt(number: float) -> str:
    return f"{number:g}" if abs(number) < 1e15 else repr(number)


# --------------------------------------------------------------------------------------------
# vectorised filters (pyarrow compute: RE2 over a whole column, no Python call per value)

# Every character Python's str.isspace() accepts (plus the other ASCII controls), written so that
# Python `re` and RE2 read the class identically.
_NOT_SPACE = "[^\\x00-\\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# text the whitespace rule leaves alone: no edge spaces, single spaces between words, no other space
_CLEAN_TEXT = f"^{_NOT_SPACE}+(?: {_NOT_SPACE}+)*$"
# ... and without "<" or "&", which `strip_html` would look at
_NOT_SPACE_OR_MARKUP = _NOT_SPACE[:-1] + "<&]"
_CLEAN_TEXT_NO_MARKUP = f"^{_NOT_SPACE_OR_MARKUP}+(?: {_NOT_SPACE_OR_MARKUP}+)*$"
# identifiers are only trimmed: first and last characters are not spaces
_TRIMMED = f"^{_NOT_SPACE}(?:(?s:.)*{_NOT_SPACE})?$"


def _arrow_strings(values: Any) -> pa.Array:
    """A pyarrow string array of `values`; anything that is not a str becomes null."""
    if isinstance(values, pa.Array) and pa.types.is_string(values.type):
        return values
    try:
        return pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([v if type(v) is str else None for v in values], type=pa.string())


def _plain_numbers(values: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(mask, floats) of the values that are plain finite numbers ("12.5", "-3", "1e3").

    ASCII digits only, so everything accepted here is read by `parse_number` the same way
    (both round correctly); the rest goes through `parse_number` itself.
    """
    arr = _arrow_strings(values)
    mask = _regex_mask(arr, f"^{_PLAIN_NUMBER.pattern.replace(chr(92) + 'd', '[0-9]')}$")
    numbers = np.full(len(values), np.nan)
    if mask.any():
        try:
            numbers[mask] = pc.cast(arr.filter(pa.array(mask)), pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. an exponent out of range
            picked = np.asarray(arr.filter(pa.array(mask)).to_pylist(), dtype=object)
            numbers[mask] = pd.to_numeric(pd.Series(picked, dtype=object), errors="coerce").to_numpy()
    mask &= np.isfinite(numbers)
    return mask, numbers


def _regex_mask(arr: pa.Array, pattern: str) -> np.ndarray:
    """RE2 search of an anchored pattern over `arr`; null -> False."""
    return pc.fill_null(pc.match_substring_regex(arr, pattern), False).to_numpy(zero_copy_only=False)



# Exactly the characters `str.isspace()` accepts, which is also what Python's `\s` and `str.split()` mean; RE2's
# `\s` is ASCII only, so patterns run by pyarrow spell the class out.
_SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# the line boundaries of `str.splitlines()` other than "\n": text holding one takes the scalar path
_ODD_BREAKS = "[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"
# spaces within a line: every space but the line boundaries
_LINE_SPACES = "\t\x1f \xa0\u1680\u2000-\u200a\u202f\u205f\u3000"
# `_SIMPLE_TAG` and `_SIMPLE_BLOCK` with `\s` spelled out, so RE2 reads them as Python `re` does
_SIMPLE_TAG_RE2 = _SIMPLE_TAG.pattern.replace("\\s", f"[{_SPACES}]")
_SIMPLE_BLOCK_RE2 = _SIMPLE_BLOCK.pattern.replace("\\s", f"[{_SPACES}]")
_PLAIN_NUMBER_RE2 = f"^{_PLAIN_NUMBER.pattern.replace(chr(92) + 'd', '[0-9]')}$"
# "500 g", "1.2kg": a plain decimal and a unit of letters, as `split_quantity` splits them
_SIMPLE_QUANTITY_RE2 = r"^(?P<number>[0-9]+(?:\.[0-9]+)?) ?(?P<unit>[A-Za-z]+)$"


# "£12.50", "$3", "€0.5": a currency sign and a plain amount, read as `parse_number` reads it. Two decimals at
# most: "£1.299" is ambiguous (1299 in English) and goes to `parse_number` itself.
_SIMPLE_PRICE_RE2 = r"^[£$€¥](?P<amount>[0-9]+(?:\.[0-9]{1,2})?)$"


def _simple_prices(arr: pa.Array, todo: np.ndarray, numbers: np.ndarray, change: np.ndarray) -> np.ndarray:
    """Read simple prices with Arrow (the reason is still written per value, as `normalize` words it)."""
    done = np.zeros(len(arr), dtype=bool)
    idx = np.flatnonzero(todo)
    if not idx.size:
        return done
    picked = arr.take(pa.array(idx))
    hit = _regex_mask(picked, _SIMPLE_PRICE_RE2)
    if not hit.any():
        return done
    rows, texts = idx[hit], picked.filter(pa.array(hit))
    amounts = pc.cast(pc.extract_regex(texts, _SIMPLE_PRICE_RE2).field("amount"), pa.float64())
    values = amounts.to_numpy(zero_copy_only=False)
    numbers[rows] = values
    change[rows] = [f"parsed {t!r} as {_fmt(v)}" for t, v in zip(texts.to_pylist(), values.tolist(), strict=True)]
    done[rows] = True
    return done


def _strip_simple_html(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(mask, text of the masked values) for the values `strip_html` takes through its simple-tag fast path,
    whitespace cleaned.

    The same substitutions as `strip_html` + `_clean_whitespace`, run by RE2: block tags become line breaks,
    other tags go, spaces collapse within lines, line ends are trimmed and at most one blank line is kept in
    a row. Anything else (entities, script/style, a `<` that opens no simple tag, line breaks other than
    "\\n") is left to `strip_html` itself (mask False).
    """
    mask = _regex_mask(arr, "<") & ~_regex_mask(arr, _NOT_SIMPLE.pattern) & ~_regex_mask(arr, _ODD_BREAKS)
    if not mask.any():
        return mask, pa.array([], type=pa.string())
    idx = np.flatnonzero(mask)
    html = arr.take(pa.array(idx))
    # every "<" opens a simple tag (each match holds exactly one "<"), as `strip_html` counts them
    simple = ~_regex_mask(pc.replace_substring_regex(html, _SIMPLE_TAG_RE2, ""), "<")
    mask[idx[~simple]] = False
    html = html.filter(pa.array(simple))
    text = pc.replace_substring_regex(html, _SIMPLE_BLOCK_RE2, "\n")
    text = pc.replace_substring_regex(text, _SIMPLE_TAG_RE2, "")
    text = pc.replace_substring_regex(text, f"[{_LINE_SPACES}]+", " ")
    text = pc.replace_substring_regex(text, " ?\n ?", "\n")
    text = pc.replace_substring_regex(text, "\n\n\n+", "\n\n")
    text = pc.replace_substring_regex(text, "^[ \n]+|[ \n]+$", "")
    return mask, text


def _replace_rows(arr: pa.Array, mask: np.ndarray, replacements: pa.Array) -> pa.Array:
    """`arr` with the rows of `mask` replaced, in order, by `replacements` (one `take`: faster than
    `replace_with_mask` on strings)."""
    index = np.arange(len(arr), dtype=np.int64)
    index[mask] = len(arr) + np.arange(len(replacements), dtype=np.int64)
    return pa.concat_arrays([arr, replacements.cast(arr.type)]).take(pa.array(index))


def with_nulls(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    """`arr` with the rows of `mask` null too: a new validity bitmap over the same buffers (`if_else` would copy
    every string)."""
    if not mask.any():
        return arr
    valid = ~mask
    if arr.null_count:
        valid &= pc.is_valid(arr).to_numpy(zero_copy_only=False)
    bitmap = pa.py_buffer(np.packbits(np.concatenate([np.zeros(arr.offset, dtype=bool), valid]),
                                      bitorder="little"))
    return pa.Array.from_buffers(arr.type, len(arr), [bitmap, *arr.buffers()[1:]], offset=arr.offset)


def objects(arr: pa.Array) -> np.ndarray:
    """An object array of Python values (None for null) from an Arrow array."""
    if pa.types.is_floating(arr.type):
        out = arr.to_numpy(zero_copy_only=False).astype(object)
        if arr.null_count:
            out[~pc.is_valid(arr).to_numpy(zero_copy_only=False)] = None
        return out
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)


def _column_strings(column: pd.Series) -> pa.Array | None:
    """The column as one Arrow string array (null for missing), or None when it holds anything but text."""
    try:
        arr = pa.array(column, from_pandas=True)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_null(arr.type):
        return arr.cast(pa.string())
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    return arr if pa.types.is_string(arr.type) else None


def duplicated(keys: pa.Array) -> np.ndarray:
    """bool per row: its (non-null) key occurs on another row too. By sorting, which Arrow does in a fraction
    of the time a hash table of a million Python strings takes."""
    n = len(keys)
    result = np.zeros(n, dtype=bool)
    if n < 2:
        return result
    order = pc.array_sort_indices(keys, null_placement="at_end")
    ordered = keys.take(order)
    same = pc.fill_null(pc.equal(ordered.slice(1), ordered.slice(0, n - 1)), False).to_numpy(zero_copy_only=False)
    if same.any():
        flags = np.zeros(n, dtype=bool)
        flags[1:] |= same
        flags[:-1] |= same
        result[order.to_numpy()] = flags
    return result



# --------------------------------------------------------------------------------------------
# one attribute's rules, applied to a whole column

class ColumnOutcome:
    """One attribute's column, evaluated. Arrays are aligned with the input rows.

    `change`, `problem` and `blank` are plain arrays; `normalized` is an Arrow array (string or float64) of the
    normalized values, null where the cell is blank or its value could not be normalized at all, so a stage can
    hand it on without a Python object per row. `values` (the normalized value, the original where it could not
    be normalized, None if blank) is built from it on first use.
    """

    def __init__(self, change: np.ndarray | None, problem: np.ndarray | None, blank: np.ndarray, *,
                 values: np.ndarray | None = None, normalized: pa.Array | None = None,
                 raw: pa.Array | None = None, failed: np.ndarray | None = None,
                 changed: np.ndarray | None = None, reasons: pa.Array | None = None,
                 codes: np.ndarray | None = None, per_value: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        # `change`: why the value changed ("trimmed whitespace; title casing"), None if it did not. `problem`: why
        # the value is invalid, None if it is fine (blank is not a problem here). Either may come instead as
        # `reasons` (Arrow text, null where unchanged, as a stage boundary hands it over) or per distinct value
        # (`per_value` = (change, problem) picked by `codes`); the row arrays are then built on first use.
        self._change, self._problem, self._reasons = change, problem, reasons
        self._codes, self._per_value = codes, per_value
        self.blank = blank        # bool: missing or whitespace-only
        self._values, self._normalized, self._raw = values, normalized, raw
        if failed is not None:  # known already (e.g. none of the rows that passed validation)
            self.__dict__["failed"] = failed
        if changed is not None:
            self.__dict__["changed"] = changed

    @property
    def change(self) -> np.ndarray:
        if self._change is None:
            if self._per_value is not None:
                self._change = self._per_value[0][self._codes]
            else:
                self._change = np.full(len(self._reasons), None, dtype=object)
                self._change[self.changed] = objects(self._reasons.filter(pa.array(self.changed)))
        return self._change

    @property
    def problem(self) -> np.ndarray:
        if self._problem is None:
            self._problem = self._per_value[1][self._codes]
        return self._problem

    def change_at(self, positions: np.ndarray) -> np.ndarray:
        """`change` at some rows, without building it whole."""
        if self._change is None and self._per_value is not None:
            return self._per_value[0][self._codes[positions]]
        if self._change is None:
            return objects(self._reasons.take(pa.array(positions, type=pa.int64())))
        return self._change[positions]

    def problem_at(self, positions: np.ndarray) -> np.ndarray:
        """`problem` at some rows, without building it whole."""
        if self._problem is None:
            return self._per_value[1][self._codes[positions]]
        return self._problem[positions]

    def change_reasons(self) -> pa.Array:
        """`change` as Arrow text (null where unchanged)."""
        if self._change is None and self._reasons is not None:
            return self._reasons
        if self._change is None:
            return pa.array(self._per_value[0], type=pa.string(), from_pandas=True).take(pa.array(self._codes))
        return pa.array(self._change, type=pa.string(), from_pandas=True)

    @functools.cached_property
    def changed(self) -> np.ndarray:
        """bool: normalization changed the value (`change` says why)."""
        return ~np.equal(self.change, None)

    @functools.cached_property
    def failed(self) -> np.ndarray:
        """bool: the value breaks a rule of the attribute."""
        return ~np.equal(self.problem, None)

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            out = objects(self._normalized)
            failed = np.flatnonzero(self.failed & ~pc.is_valid(self._normalized).to_numpy(zero_copy_only=False))
            if failed.size:
                out[failed] = objects(self._raw.take(pa.array(failed)))
            self._values = out
        return self._values

    @property
    def normalized(self) -> pa.Array:
        """Normalized values as Arrow, float64 for numbers, else string; null where blank or not normalized
        (where `failed`, use the original value instead)."""
        if self._normalized is None:
            values = self._values.copy()
            values[self.blank | self.failed] = None
            numbers = [v for v in values[:64] if v is not None]
            if numbers and all(isinstance(v, float) for v in numbers):
                try:
                    self._normalized = pa.array(values, type=pa.float64(), from_pandas=True)
                except (pa.ArrowTypeError, pa.ArrowInvalid):
                    self._normalized = None
            if self._normalized is None:
                self._normalized = _arrow_strings(values) if all(
                    v is None or type(v) is str for v in values) else pa.array(values.tolist())
        return self._normalized

    def take(self, rows: np.ndarray) -> ColumnOutcome:
        """The outcome of some rows (positions or a bool mask), in that order."""
        idx = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
        picked = pa.array(idx, type=pa.int64())
        return ColumnOutcome(
            self.change[idx], self.problem[idx], self.blank[idx], failed=self.failed[idx], changed=self.changed[idx],
            values=None if self._values is None else self._values[idx],
            normalized=None if self._normalized is None else self._normalized.take(picked),
            raw=None if self._raw is None else self._raw.take(picked))



class AttributeRules:
    """Everything the spec says about one attribute, compiled once and applied to whole columns.

    Two steps, each with one scalar rule: `normalize` (the value's canonical form, or why there is
    none) and `problem` (which constraint the normalized value breaks). `evaluate_column` settles
    what it can with Arrow kernels: conservative filters (`_certainly_unchanged`, `_certainly_valid`)
    that only pass values the scalar rules would pass unchanged, and kernels that do what the scalar
    rules do for the common shapes (simple HTML, "500 g", "£12.50"); the rest goes through the scalar
    rules. The tests check every path agrees with the scalar rules value by value.
    """

    def __init__(self, name: str, attr: AttributeSpec, *, locale_hint: str | None = None) -> None:
        self.name, self.attr, self.locale_hint = name, attr, locale_hint
        self.kind = attr.type
        if attr.identifier and attr.type in ("number", "text"):
            self.kind = "identifier"  # never numerically reformatted: leading zeros, no 1e+12
        if attr.format == "gtin" and attr.type != "enum":
            self.kind = "identifier"
        try:
            self.pattern = re.compile(attr.regex) if attr.regex else None
        except re.error as exc:
            raise ValueError(f"attribute {name!r}: regex {attr.regex!r} is not valid: {exc}") from None
        self.lookup = enum_lookup(attr) if attr.type == "enum" else {}
        if self.kind == "number" and attr.unit:
            resolve_unit(attr.unit)  # fail early on a unit pint does not know
        if attr.timezone:
            _zone(attr.timezone)
        self.numeric_fast_path = self.kind == "number" and _decimal_symbol(locale_hint) == "."
        if self.kind in ("identifier", "image"):
            self.casing = None if attr.format == "gtin" else attr.casing
        elif self.kind == "text":
            self.casing = attr.casing
        else:
            self.casing = None

    # -- one value -------------------------------------------------------------------------
    def normalize(self, text: Any) -> tuple[Any, str | None]:
        """(normalized value, reason it changed or None). ValueError with a reason if impossible."""
        attr, kind = self.attr, self.kind
        if kind == "number":
            if isinstance(text, (int, float)) and not isinstance(text, bool):
                return float(text), None
            raw = str(text)
            if attr.unit:
                number_text, unit = split_quantity(raw)
                value = parse_quantity(raw, attr.unit, locale_hint=self.locale_hint)
                if unit is not None:
                    same = resolve_unit(unit) == resolve_unit(attr.unit)
                    reason = (f"removed unit {unit!r}" if same
                              else f"converted {number_text} {unit} to {attr.unit}")
                    return value, reason
            else:
                value = parse_number(raw, locale_hint=self.locale_hint)
            plain = _PLAIN_NUMBER.fullmatch(raw.strip()) and _decimal_symbol(self.locale_hint) == "."
            return value, None if plain else f"parsed {raw.strip()!r} as {_fmt(value)}"
        raw = text if isinstance(text, str) else str(text)
        if kind == "enum":
            found = self.lookup.get(_fold(raw))
            if found is None:
                raise ValueError(f"{raw.strip()!r} is not one of: {_allowed(attr)}")
            canonical, via_synonym = found
            if canonical == raw:
                return canonical, None
            if via_synonym:
                return canonical, f"synonym {raw.strip()!r} -> {canonical!r}"
            return canonical, f"canonical value {raw!r} -> {canonical!r}"
        if kind == "date":
            value = parse_date(raw, attr.timezone)
            return value, None if value == raw else f"date {raw!r} -> {value}"
        if kind == "text":
            value, reasons = clean_text(raw, html=attr.strip_html, casing=self.casing)
        else:
            value, reasons = clean_text(raw, identifier=True, casing=self.casing)
        return value, ("; ".join(reasons) if reasons else None)

    def problem(self, value: Any) -> str | None:
        """Why a normalized value breaks a constraint of the attribute; None when it does not."""
        attr = self.attr
        if isinstance(value, float):
            unit = f" {attr.unit}" if attr.unit else ""
            if attr.min is not None and value < attr.min:
                return f"{_fmt(value)}{unit} is below the minimum {_fmt(attr.min)}{unit}"
            if attr.max is not None and value > attr.max:
                return f"{_fmt(value)}{unit} is above the maximum {_fmt(attr.max)}{unit}"
            return None
        if not isinstance(value, str):
            return None
        if attr.min_length is not None and len(value) < attr.min_length:
            return f"is {len(value)} characters, shorter than the minimum {attr.min_length}"
        if attr.max_length is not None and len(value) > attr.max_length:
            return f"is {len(value)} characters, longer than the maximum {attr.max_length}"
        if self.pattern is not None and not self.pattern.fullmatch(value):
            return f"{value!r} does not match the pattern {attr.regex}"
        if attr.format == "gtin":
            return gtin_problem(value)
        if attr.format == "url" and not url_is_valid(value):
            return f"{value!r} is not a web address (expected http:// or https://)"
        if attr.format == "email" and not email_is_valid(value):
            return f"{value!r} is not an email address"
        return None

    def evaluate(self, raw: Any) -> tuple[Any, str | None, str | None, bool]:
        """(value, change, problem, blank) for one cell; blank is not a problem at this level."""
        value, change, problem, blank = self._normalized(raw)
        if problem is None and not blank:
            problem = self.problem(value)
        return value, change, problem, blank

    def _text_step(self, raw: Any) -> tuple[Any, str | None, str | None, bool]:
        # `_normalized` for one-line text without markup, flattened into one call: this runs once per
        # distinct title or description, often a million times. Anything else takes the general path.
        if type(raw) is not str or "\n" in raw or "\r" in raw or (
                self.attr.strip_html and ("<" in raw or "&" in raw)):
            return self._normalized(raw)
        spaced = " ".join(raw.split())
        if not spaced:
            return None, None, None, True
        reason = None if spaced == raw else "trimmed whitespace"
        if self.casing:
            cased = _apply_casing(spaced, self.casing)
            if cased != spaced:
                reason = f"{reason}; {self.casing} casing" if reason else f"{self.casing} casing"
                spaced = cased
        return spaced, reason, None, False

    def _normalized(self, raw: Any) -> tuple[Any, str | None, str | None, bool]:
        if (not raw.strip()) if type(raw) is str else is_blank(raw):
            return None, None, None, True  # blank stays blank: not a change worth logging
        try:
            value, change = self.normalize(raw)
        except ValueError as exc:
            return raw, None, str(exc), False
        if value == "":  # e.g. "<p></p>" once the markup is gone: as missing as a blank cell
            return None, change, None, True
        return value, change, None, False

    # -- a column --------------------------------------------------------------------------
    def evaluate_column(self, column: pd.Series | None, rows: int, *, by_value: bool | None = None) -> ColumnOutcome:
        """`evaluate` for every cell of a column (None = the column is absent), on Arrow arrays.

        Text columns are evaluated by Arrow kernels over the whole column (RE2, casts, string functions); only
        values no kernel can settle for certain go through the scalar rules, each distinct value once. A column
        that repeats its values (enums, dates, prices, brands) is dictionary-encoded first and evaluated once
        per distinct value (`by_value`: force either way, for tests).
        """
        if column is None:
            empty = np.full(rows, None, dtype=object)
            return ColumnOutcome(empty.copy(), empty.copy(), np.ones(rows, dtype=bool), values=empty)
        arr = _column_strings(column)
        if arr is None:  # numbers or other Python objects among the cells: the scalar rules, per unique value
            return self._evaluateobjects(column, rows)
        if by_value is None:
            sample = arr.slice(0, 20_000)
            by_value = self.kind in ("enum", "date", "number") or (
                len(sample) > 0 and len(pc.unique(sample)) <= len(sample) // 2)
        if not by_value:
            normalized, change, problem, blank, changed, failed = self._evaluate_strings(arr)
            return ColumnOutcome(change, problem, blank, normalized=normalized, raw=arr, changed=changed,
                                 failed=failed)
        encoded = pc.dictionary_encode(arr)
        u_norm, u_change, u_problem, u_blank, u_changed, u_failed = self._evaluate_strings(encoded.dictionary)
        count = len(encoded.dictionary)
        codes = pc.fill_null(encoded.indices, count).to_numpy(zero_copy_only=False)
        # index `count` (missing cells) picks the blank outcome appended at the end
        u_change, u_problem = np.append(u_change, None), np.append(u_problem, None)
        return ColumnOutcome(None, None, np.append(u_blank, True)[codes], codes=codes, per_value=(u_change, u_problem),
                             normalized=u_norm.take(encoded.indices), raw=arr,
                             changed=np.append(u_changed, False)[codes], failed=np.append(u_failed, False)[codes])

    def _evaluate_strings(self, arr: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray]:
        """(normalized, change, problem, blank, changed, failed) for an Arrow string array; see `ColumnOutcome`."""
        n = len(arr)
        change = np.full(n, None, dtype=object)
        problem = np.full(n, None, dtype=object)
        number = self.kind == "number"

        def blanks(settled: np.ndarray) -> np.ndarray:
            # null or whitespace only; values a fast path settled have a character that is not a space
            result = np.zeros(n, dtype=bool)
            rest = np.flatnonzero(~settled)
            if rest.size:
                result[rest] = ~_regex_mask(arr.take(pa.array(rest)) if rest.size < n else arr, f"[^{_SPACES}]")
            return result

        if number:
            numbers = np.full(n, np.nan)
            known = np.zeros(n, dtype=bool)  # numbers[known] holds the normalized value
            if self.numeric_fast_path and n >= 64:
                plain, parsed = _plain_numbers(arr)
                numbers[plain] = parsed[plain]
                known |= plain
            fast = known.copy()  # no change can be written for these: only a constraint can fail
            blank = blanks(known)
            todo = ~blank
            if self.numeric_fast_path and n >= 64:
                if self.attr.unit:
                    known |= self._simple_quantities(arr, todo & ~known, numbers, change)
                else:
                    known |= _simple_prices(arr, todo & ~known, numbers, change)
        else:
            known = self._certainly_unchanged(arr)
            fast = known.copy()  # no change can be written for these: only a constraint can fail
            blank = blanks(known)
            todo = ~blank
            strings = with_nulls(arr, blank)
            if self.kind == "text" and self.attr.strip_html and not self.casing and n >= 64:
                rest = np.flatnonzero(todo & ~known)  # kernels that search a whole value run on these only
                found, stripped = _strip_simple_html(arr.take(pa.array(rest)))
                if found.any():
                    html = np.zeros(n, dtype=bool)
                    html[rest[found]] = True
                    strings = _replace_rows(strings, html, stripped)
                    change[html] = "stripped HTML"
                    emptied = np.zeros(n, dtype=bool)
                    emptied[html] = ~_regex_mask(stripped, ".")
                    blank |= emptied  # "<p></p>": as missing as a blank cell, the change still logged
                    known |= html & ~emptied
        slow = np.flatnonzero(todo & ~known & ~blank)
        if slow.size:
            step = self._text_step if self.kind == "text" else self._normalized
            memo: dict[str, tuple[Any, str | None, str | None, bool]] = {}
            results = [memo[t] if t in memo else memo.setdefault(t, step(t))
                       for t in arr.take(pa.array(slow)).to_pylist()]
            s_values, s_change, s_problem, s_blank = (np.asarray(x, dtype=object) if i < 3 else np.asarray(x, bool)
                                                      for i, x in enumerate(zip(*results, strict=True)))
            change[slow] = s_change
            problem[slow] = s_problem
            blank[slow] = s_blank
            usable = np.equal(s_problem, None) & ~s_blank
            if number:
                fine = slow[usable]
                numbers[fine] = s_values[usable].astype(float)
                known[fine] = True
            else:
                mask = np.zeros(n, dtype=bool)
                mask[slow] = True
                s_values[~usable] = None
                strings = _replace_rows(strings, mask, _arrow_strings(s_values))
        # null where the cell is blank or its value could not be normalized (the `problem` says why)
        if number:
            known &= ~blank
            normalized = pa.array(numbers, mask=~known)
        else:
            unreadable = np.zeros(n, dtype=bool)
            unreadable[slow] = ~np.equal(problem[slow], None)
            normalized = with_nulls(strings, blank | unreadable)
        # constraints on the normalized values
        checked = ~blank  # and no problem yet: problems so far were written on `slow` rows only
        checked[slow] &= np.equal(problem[slow], None)
        suspect = np.zeros(0, dtype=np.int64)
        if checked.any():
            suspect = np.flatnonzero(checked & ~self._certainly_valid(normalized))
            if suspect.size:
                memo_p: dict[Any, str | None] = {}
                problem[suspect] = [memo_p[v] if v in memo_p else memo_p.setdefault(v, self.problem(v))
                                    for v in normalized.take(pa.array(suspect)).to_pylist()]
        # which values changed or failed, looking only where a change or a problem can have been written
        changed, failed = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        maybe = np.flatnonzero(~fast)
        changed[maybe] = ~np.equal(change[maybe], None)
        maybe = np.union1d(slow, suspect)
        failed[maybe] = ~np.equal(problem[maybe], None)
        return normalized, change, problem, blank, changed, failed

    def _simple_quantities(self, arr: pa.Array, todo: np.ndarray, numbers: np.ndarray,
                           change: np.ndarray) -> np.ndarray:
        """Read "500 g" and "1.2 kg" with Arrow: one unit conversion per distinct unit; returns what it read."""
        done = np.zeros(len(arr), dtype=bool)
        if not todo.any():
            return done
        idx = np.flatnonzero(todo & _regex_mask(arr, _SIMPLE_QUANTITY_RE2))
        if not idx.size:
            return done
        parts = pc.extract_regex(arr.take(pa.array(idx)), _SIMPLE_QUANTITY_RE2)
        number_text, unit = parts.field("number"), parts.field("unit")
        values = pc.cast(number_text, pa.float64()).to_numpy(zero_copy_only=False)
        units = unit.to_numpy(zero_copy_only=False)
        target = self.attr.unit
        for name in pd.unique(units):
            try:
                factor = _converter(name, target)
                same = resolve_unit(name) == resolve_unit(target)
            except ValueError:
                continue  # the scalar rules say why
            if factor is None or not np.isfinite(values[units == name]).all():
                continue
            hit = units == name
            rows = idx[hit]
            numbers[rows] = values[hit] * factor
            if same:
                change[rows] = f"removed unit {name!r}"
            else:
                texts = pc.binary_join_element_wise("converted ", number_text.filter(pa.array(hit)),
                                                    f" {name} to {target}", "")
                change[rows] = texts.to_numpy(zero_copy_only=False)
            done[rows] = True
        return done

    def _evaluateobjects(self, column: pd.Series, rows: int) -> ColumnOutcome:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        uniques = np.asarray(uniques, dtype=object)
        count = len(uniques)
        # index -1 (missing cells) picks the blank outcome appended at the end
        u_values = np.empty(count + 1, dtype=object)
        u_change = np.full(count + 1, None, dtype=object)
        u_problem = np.full(count + 1, None, dtype=object)
        u_blank = np.ones(count + 1, dtype=bool)
        u_values[count] = None
        if count:
            results = [self.evaluate(v) for v in uniques.tolist()]
            _put(u_values[:count], np.arange(count), [r[0] for r in results])
            u_change[:count] = [r[1] for r in results]
            u_problem[:count] = [r[2] for r in results]
            u_blank[:count] = [r[3] for r in results]
        return ColumnOutcome(u_change[codes], u_problem[codes], u_blank[codes], values=u_values[codes])

    def _certainly_unchanged(self, arr: pa.Array) -> np.ndarray:
        """Non-blank strings `normalize` would certainly return as they are (vectorised, conservative)."""
        attr, kind = self.attr, self.kind
        if kind == "number" or len(arr) < 64 or self.casing in ("title", "sentence"):
            return np.zeros(len(arr), dtype=bool)  # numbers have their own fast path
        if kind == "text":  # one anchored pattern: a search for what is absent would scan every value whole
            ok = _regex_mask(arr, _CLEAN_TEXT_NO_MARKUP if attr.strip_html else _CLEAN_TEXT)
        else:
            ok = _regex_mask(arr, _TRIMMED)
        if kind == "enum":
            allowed = pa.array(list(attr.values or []) + list(attr.synonyms), type=pa.string())
            ok &= pc.fill_null(pc.is_in(arr, value_set=allowed), False).to_numpy(zero_copy_only=False)
        elif kind == "date":
            ok &= _regex_mask(arr, f"^{_ISO_DATE.pattern}$") & ~_regex_mask(arr, "^0000")
            if ok.any():
                # strptime rolls "2025-02-30" over to March: a real date is one that prints back the same
                text = arr.filter(pa.array(ok))
                parsed = pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True)
                same = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), text)
                ok[np.flatnonzero(ok)] = pc.fill_null(same, False).to_numpy(zero_copy_only=False)
        if self.casing in ("upper", "lower"):
            # ASCII only: Python's full case mapping ("ß".upper() == "SS") differs from Arrow's
            cased = pc.ascii_upper(arr) if self.casing == "upper" else pc.ascii_lower(arr)
            ascii_ = pc.fill_null(pc.string_is_ascii(arr), False).to_numpy(zero_copy_only=False)
            ok &= ascii_ & pc.fill_null(pc.equal(cased, arr), False).to_numpy(zero_copy_only=False)
        return ok

    def _certainly_valid(self, values: pa.Array) -> np.ndarray:
        """Normalized values `problem` would certainly pass (vectorised, conservative); null -> False."""
        attr = self.attr
        if len(values) < 64:
            return np.zeros(len(values), dtype=bool)
        ok = pc.is_valid(values).to_numpy(zero_copy_only=False)
        if pa.types.is_floating(values.type):
            numbers = values.to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                if attr.min is not None:
                    ok &= numbers >= attr.min
                if attr.max is not None:
                    ok &= numbers <= attr.max
            return ok
        if not pa.types.is_string(values.type):
            return np.zeros(len(values), dtype=bool)
        if attr.min_length is not None or attr.max_length is not None:
            lengths = pc.fill_null(pc.utf8_length(values), -1).to_numpy(zero_copy_only=False)
            ok &= (lengths >= (attr.min_length or 0)) & (lengths <= (attr.max_length or np.iinfo(np.int64).max))
        if self.pattern is not None:
            ok &= self._pattern_matches(values)
        if attr.format == "gtin":
            ok &= gtin_validity(values)
        elif attr.format == "url":
            ok &= _regex_mask(values, f"^{_SIMPLE_URL.pattern}$")
        elif attr.format == "email":
            ok &= _regex_mask(values, f"^{_EMAIL.pattern}$")
        return ok

    def _pattern_matches(self, values: pa.Array) -> np.ndarray:
        """The user's pattern (Python `re`, fullmatch) over a column: RE2 on printable ASCII values, where the
        two engines read a pattern RE2 accepts the same way; Python `re` for the rest and if RE2 refuses it."""
        printable = _regex_mask(values, "^[\\x20-\\x7e]*$")
        result = np.zeros(len(values), dtype=bool)
        if printable.any():
            try:
                result = printable & _regex_mask(values, f"^(?:{self.attr.regex})$")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                printable[:] = False
        rest = np.flatnonzero(~printable & pc.is_valid(values).to_numpy(zero_copy_only=False))
        if rest.size:
            fullmatch = self.pattern.fullmatch
            result[rest] = [fullmatch(v) is not None for v in values.take(pa.array(rest)).to_pylist()]
        return result



def _put(target: np.ndarray, idx: np.ndarray, items: Sequence[Any]) -> None:
    # element-wise, so that tuples or lists among the items are stored as objects, not broadcast
    holder = np.empty(len(items), dtype=object)
    holder[:] = list(items)
    target[idx] = holder


def record_labels(frame: pd.DataFrame, key_values: np.ndarray | None) -> np.ndarray:
    """The record each row writes to: `__record__` when rows were matched, else the normalized key."""
    labels = np.full(len(frame), None, dtype=object)
    if key_values is not None:
        labels[:] = key_values
    if "__record__" in frame.columns:
        matched = frame["__record__"].to_numpy(dtype=object)
        has = ~pd.isna(matched)
        labels[has] = matched[has]
    return labels


def line_numbers(frame: pd.DataFrame) -> np.ndarray:
    """Source line numbers (`__line__`), or 1-based positions when a frame has none."""
    if "__line__" in frame.columns:
        return frame["__line__"].to_numpy()
    return np.arange(1, len(frame) + 1)


# --------------------------------------------------------------------------------------------
# columns a validated batch carries across the stage boundary (see validate.ValidationResult.carried)

REJECTED = "__rejected__"
REASONS = "__reasons__"
NORMALIZED = "__normalized__:"
CHANGE = "__change__:"


def column_of(arr: pa.Array, index: pd.Index) -> pd.Series:
    """A frame column from normalized values: float64 for numbers, text cells (NaN when missing) otherwise."""
    if pa.types.is_floating(arr.type):
        return pd.Series(arr.to_numpy(zero_copy_only=False), index=index, dtype="float64")
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type):
        return pd.Series(CELL_DTYPE.__from_arrow__(pa.chunked_array([arr.cast(pa.large_string())])), index=index)
    return pd.Series(objects(arr), index=index, dtype=object)


def cells(column: pd.Series, positions: np.ndarray) -> np.ndarray:
    """The cells of `column` at `positions` as Python objects, without converting the whole column."""
    if isinstance(column.dtype, pd.StringDtype | pd.ArrowDtype):
        try:
            arr = pa.array(column, from_pandas=True)  # chunked as read: taking a few cells joins no chunks
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            arr = None
        if arr is not None:
            picked = arr.take(pa.array(positions, type=pa.int64()))
            if isinstance(picked, pa.ChunkedArray):
                picked = picked.combine_chunks()
            return objects(picked)
    return column.to_numpy(dtype=object)[positions]


def record_keys(frame: pd.DataFrame, key: ColumnOutcome | None) -> pa.Array | np.ndarray:
    """`record_labels` as an Arrow string array when key and `__record__` are text, else as objects."""
    if key is not None and pa.types.is_string(key.normalized.type) and (
            key._raw is not None or not key.failed.any()):
        keys = key.normalized if key._raw is None else pc.coalesce(key.normalized, key._raw)  # unreadable: as written
        keys = with_nulls(keys, key.blank)
        if "__record__" not in frame.columns:
            return keys
        matched = _column_strings(frame["__record__"])
        if matched is not None:
            return pc.coalesce(matched, keys)
    return record_labels(frame, key.values if key is not None else None)


def labels_at(keys: pa.Array | np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`record_keys` at some rows, as Python objects."""
    if isinstance(keys, pa.Array):
        return objects(keys.take(pa.array(positions, type=pa.int64())))
    return keys[positions]


def evaluate_columns(frame: pd.DataFrame, rules: Sequence[AttributeRules]) -> dict[str, ColumnOutcome]:
    """`evaluate_column` for several attributes of a frame, on a thread per core: the columns are independent
    and Arrow's kernels release the GIL, so a 2-core machine evaluates nearly two at once."""
    def one(r: AttributeRules) -> ColumnOutcome:
        return r.evaluate_column(frame[r.name] if r.name in frame.columns else None, len(frame))

    if len(frame) < 10_000 or len(rules) < 2:
        return {r.name: one(r) for r in rules}
    with ThreadPoolExecutor(max_workers=min(len(rules), os.cpu_count() or 1)) as pool:
        return dict(zip((r.name for r in rules), pool.map(one, rules), strict=True))
