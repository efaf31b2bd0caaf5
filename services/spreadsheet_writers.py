"""Writing records as CSV text and xlsx cells, column by column (services.spreadsheet_columns):
the exports' rows and the import templates (docs/adr/0014-export-xlsx.md).

A text a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, carriage return first)
never becomes one: CSV gets a leading apostrophe, which the import strips again; xlsx cells are
always written as strings, never parsed."""

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import IO, Any
from zoneinfo import ZoneInfo

import xlsxwriter  # type: ignore[import-untyped]  # ships no type information

from core.config import settings
from services.spreadsheet_columns import (
    APOSTROPHE_CANDIDATES,
    BOOLEAN_LABELS,
    COLUMNS,
    ENUM_LABELS,
    FILE_STEMS,
    ColumnType,
    SpreadsheetColumn,
    SpreadsheetEntity,
    import_columns,
    needs_apostrophe,
)

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
UTF8_BOM = "\ufeff"
_TEXT_KINDS = frozenset({ColumnType.text, ColumnType.email, ColumnType.phone})
_DECIMAL_KINDS = frozenset({ColumnType.money, ColumnType.percent})
# Rows of a template that get the drop-down lists of its enum and yes/no columns.
TEMPLATE_VALIDATED_ROWS = 100_000
_WORKBOOK_OPTIONS = {
    "strings_to_formulas": False,
    "strings_to_urls": False,
    "strings_to_numbers": False,
}


def _paris(moment: datetime) -> datetime:
    """Excel has no time zones: a timestamp is written as the wall-clock time of the CRM's zone."""
    return moment.astimezone(ZoneInfo(settings.timezone)).replace(tzinfo=None)


def _label(column: SpreadsheetColumn, value: Any, lang: str) -> str:
    code = value.value if isinstance(value, Enum) else str(value)
    if lang == "en" or column.enum_class is None:
        return code
    return ENUM_LABELS[column.enum_class][code]


def _boolean(value: bool, lang: str) -> str:
    return ("true" if value else "false") if lang == "en" else BOOLEAN_LABELS[value]


def _neutralised(text: str) -> str:
    if text[:1] not in APOSTROPHE_CANDIDATES:  # most texts: no call made
        return text
    return f"'{text}" if needs_apostrophe(text) else text


def _xlsx_text(text: str) -> str:
    """A string cell is never a formula; only a text the import would take for a neutralised
    one (an apostrophe before a formula sign) gets one more apostrophe, which it removes."""
    return f"'{text}" if text.startswith("'") and needs_apostrophe(text) else text


CsvFormatter = Callable[[Any], str]


def csv_formatter(column: SpreadsheetColumn, *, lang: str, decimal_comma: bool) -> CsvFormatter:
    """How the column's non-null values are written in CSV: ISO dates, Paris timestamps,
    2-decimal amounts (with a decimal comma beside the `;` separator, as French Excel reads
    them), labels in the file's language. Built once per export: a cell is one call."""
    kind = column.kind
    if kind in _TEXT_KINDS:
        return _neutralised
    if kind in _DECIMAL_KINDS:
        if decimal_comma:
            return lambda value: f"{value:.2f}".replace(".", ",")
        return lambda value: f"{value:.2f}"
    if kind is ColumnType.boolean:
        return lambda value: _boolean(bool(value), lang)
    if kind is ColumnType.enum:
        labels = {} if column.enum_class is None else ENUM_LABELS[column.enum_class]
        if lang == "en" or not labels:
            return lambda value: str(value.value if isinstance(value, Enum) else value)
        return lambda value: labels[value]
    if kind is ColumnType.datetime:
        zone = ZoneInfo(settings.timezone)
        # The wall-clock time without its offset: the first 19 characters of the ISO form.
        return lambda value: value.astimezone(zone).isoformat(" ", "seconds")[:19]
    if kind is ColumnType.date:
        return lambda value: str(value.isoformat())
    return str


def csv_row(formatters: Sequence[CsvFormatter], values: Sequence[Any]) -> list[str]:
    """One row's CSV cells: an empty cell for null, the column's formatter otherwise."""
    return [
        "" if value is None else format_(value)
        for format_, value in zip(formatters, values, strict=True)
    ]


def csv_lines(rows: Iterable[Sequence[str]], delimiter: str) -> str:
    """Rows of cells as CSV text (quoted where needed, CRLF line ends as Excel writes them)."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


def sheet_name(entity: SpreadsheetEntity, lang: str) -> str:
    return f"{entity.value}s" if lang == "en" else FILE_STEMS[entity].capitalize()


class SheetWriter:
    """An xlsx workbook written row after row: the data sheet (bold frozen header, typed cells,
    widths, autofilter over what was written) and a last sheet of key/value lines."""

    def __init__(
        self,
        target: IO[bytes] | io.BytesIO,
        columns: Sequence[SpreadsheetColumn],
        *,
        title: str,
        lang: str,
        constant_memory: bool,
    ) -> None:
        self.columns = columns
        self.lang = lang
        self.workbook = xlsxwriter.Workbook(
            target, {**_WORKBOOK_OPTIONS, "constant_memory": constant_memory}
        )
        bold = self.workbook.add_format({"bold": True})
        self._formats = {
            ColumnType.date: self.workbook.add_format({"num_format": "dd/mm/yyyy"}),
            ColumnType.datetime: self.workbook.add_format({"num_format": "dd/mm/yyyy hh:mm:ss"}),
            ColumnType.money: self.workbook.add_format({"num_format": "#,##0.00"}),
            ColumnType.percent: self.workbook.add_format({"num_format": "0.00"}),
        }
        self.sheet = self.workbook.add_worksheet(title)
        for index, column in enumerate(columns):
            self.sheet.set_column(index, index, column.width)
            self.sheet.write_string(0, index, column.header(lang), bold)
        self.sheet.freeze_panes(1, 0)
        self.next_row = 1

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Append rows (from a worker thread: one batch at a time, never two at once)."""
        for values in rows:
            for index, (column, value) in enumerate(zip(self.columns, values, strict=True)):
                self._write(self.next_row, index, column, value)
            self.next_row += 1

    def _write(self, row: int, index: int, column: SpreadsheetColumn, value: Any) -> None:
        if value is None:
            return
        kind = column.kind
        if kind in _TEXT_KINDS:
            self.sheet.write_string(row, index, _xlsx_text(str(value)))
        elif kind is ColumnType.integer:
            self.sheet.write_number(row, index, int(value))
        elif kind in _DECIMAL_KINDS:
            self.sheet.write_number(row, index, float(value), self._formats[kind])
        elif kind is ColumnType.boolean:
            self.sheet.write_string(row, index, _boolean(bool(value), self.lang))
        elif kind is ColumnType.enum:
            self.sheet.write_string(row, index, _label(column, value, self.lang))
        elif kind is ColumnType.datetime:
            self.sheet.write_datetime(row, index, _paris(value), self._formats[kind])
        else:
            self.sheet.write_datetime(row, index, _as_datetime(value), self._formats[kind])

    def close(self, lines: Sequence[tuple[str, str]], *, lines_title: str) -> None:
        """Finish the data sheet, add the key/value sheet and write the file."""
        last = len(self.columns) - 1
        self.sheet.autofilter(0, 0, max(self.next_row - 1, 0), last)
        sheet = self.workbook.add_worksheet(lines_title)
        sheet.set_column(0, 0, 28)
        sheet.set_column(1, 1, 60)
        for row, (key, value) in enumerate(lines):
            sheet.write_string(row, 0, key)
            sheet.write_string(row, 1, value)
        self.workbook.close()


def _as_datetime(value: date) -> datetime:
    return datetime(value.year, value.month, value.day)


# The example row of each template: valid as it stands for an investor; the other templates
# name an investor by an email that must exist in the CRM.
TEMPLATE_EXAMPLES: dict[SpreadsheetEntity, dict[str, Any]] = {
    SpreadsheetEntity.investor: {
        "name": "Exemple Patrimoine",
        "email": "contact@exemple-patrimoine.fr",
        "phone": "+33 1 23 45 67 89",
        "website": "https://exemple-patrimoine.fr",
        "company": "Exemple Patrimoine SAS",
        "industry": "Gestion de patrimoine",
        "pipeline_stage": "prospect_tiede",
        "client_type": "cgpi",
        "is_active": True,
        "notes": "Rencontré au salon Patrimonia",
    },
    SpreadsheetEntity.contact: {
        "investor_email": "contact@exemple-patrimoine.fr",
        "name": "Jeanne Martin",
        "email": "jeanne.martin@exemple-patrimoine.fr",
        "phone": "06 12 34 56 78",
        "title": "Directrice associée",
    },
    SpreadsheetEntity.interaction: {
        "investor_email": "contact@exemple-patrimoine.fr",
        "type": "reunion",
        "date": date(2026, 1, 15),
        "duration_minutes": 45,
        "subject": "Présentation du fonds",
    },
    SpreadsheetEntity.kpi: {
        "investor_email": "contact@exemple-patrimoine.fr",
        "year": 2026,
        "month": 1,
        "rdv_count": 2,
        "pitchs": 1,
        "due_diligences": 0,
        "closings": 0,
        "revenue": Decimal("12500.00"),
        "commission_rate": Decimal("1.50"),
    },
}


def template_workbook(entity: SpreadsheetEntity) -> bytes:
    """The import template of `entity`: French headers, one example row, and drop-down lists of
    the accepted labels on enum and yes/no columns."""
    columns = import_columns(entity)
    buffer = io.BytesIO()
    writer = SheetWriter(
        buffer, columns, title=sheet_name(entity, "fr"), lang="fr", constant_memory=False
    )
    example = TEMPLATE_EXAMPLES[entity]
    writer.write_rows([[example.get(column.field) for column in columns]])
    for index, column in enumerate(columns):
        choices = _choices(column)
        if choices:
            writer.sheet.data_validation(
                1,
                index,
                TEMPLATE_VALIDATED_ROWS,
                index,
                {"validate": "list", "source": choices, "ignore_blank": True},
            )
    help_lines = [
        ("Modèle d'import", f"{FILE_STEMS[entity]} ({len(COLUMNS[entity])} colonnes connues)"),
        ("Obligatoire", ", ".join(c.header_fr for c in columns if c.required)),
        ("Exemple", "la ligne 2 est un exemple : remplacez-la par vos données"),
    ]
    writer.close(help_lines, lines_title="Aide")
    return buffer.getvalue()


def _choices(column: SpreadsheetColumn) -> list[str]:
    if column.enum_class is not None:
        return list(ENUM_LABELS[column.enum_class].values())
    if column.kind is ColumnType.boolean:
        return list(BOOLEAN_LABELS.values())
    return []
