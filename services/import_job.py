"""The import job: the uploaded file read, its rows checked against the database (references,
duplicates) and, in commit mode and only when no row is refused, written in the job's one
transaction through the entity services (audited as `import`)."""

import logging
from collections.abc import Callable
from typing import Any

import anyio
from pydantic import BaseModel
from sqlalchemy import Table, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from core.audit import Actor
from core.exceptions import AppError
from core.jobs import JobContext, RetryPolicy, job_types
from core.schedules import Schedule, schedules
from models.audit import ActorKind
from models.data_import import DataImport, ImportFormat, ImportMode, ImportOutcome, ImportRowError
from models.job import FINISHED_STATUSES, Job
from models.notification import NotificationKind
from services.import_checks import ImportChecker, ImportPlan
from services.import_reader import read_rows
from services.import_rows import HEADER_ROW, ParsedSheet, RowError, parse_sheet
from services.import_writer import ImportWriter
from services.notifications import NotificationService
from services.spreadsheet_columns import SpreadsheetEntity

IMPORT_JOB = "import.run"
logger = logging.getLogger(__name__)
_ERRORS: Table = ImportRowError.__table__  # type: ignore[assignment]
_ERROR_BATCH = 5_000


class ImportPayload(BaseModel):
    import_id: int


IMPORT_RETRY = RetryPolicy(max_attempts=3)


@job_types.register(IMPORT_JOB, ImportPayload, retry=IMPORT_RETRY)
async def run_import(payload: ImportPayload, context: JobContext) -> None:
    """Process one import; a second pick of a finished one does nothing. An unexpected error
    is retried; on the last attempt the import fails instead, and its upload goes with it
    (a failed job would keep it)."""
    runner = ImportRunner(context.session, context.set_progress)
    try:
        await runner.run(payload.import_id)
    except Exception:
        if context.attempt < IMPORT_RETRY.max_attempts:
            raise
        logger.exception("Import %s failed on its last attempt", payload.import_id)
        await context.session.rollback()
        await runner.give_up(payload.import_id)


class UploadSweepPayload(BaseModel):
    pass


@job_types.register("imports.sweep_uploads", UploadSweepPayload, retry=RetryPolicy(max_attempts=3))
async def sweep_uploads(_: UploadSweepPayload, context: JobContext) -> None:
    """The files of imports whose job ended without processing them (cancelled through the
    Jobs API, or purged), removed: an upload is kept only while its job may still run."""
    ended = select(Job.id).where(Job.id == DataImport.job_id, Job.status.in_(FINISHED_STATUSES))
    await context.session.execute(
        update(DataImport)
        .where(
            DataImport.upload.is_not(None),
            or_(DataImport.job_id.is_(None), ended.exists()),
        )
        .values(upload=None)
        .execution_options(synchronize_session=False)
    )


schedules.add(
    Schedule(
        "imports.sweep_uploads.hourly", "20 * * * *", "imports.sweep_uploads", UploadSweepPayload
    )
)


def read_sheet(
    upload: bytes, file_format: ImportFormat, sheet: str | None, entity: SpreadsheetEntity
) -> ParsedSheet:
    """The file's rows, converted and validated (blocking: run in a thread)."""
    return parse_sheet(read_rows(upload, file_format, sheet), entity)


class ImportRunner:
    """One import processed in the job's transaction: read, checked, written, its result and
    every error recorded, its upload removed."""

    def __init__(self, session: AsyncSession, report: Callable[[int], Any]) -> None:
        self.session = session
        self.report = report

    async def run(self, import_id: int) -> None:
        stmt = (
            select(DataImport)
            .where(DataImport.id == import_id)
            .options(undefer(DataImport.upload))
            .with_for_update()
        )
        record = (await self.session.execute(stmt)).scalar_one_or_none()
        if record is None or record.outcome is not ImportOutcome.pending:
            return
        if record.upload is None:
            error = RowError(HEADER_ROW, None, None, "invalid_file", "The upload was removed")
            await self._finish(record, ParsedSheet(errors=[error]), ImportPlan())
            return
        entity = SpreadsheetEntity(record.entity)
        try:
            sheet = await anyio.to_thread.run_sync(
                read_sheet, record.upload, record.file_format, record.sheet, entity
            )
        except AppError as exc:
            error = RowError(HEADER_ROW, None, None, exc.code, exc.message)
            await self._finish(record, ParsedSheet(errors=[error]), ImportPlan())
            return
        await self.report(40)
        commit = record.mode is ImportMode.commit
        checker = ImportChecker(self.session, entity, record.on_duplicate, sheet, lock=commit)
        plan = await checker.plan()
        await self.report(70)
        if commit and not sheet.errors:
            actor = Actor(ActorKind.user, record.created_by)
            await ImportWriter(self.session, entity, sheet, record.created_by, actor).write(plan)
        await self._finish(record, sheet, plan)

    async def give_up(self, import_id: int) -> None:
        """Fail the import with one error saying so, its upload removed."""
        record = await self.session.get(DataImport, import_id)
        if record is not None and record.outcome is ImportOutcome.pending:
            error = RowError(
                HEADER_ROW, None, None, "processing_failed", "The import could not be processed"
            )
            await self._finish(record, ParsedSheet(errors=[error]), ImportPlan())

    async def _finish(self, record: DataImport, sheet: ParsedSheet, plan: ImportPlan) -> None:
        errors = sorted(sheet.errors, key=lambda error: (error.row, error.column or ""))
        for start in range(0, len(errors), _ERROR_BATCH):
            # RETURNING: multi-row INSERTs (see services.audit_recorder.record_many).
            await self.session.execute(
                insert(_ERRORS).returning(_ERRORS.c.id),
                [
                    {
                        "import_id": record.id,
                        "row": error.row,
                        "column": None if error.column is None else error.column[:255],
                        "value": error.value,
                        "code": error.code,
                        "message": error.message,
                    }
                    for error in errors[start : start + _ERROR_BATCH]
                ],
            )
        refused_rows = len({error.row for error in errors if error.row != HEADER_ROW})
        # A refused commit wrote nothing; a dry run tells what a commit would do.
        if errors and record.mode is ImportMode.commit:
            plan = ImportPlan()
        await self.session.execute(
            update(DataImport)
            .where(DataImport.id == record.id)
            .values(
                outcome=ImportOutcome.failed if errors else ImportOutcome.succeeded,
                progress=100,
                rows=sheet.row_count,
                valid=max(0, sheet.row_count - refused_rows),
                created=len(plan.creates),
                updated=len(plan.updates),
                skipped=plan.skipped,
                error_count=len(errors),
                upload=None,
                finished_at=func.now(),
            )
            .execution_options(synchronize_session=False)
        )
        title, body = _summary(record, sheet.row_count, len(errors), plan)
        # The job worked on its creator's behalf, who waits for it: they hear of its end
        # (no actor to leave out), in the transaction of its final status.
        await NotificationService(self.session).notify(
            [record.created_by],
            NotificationKind.import_finished,
            title,
            body,
            link=f"/api/v1/imports/{record.id}",
            actor_id=None,
        )


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number < 2 else plural}"


def _summary(record: DataImport, rows: int, errors: int, plan: ImportPlan) -> tuple[str, str]:
    """The notification's title and body, in French: what the import did, or why not."""
    dry_run = record.mode is ImportMode.dry_run
    read = f"{record.filename} : {_count(rows, 'ligne lue', 'lignes lues')}"
    if errors:
        title = "Essai d'import" if dry_run else "Import échoué"
        return f"{title} : {_count(errors, 'erreur', 'erreurs')}", f"{read}, rien n'a été écrit."
    created, updated = len(plan.creates), len(plan.updates)
    skipped = _count(plan.skipped, "ignorée", "ignorées")
    if dry_run:
        title = f"Essai d'import réussi : {created} à créer, {updated} à mettre à jour"
        return title, f"{read}, {skipped}, rien n'a été écrit (essai à blanc)."
    title = f"Import terminé : {_count(created, 'créé', 'créés')}, {updated} mis à jour"
    return title, f"{read}, {skipped}."
