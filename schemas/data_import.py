from datetime import datetime

from models.data_import import ImportMode, OnDuplicate
from models.job import JobStatus
from schemas.common import ReadModel, bounded_str
from services.spreadsheet_columns import SpreadsheetEntity

# A workbook's sheet, by name.
SheetName = bounded_str(255, min_length=1)


class ImportErrorRead(ReadModel):
    row: int | None
    column: str | None
    value: str | None
    code: str
    message: str


class ImportSummary(ReadModel):
    id: int
    entity: SpreadsheetEntity
    mode: ImportMode
    on_duplicate: OnDuplicate
    filename: str
    status: JobStatus
    progress: int
    rows: int
    valid: int
    created: int
    updated: int
    skipped: int
    error_count: int
    created_by: int | None
    created_at: datetime
    finished_at: datetime | None


class ImportRead(ImportSummary):
    # The first ERRORS_SHOWN errors; errors.csv holds every one.
    errors: list[ImportErrorRead]
