"""Spreadsheet cells to record values: dates, numbers, booleans and enums as people type them
in French or English, each refusal an error code the import reports for its cell."""

import enum
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import TypeAdapter, ValidationError

from schemas.common import Email
from services.import_reader import UncachedFormula
from services.spreadsheet_columns import (
    BOOLEAN_LABELS,
    ENUM_LABELS,
    ColumnType,
    SpreadsheetColumn,
    needs_apostrophe,
    normalise_header,
)

_EXCEL_EPOCH = date(1899, 12, 30)
_FRENCH_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
# 1234.56, 1234,56, 1 234,56 (with any kind of space), -12
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
_SPACES = re.compile(r"[\s\u00a0\u202f]")
_TRUE = {"oui", "true", "yes", "vrai", "1", normalise_header(BOOLEAN_LABELS[True])}
_FALSE = {"non", "false", "no", "faux", "0", normalise_header(BOOLEAN_LABELS[False])}
_EMAIL: TypeAdapter[str] = TypeAdapter(Email)


class CellError(Exception):
    """A cell the import refuses: its error code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def cell_text(raw: Any) -> str:
    """The cell as text, as errors.csv shows it (a whole number without its `.0`)."""
    if raw is None:
        return ""
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    if isinstance(raw, datetime):
        return raw.isoformat(sep=" ")
    return str(raw)


def convert(column: SpreadsheetColumn, raw: Any) -> Any:
    """The value of `raw` for the column, None for a blank cell; CellError when refused."""
    if isinstance(raw, str):
        raw = raw.strip()
        # The apostrophe an export put before a text a spreadsheet would run as a formula.
        if raw.startswith("'") and needs_apostrophe(raw[1:]):
            raw = raw[1:]
        if not raw:
            return None
    if raw is None:
        return None
    if isinstance(raw, UncachedFormula):
        raise CellError(
            "invalid_value", "A formula without a computed value: save it in a spreadsheet"
        )
    return _CONVERTERS[column.kind](column, raw)


def _text(column: SpreadsheetColumn, raw: Any) -> str:
    value = cell_text(raw)
    if column.max_length is not None and len(value) > column.max_length:
        raise CellError("too_long", f"At most {column.max_length} characters")
    if "\x00" in value:
        raise CellError("invalid_value", "A text may not hold NUL characters")
    return value


def _email(column: SpreadsheetColumn, raw: Any) -> str:
    value = _text(column, raw)
    try:
        return _EMAIL.validate_python(value)
    except ValidationError:
        raise CellError("invalid_email", "Not a valid email address") from None


def _number(raw: Any) -> Decimal:
    if isinstance(raw, bool):
        raise CellError("invalid_number", "Not a number")
    if isinstance(raw, int | float):
        try:
            return Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
        except InvalidOperation:
            raise CellError("invalid_number", "Not a number") from None
    text = _SPACES.sub("", str(raw))
    if not _NUMBER.fullmatch(text):
        raise CellError("invalid_number", "Not a number (1234.56 or 1 234,56)")
    return Decimal(text.replace(",", "."))


def _integer(_: SpreadsheetColumn, raw: Any) -> int:
    value = _number(raw)
    if value != value.to_integral_value():
        raise CellError("invalid_number", "Not a whole number")
    return int(value)


def _decimal(_: SpreadsheetColumn, raw: Any) -> Decimal:
    value = _number(raw)
    if isinstance(raw, float):
        # A binary float of Excel's: 1234.56 arrives as 1234.5599999999999.
        value = value.quantize(Decimal("0.01"))
    if value != value.quantize(Decimal("0.01")):
        raise CellError("invalid_number", "At most 2 decimals")
    return value


def _boolean(_: SpreadsheetColumn, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    key = normalise_header(cell_text(raw))
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise CellError("invalid_value", "Allowed values: Oui, Non")


def _date(_: SpreadsheetColumn, raw: Any) -> date:
    if isinstance(raw, datetime):
        return raw.date()
    if isinstance(raw, date):
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool) and 0 < raw < 2958466:
        return _EXCEL_EPOCH + timedelta(days=int(raw))
    text = str(raw)
    try:
        if match := _ISO_DATE.fullmatch(text):
            year, month, day = match.groups()
            return date(int(year), int(month), int(day))
        if match := _FRENCH_DATE.fullmatch(text):
            day, month, year = match.groups()
            return date(int(year), int(month), int(day))
    except ValueError:
        pass
    raise CellError("invalid_date", "Not a date (YYYY-MM-DD or DD/MM/YYYY)")


def _enum(column: SpreadsheetColumn, raw: Any) -> enum.StrEnum:
    enum_class = column.enum_class
    assert enum_class is not None
    labels: Mapping[str, str] = ENUM_LABELS.get(enum_class, {})
    key = normalise_header(cell_text(raw))
    for member in enum_class:
        if key in (normalise_header(member.value), normalise_header(labels.get(member, ""))):
            return member
    allowed = ", ".join(labels.get(member, member.value) for member in enum_class)
    raise CellError("invalid_value", f"Allowed values: {allowed}")


def _ignored(_: SpreadsheetColumn, raw: Any) -> Any:
    return raw


_CONVERTERS = {
    ColumnType.text: _text,
    ColumnType.phone: _text,
    ColumnType.email: _email,
    ColumnType.integer: _integer,
    ColumnType.money: _decimal,
    ColumnType.percent: _decimal,
    ColumnType.boolean: _boolean,
    ColumnType.date: _date,
    ColumnType.datetime: _ignored,
    ColumnType.enum: _enum,
}
