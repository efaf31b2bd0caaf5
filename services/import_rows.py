"""An import's rows read and checked on their own (no database): the header matched to the
entity's columns, each cell converted, each row validated by the entity's input schema.
Blocking work: the import job runs it in a thread."""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from models.base import Base
from models.contact import Contact
from models.interaction import Interaction
from models.investor import Investor
from models.kpi import Kpi
from schemas.contact import ContactCreate
from schemas.interaction import InteractionCreate
from schemas.investor import InvestorCreate
from schemas.kpi import KpiUpsert
from services.import_reader import SheetRow
from services.import_values import CellError, cell_text, convert
from services.spreadsheet_columns import (
    SpreadsheetColumn,
    SpreadsheetEntity,
    header_index,
    normalise_header,
)

# Columns that name another record rather than hold a value of the row's own.
REFERENCE_FIELDS = frozenset({"investor_id", "investor_email", "owner_email"})
HEADER_ROW = 1

SCHEMAS: Mapping[SpreadsheetEntity, type[BaseModel]] = {
    SpreadsheetEntity.investor: InvestorCreate,
    SpreadsheetEntity.contact: ContactCreate,
    SpreadsheetEntity.interaction: InteractionCreate,
    SpreadsheetEntity.kpi: KpiUpsert,
}
MODELS: Mapping[SpreadsheetEntity, type[Base]] = {
    SpreadsheetEntity.investor: Investor,
    SpreadsheetEntity.contact: Contact,
    SpreadsheetEntity.interaction: Interaction,
    SpreadsheetEntity.kpi: Kpi,
}
# Pydantic's error types, as the import's error codes (anything else is invalid_value).
_PYDANTIC_CODES = {
    "missing": "required",
    "string_too_short": "required",
    "string_too_long": "too_long",
    "greater_than_equal": "invalid_number",
    "less_than_equal": "invalid_number",
    "greater_than": "invalid_number",
    "less_than": "invalid_number",
    "decimal_max_digits": "invalid_number",
    "decimal_max_places": "invalid_number",
    "decimal_whole_digits": "invalid_number",
}


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    column: str | None
    value: str | None
    code: str
    message: str


@dataclass(slots=True)
class ParsedRow:
    """A valid row: its number, its fields (those of the file's columns), its references."""

    number: int
    values: dict[str, Any]
    references: dict[str, Any]


@dataclass(slots=True)
class ParsedSheet:
    rows: list[ParsedRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    row_count: int = 0
    # The record fields the file has a column for (an update changes only these).
    fields: frozenset[str] = frozenset()
    headers: dict[str, str] = field(default_factory=dict)


def parse_sheet(rows: Iterator[SheetRow], entity: SpreadsheetEntity) -> ParsedSheet:
    """Every row of the file converted and validated; refused cells become errors."""
    sheet = ParsedSheet()
    header = next(rows, None)
    if header is None:
        return sheet
    columns = _match_header(header, entity, sheet)
    sheet.fields = frozenset(
        column.field for column in columns.values() if column.field not in REFERENCE_FIELDS
    )
    sheet.headers = {column.field: column.header_fr for column in columns.values()}
    schema = SCHEMAS[entity]
    table = MODELS[entity].__table__
    for row in rows:
        sheet.row_count += 1
        parsed = _parse_row(row, columns, schema, table, sheet)
        if parsed is not None:
            if entity is not SpreadsheetEntity.investor and not (
                parsed.references.get("investor_id") or parsed.references.get("investor_email")
            ):
                sheet.errors.append(
                    RowError(
                        row.number,
                        sheet.headers.get("investor_email", "E-mail investisseur"),
                        None,
                        "required",
                        "An investor_id or an investor_email is required",
                    )
                )
                continue
            sheet.rows.append(parsed)
    return sheet


def _match_header(
    header: SheetRow, entity: SpreadsheetEntity, sheet: ParsedSheet
) -> dict[int, SpreadsheetColumn]:
    index = header_index(entity)
    columns: dict[int, SpreadsheetColumn] = {}
    for position, cell in enumerate(header.cells):
        text = cell_text(cell).strip()
        if not text:
            continue
        column = index.get(normalise_header(text))
        if column is None:
            sheet.errors.append(
                RowError(HEADER_ROW, text, None, "unknown_column", "This header matches no column")
            )
        elif not column.read_only:
            columns[position] = column
    return columns


def _parse_row(
    row: SheetRow,
    columns: Mapping[int, SpreadsheetColumn],
    schema: type[BaseModel],
    table: Any,
    sheet: ParsedSheet,
) -> ParsedRow | None:
    values: dict[str, Any] = {}
    references: dict[str, Any] = {}
    failed = False
    cells = row.cells
    for position, column in columns.items():
        raw = cells[position] if position < len(cells) else None
        try:
            value = convert(column, raw)
        except CellError as exc:
            sheet.errors.append(
                RowError(row.number, column.header_fr, cell_text(raw), exc.code, exc.message)
            )
            failed = True
            continue
        if value is None and column.required:
            sheet.errors.append(
                RowError(row.number, column.header_fr, None, "required", "A value is required")
            )
            failed = True
        elif column.field in REFERENCE_FIELDS:
            references[column.field] = value
        elif value is not None or table.c[column.field].nullable:
            # A blank cell clears a nullable field; a NOT NULL one keeps its default.
            values[column.field] = value
    if failed:
        return None
    try:
        validated = schema.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            name = str(error["loc"][0]) if error["loc"] else None
            header = sheet.headers.get(name or "", name)
            value = values.get(name or "")
            sheet.errors.append(
                RowError(
                    row.number,
                    header,
                    None if value is None else cell_text(value),
                    _PYDANTIC_CODES.get(error["type"], "invalid_value"),
                    error["msg"],
                )
            )
        return None
    return ParsedRow(row.number, validated.model_dump(include=set(values)), references)
