"""Imports as the API shows them: accepted (checked, stored, queued), read, listed, and their
errors as CSV. The processing itself is the job of services/import_job.py."""

import csv
import io
from pathlib import PureWindowsPath
from typing import Any

import anyio
from pydantic import BaseModel
from sqlalchemy import Select, case, func, select, update

from core.config import settings
from core.exceptions import PayloadTooLargeError
from models.data_import import (
    DataImport,
    ImportMode,
    ImportOutcome,
    ImportRowError,
    OnDuplicate,
)
from models.job import Job, JobStatus
from schemas.data_import import ImportErrorRead, ImportRead, ImportSummary
from services.base import BaseService
from services.import_job import IMPORT_JOB, ImportPayload
from services.import_reader import count_data_rows, sniff
from services.jobs import JobService
from services.spreadsheet_columns import SpreadsheetEntity

ERRORS_SHOWN = 1_000
_CSV_BATCH = 2_000
ERRORS_CSV_HEADER = ("row", "column", "value", "code", "message")


class ImportTooLarge(PayloadTooLargeError):
    message = "The file is larger than IMPORT_MAX_BYTES"


# The import's status: its own outcome once processed, its job's status before (queued,
# running, or cancelled / failed when the job ended without processing it).
_STATUS = case(
    (DataImport.outcome == ImportOutcome.succeeded, JobStatus.succeeded.value),
    (DataImport.outcome == ImportOutcome.failed, JobStatus.failed.value),
    (Job.status.is_(None), JobStatus.failed.value),
    else_=Job.status,
).label("status")
_PROGRESS = case(
    (DataImport.outcome != ImportOutcome.pending, DataImport.progress),
    else_=Job.progress,
).label("progress")
_SUMMARY_COLUMNS = [
    getattr(DataImport, name)
    for name in ImportSummary.model_fields
    if name not in ("status", "progress")
]


class ImportService(BaseService[DataImport, BaseModel, BaseModel]):
    model = DataImport
    default_sort = "-id"
    not_found_message = "Import not found"

    async def accept(
        self,
        upload: bytes,
        *,
        filename: str,
        entity: SpreadsheetEntity,
        mode: ImportMode,
        on_duplicate: OnDuplicate,
        sheet: str | None,
        created_by: int,
    ) -> ImportRead:
        """Check the file (format by content, safety, row count: off the event loop), store it
        with a new import and queue its job; 413, 415 or 422 when refused."""
        if len(upload) > settings.import_max_bytes:
            raise ImportTooLarge()
        file_format = sniff(upload)
        await anyio.to_thread.run_sync(count_data_rows, upload, file_format, sheet)
        record = DataImport(
            entity=entity.value,
            mode=mode,
            on_duplicate=on_duplicate,
            file_format=file_format,
            filename=_shown_name(filename),
            sheet=sheet,
            outcome=ImportOutcome.pending,
            upload=upload,
            created_by=created_by,
        )
        self.session.add(record)
        await self.session.flush()
        job_id = await JobService(self.session).enqueue(
            IMPORT_JOB, ImportPayload(import_id=record.id), created_by=created_by
        )
        await self.session.execute(
            update(DataImport)
            .where(DataImport.id == record.id)
            .values(job_id=job_id)
            .execution_options(synchronize_session=False)
        )
        return await self.read(record.id)

    def _summaries(self) -> Select[Any]:
        return select(*_SUMMARY_COLUMNS, _STATUS, _PROGRESS).outerjoin(
            Job, Job.id == DataImport.job_id
        )

    async def read(self, import_id: int) -> ImportRead:
        """One import with its first ERRORS_SHOWN errors."""
        row = (
            (await self.session.execute(self._summaries().where(DataImport.id == import_id)))
            .mappings()
            .one_or_none()
        )
        if row is None:
            raise self.not_found()
        errors = await self.session.execute(
            select(ImportRowError)
            .where(ImportRowError.import_id == import_id)
            .order_by(ImportRowError.id)
            .limit(ERRORS_SHOWN)
        )
        return ImportRead(
            **row, errors=[ImportErrorRead.model_validate(error) for error in errors.scalars()]
        )

    async def list_imports(self, *, skip: int, limit: int) -> tuple[list[ImportSummary], int]:
        """A page of imports, newest first."""
        total = (
            await self.session.execute(select(func.count()).select_from(DataImport))
        ).scalar_one()
        if skip >= total:
            return [], total
        stmt = self._summaries().order_by(DataImport.id.desc()).offset(skip).limit(limit)
        rows = (await self.session.execute(stmt)).mappings()
        return [ImportSummary.model_validate(row) for row in rows], total

    async def errors_csv(self, import_id: int) -> str:
        """Every error of the import as CSV (UTF-8 with BOM, `;`: what French Excel opens),
        read in batches along the import's index."""
        await self.ensure_exists(import_id)
        buffer = io.StringIO()
        buffer.write("\ufeff")
        writer = csv.writer(buffer, delimiter=";")
        writer.writerow(ERRORS_CSV_HEADER)
        after = 0
        while True:
            stmt = (
                select(
                    ImportRowError.id,
                    ImportRowError.row,
                    ImportRowError.column,
                    ImportRowError.value,
                    ImportRowError.code,
                    ImportRowError.message,
                )
                .where(ImportRowError.import_id == import_id, ImportRowError.id > after)
                .order_by(ImportRowError.id)
                .limit(_CSV_BATCH)
            )
            rows = (await self.session.execute(stmt)).all()
            for row in rows:
                writer.writerow([row.row, row.column, _safe(row.value), row.code, row.message])
            if len(rows) < _CSV_BATCH:
                return buffer.getvalue()
            after = rows[-1].id


def _shown_name(filename: str) -> str:
    """The file's own name, as the client sent it, without a path or control characters (a NUL
    would not even reach PostgreSQL)."""
    name = PureWindowsPath(filename).name
    return "".join(c for c in name if c.isprintable())[:255] or "upload"


def _safe(value: str | None) -> str | None:
    """A cell a spreadsheet would run as a formula, quoted as the exports do."""
    if value and value[0] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
