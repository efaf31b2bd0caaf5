"""The GDPR export as a spreadsheet: one sheet per kind of record, one row per record
(docs/adr/0014-export-xlsx.md)."""

import io
from datetime import date, datetime
from enum import Enum
from typing import Any

import xlsxwriter  # type: ignore[import-untyped]  # ships no type information

from schemas.gdpr import PersonalDataExport

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
SHEETS = ("users", "investors", "contacts", "interactions")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def export_workbook(document: PersonalDataExport) -> bytes:
    """The export as .xlsx bytes. Every cell is written as text: a value typed into the CRM
    that starts with "=" must never become a formula in the reader's spreadsheet."""
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(
        buffer,
        {
            "in_memory": True,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
        },
    )
    for name in SHEETS:
        sheet = workbook.add_worksheet(name)
        records = getattr(document, name)
        fields = list(type(records[0]).model_fields) if records else []
        for column, field in enumerate(fields):
            sheet.write_string(0, column, field)
        for row, record in enumerate(records, start=1):
            for column, field in enumerate(fields):
                sheet.write_string(row, column, _cell(getattr(record, field)))
    workbook.close()
    return buffer.getvalue()
