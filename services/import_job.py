"""The import job: the uploaded file read, its rows checked against the database (references,
duplicates) and, in commit mode and only when no row is refused, written in the job's one
transaction through the entity services (audited as `import`)."""

import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel
from sqlalchemy import Integer, String, Table, any_, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer
from sqlalchemy.types import TypeEngine

from core.audit import Actor
from core.exceptions import AppError
from core.jobs import JobContext, RetryPolicy, job_types
from models.audit import ActorKind, AuditAction
from models.base import Base
from models.contact import Contact
from models.data_import import (
    DataImport,
    ImportFormat,
    ImportMode,
    ImportOutcome,
    ImportRowError,
    OnDuplicate,
)
from models.investor import Investor, InvestorStageChange
from models.kpi import Kpi
from models.user import User
from services.base import BaseService
from services.contacts import ContactService
from services.import_reader import read_rows
from services.import_rows import HEADER_ROW, MODELS, ParsedRow, ParsedSheet, RowError, parse_sheet
from services.interactions import InteractionService
from services.investors import InvestorService
from services.kpis import KpiService
from services.spreadsheet_columns import SpreadsheetEntity

IMPORT_JOB = "import.run"
logger = logging.getLogger(__name__)
_ERRORS: Table = ImportRowError.__table__  # type: ignore[assignment]
_ERROR_BATCH = 5_000
_WRITE_SLICE = 5_000
_STAGE_CHANGES: Table = InvestorStageChange.__table__  # type: ignore[assignment]


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


def read_sheet(
    upload: bytes, file_format: ImportFormat, sheet: str | None, entity: SpreadsheetEntity
) -> ParsedSheet:
    """The file's rows, converted and validated (blocking: run in a thread)."""
    return parse_sheet(read_rows(upload, file_format, sheet), entity)


@dataclass(slots=True)
class _Plan:
    creates: list[ParsedRow] = field(default_factory=list)
    updates: list[tuple[ParsedRow, Base]] = field(default_factory=list)
    skipped: int = 0


class ImportRunner:
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
            await self._finish(record, ParsedSheet(errors=[error]), _Plan())
            return
        entity = SpreadsheetEntity(record.entity)
        try:
            sheet = await anyio.to_thread.run_sync(
                read_sheet, record.upload, record.file_format, record.sheet, entity
            )
        except AppError as exc:
            error = RowError(HEADER_ROW, None, None, exc.code, exc.message)
            await self._finish(record, ParsedSheet(errors=[error]), _Plan())
            return
        await self.report(40)
        checker = _Checker(self.session, entity, record.on_duplicate, sheet)
        plan = await checker.plan()
        await self.report(70)
        if record.mode is ImportMode.commit and not sheet.errors:
            actor = Actor(ActorKind.user, record.created_by)
            await _Writer(self.session, entity, sheet, record.created_by, actor).write(plan)
        await self._finish(record, sheet, plan)

    async def give_up(self, import_id: int) -> None:
        """Fail the import with one error saying so, its upload removed."""
        record = await self.session.get(DataImport, import_id)
        if record is not None and record.outcome is ImportOutcome.pending:
            error = RowError(
                HEADER_ROW, None, None, "processing_failed", "The import could not be processed"
            )
            await self._finish(record, ParsedSheet(errors=[error]), _Plan())

    async def _finish(self, record: DataImport, sheet: ParsedSheet, plan: _Plan) -> None:
        errors = sorted(sheet.errors, key=lambda error: (error.row, error.column or ""))
        for start in range(0, len(errors), _ERROR_BATCH):
            await self.session.execute(
                insert(_ERRORS),
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
            plan = _Plan()
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


def _any(values: Iterable[Any], item_type: type[TypeEngine[Any]]) -> Any:
    """`= ANY(:array)`: one parameter however many values (an IN list binds one each, and the
    driver takes at most 32,767)."""
    return any_(bindparam(None, list(values), type_=ARRAY(item_type)))


def _email_key(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


class _Checker:
    """References resolved and duplicates found, for every row; refusals added to the sheet."""

    def __init__(
        self,
        session: AsyncSession,
        entity: SpreadsheetEntity,
        on_duplicate: OnDuplicate,
        sheet: ParsedSheet,
    ) -> None:
        self.session = session
        self.entity = entity
        self.on_duplicate = on_duplicate
        self.sheet = sheet

    def _refuse(self, row: ParsedRow, field_name: str, value: Any, code: str, message: str) -> None:
        header = self.sheet.headers.get(field_name, field_name)
        shown = None if value is None else str(value)
        self.sheet.errors.append(RowError(row.number, header, shown, code, message))

    async def plan(self) -> _Plan:
        rows = self.sheet.rows
        if self.entity is SpreadsheetEntity.investor:
            rows = await self._resolve_owners(rows)
        else:
            rows = await self._resolve_investors(rows)
        if self.entity is SpreadsheetEntity.interaction:
            rows = await self._check_contacts(rows)
        key_of, field_name = _KEYS[self.entity]
        rows = self._unique_in_file(rows, key_of, field_name)
        existing = await self._existing(rows, key_of)
        plan = _Plan()
        for row in rows:
            key = key_of(row)
            found = None if key is None else existing.get(key)
            if found is None:
                plan.creates.append(row)
            elif self.on_duplicate is OnDuplicate.error:
                self._refuse(
                    row,
                    field_name,
                    _shown_key(row, field_name),
                    "duplicate",
                    "A record with this key already exists",
                )
            elif self.on_duplicate is OnDuplicate.skip or not _differs(found, row, self.sheet):
                plan.skipped += 1
            else:
                plan.updates.append((row, found))
        return plan

    async def _resolve_owners(self, rows: list[ParsedRow]) -> list[ParsedRow]:
        emails = {_email_key(row.references.get("owner_email")) for row in rows} - {None}
        owners: dict[str, int] = {}
        if emails:
            stmt = select(func.lower(User.email), User.id).where(
                func.lower(User.email) == _any(emails, String), User.is_active.is_(True)
            )
            owners = dict((await self.session.execute(stmt)).tuples().all())
        kept = []
        for row in rows:
            email = row.references.get("owner_email")
            if "owner_email" in self.sheet.headers:
                if email is None:
                    row.values["owner_id"] = None
                elif (owner := owners.get(email.lower())) is None:
                    self._refuse(row, "owner_email", email, "unknown_reference", "No active user")
                    continue
                else:
                    row.values["owner_id"] = owner
            kept.append(row)
        return kept

    async def _resolve_investors(self, rows: list[ParsedRow]) -> list[ParsedRow]:
        ids = {row.references.get("investor_id") for row in rows} - {None}
        emails = {_email_key(row.references.get("investor_email")) for row in rows} - {None}
        by_id: set[int] = set()
        by_email: dict[str, int] = {}
        if ids:
            stmt = select(Investor.id).where(
                Investor.id == _any(ids, Integer), Investor.deleted_at.is_(None)
            )
            by_id = set((await self.session.execute(stmt)).scalars())
        if emails:
            stmt2 = select(func.lower(Investor.email), Investor.id).where(
                func.lower(Investor.email) == _any(emails, String),
                Investor.deleted_at.is_(None),
                Investor.email.is_not(None),
            )
            by_email = dict((await self.session.execute(stmt2)).tuples().all())
        kept = []
        for row in rows:
            investor_id = row.references.get("investor_id")
            email = row.references.get("investor_email")
            if investor_id is not None:
                found = investor_id if investor_id in by_id else None
                field_name, value = "investor_id", investor_id
            else:
                found = by_email.get(email.lower()) if email else None
                field_name, value = "investor_email", email
            if found is None:
                self._refuse(row, field_name, value, "unknown_reference", "No such investor")
                continue
            row.values["investor_id"] = found
            kept.append(row)
        return kept

    async def _check_contacts(self, rows: list[ParsedRow]) -> list[ParsedRow]:
        ids = {row.values.get("contact_id") for row in rows} - {None}
        found: dict[int, int] = {}
        if ids:
            stmt = select(Contact.id, Contact.investor_id).where(
                Contact.id == _any(ids, Integer), Contact.deleted_at.is_(None)
            )
            found = dict((await self.session.execute(stmt)).tuples().all())
        kept = []
        for row in rows:
            contact_id = row.values.get("contact_id")
            if contact_id is not None and found.get(contact_id) != row.values["investor_id"]:
                self._refuse(
                    row, "contact_id", contact_id, "unknown_reference", "No such contact here"
                )
                continue
            kept.append(row)
        return kept

    def _unique_in_file(
        self, rows: list[ParsedRow], key_of: Callable[[ParsedRow], Hashable | None], name: str
    ) -> list[ParsedRow]:
        first: dict[Hashable, int] = {}
        kept = []
        for row in rows:
            key = key_of(row)
            if key is not None:
                if key in first:
                    self._refuse(
                        row,
                        name,
                        _shown_key(row, name),
                        "duplicate_in_file",
                        f"Same key as row {first[key]}",
                    )
                    continue
                first[key] = row.number
            kept.append(row)
        return kept

    async def _existing(
        self, rows: list[ParsedRow], key_of: Callable[[ParsedRow], Hashable | None]
    ) -> dict[Hashable, Base]:
        """The live records the rows' keys name (locked: an update changes them)."""
        keys = [key for row in rows if (key := key_of(row)) is not None]
        if not keys:
            return {}
        found: dict[Hashable, Base] = {}
        for stmt in _lookups(self.entity, keys):
            for obj in (await self.session.execute(stmt.with_for_update())).scalars():
                found.setdefault(_record_key(self.entity, obj), obj)
        return found


def _investor_key(row: ParsedRow) -> Hashable | None:
    email = row.values.get("email")
    if email:
        return ("email", email.lower())
    name = row.values.get("name")
    return ("name", name) if name else None


def _contact_key(row: ParsedRow) -> Hashable | None:
    email = row.values.get("email")
    return (row.values["investor_id"], email.lower()) if email else None


def _kpi_key(row: ParsedRow) -> Hashable | None:
    return (row.values["investor_id"], row.values["year"], row.values["month"])


def _no_key(_: ParsedRow) -> Hashable | None:
    return None


# Each entity's duplicate key and the column a duplicate is reported on.
_KEYS: dict[SpreadsheetEntity, tuple[Callable[[ParsedRow], Hashable | None], str]] = {
    SpreadsheetEntity.investor: (_investor_key, "email"),
    SpreadsheetEntity.contact: (_contact_key, "email"),
    SpreadsheetEntity.interaction: (_no_key, "id"),
    SpreadsheetEntity.kpi: (_kpi_key, "month"),
}


def _shown_key(row: ParsedRow, name: str) -> Any:
    value = row.values.get(name)
    return row.values.get("name") if value is None and name == "email" else value


def _record_key(entity: SpreadsheetEntity, obj: Any) -> Hashable:
    if entity is SpreadsheetEntity.investor:
        return ("email", obj.email.lower()) if obj.email else ("name", obj.name)
    if entity is SpreadsheetEntity.contact:
        return (obj.investor_id, (obj.email or "").lower())
    return (obj.investor_id, obj.year, obj.month)


def _lookups(entity: SpreadsheetEntity, keys: Sequence[Any]) -> list[Any]:
    if entity is SpreadsheetEntity.investor:
        emails = [value for kind, value in keys if kind == "email"]
        names = [value for kind, value in keys if kind == "name"]
        live = Investor.deleted_at.is_(None)
        stmts = []
        if emails:
            stmts.append(
                select(Investor).where(
                    func.lower(Investor.email) == _any(emails, String),
                    Investor.email.is_not(None),
                    live,
                )
            )
        if names:
            stmts.append(
                select(Investor)
                .where(Investor.name == _any(names, String), Investor.email.is_(None), live)
                .order_by(Investor.id)
            )
        return stmts
    investor_ids = sorted({key[0] for key in keys})
    if entity is SpreadsheetEntity.contact:
        return [
            select(Contact).where(
                Contact.investor_id == _any(investor_ids, Integer),
                Contact.deleted_at.is_(None),
                Contact.email.is_not(None),
            )
        ]
    return [
        select(Kpi).where(Kpi.investor_id == _any(investor_ids, Integer), Kpi.deleted_at.is_(None))
    ]


def _differs(obj: Base, row: ParsedRow, sheet: ParsedSheet) -> bool:
    return any(getattr(obj, name) != value for name, value in _changes(row, sheet).items())


def _changes(row: ParsedRow, sheet: ParsedSheet) -> dict[str, Any]:
    """What an update sets: the fields of the file's columns (the owner when it has that
    column), never the key that found the record."""
    return {
        name: value
        for name, value in row.values.items()
        if name in sheet.fields or name == "owner_id"
    }


_SERVICES: dict[SpreadsheetEntity, type[BaseService[Any, Any, Any]]] = {
    SpreadsheetEntity.investor: InvestorService,
    SpreadsheetEntity.contact: ContactService,
    SpreadsheetEntity.interaction: InteractionService,
    SpreadsheetEntity.kpi: KpiService,
}


class _Writer:
    """The planned rows written in bulk (one flush per kind), each audited as `import`."""

    def __init__(
        self,
        session: AsyncSession,
        entity: SpreadsheetEntity,
        sheet: ParsedSheet,
        created_by: int | None,
        actor: Actor,
    ) -> None:
        self.session = session
        self.entity = entity
        self.sheet = sheet
        self.created_by = created_by
        self.actor = actor
        self.service = _SERVICES[entity](session)

    async def write(self, plan: _Plan) -> None:
        audited = self.service.audited_fields()
        # In slices: what a slice's statements bind is freed before the next one's is built,
        # so the job's memory does not grow with the file.
        for start in range(0, len(plan.creates), _WRITE_SLICE):
            created = await self._insert(plan.creates[start : start + _WRITE_SLICE])
            if self.entity is SpreadsheetEntity.investor:
                await self._record_stages(created, [], {})
            await self.service.audit_many(
                AuditAction.import_,
                [(row, {name: row[name] for name in audited}) for row in created],
                actor=self.actor,
            )
        previous_stages: dict[int, Any] = {}
        changed: list[tuple[Any, dict[str, Any]]] = []
        for row, obj in plan.updates:
            if isinstance(obj, Investor):
                previous_stages[obj.id] = obj.pipeline_stage
            for name, value in _changes(row, self.sheet).items():
                setattr(obj, name, value)
            changed.append((obj, self.service.pending_changes(obj)))
        await self.session.flush()
        if self.entity is SpreadsheetEntity.investor:
            await self._record_stages([], changed, previous_stages)
        await self.service.audit_many(AuditAction.import_, changed, actor=self.actor)

    async def _insert(self, rows: Sequence[ParsedRow]) -> list[Any]:
        """The new rows, inserted in batches of one statement each (not as ORM objects: 50,000
        of them cost more than the import's whole SQL), as mappings of their columns."""
        table: Table = MODELS[self.entity].__table__  # type: ignore[assignment]
        extra: dict[str, Any] = {}
        if self.entity is SpreadsheetEntity.interaction:
            extra["created_by"] = self.created_by
        # One statement binds the same columns for every row: rows leaving out a NOT NULL
        # column (its default applies) go in a group of their own.
        groups: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in rows:
            values = {**row.values, **extra}
            groups.setdefault(frozenset(values), []).append(values)
        # What the audit entries and the stage history need, not the generated search texts.
        returned = [table.c[name] for name in {"id", *self.service.audited_fields()}]
        inserted: list[Any] = []
        for group in groups.values():
            result = await self.session.execute(
                insert(table).returning(*returned, sort_by_parameter_order=True), group
            )
            inserted += result.mappings().all()
        return inserted

    async def _record_stages(
        self,
        created: Sequence[Any],
        changed: Sequence[tuple[Any, dict[str, Any]]],
        previous: dict[int, Any],
    ) -> None:
        moves = [self._stage_change(row["id"], None, row["pipeline_stage"]) for row in created]
        moves += [
            self._stage_change(obj.id, previous[obj.id], obj.pipeline_stage)
            for obj, changes in changed
            if "pipeline_stage" in changes
        ]
        if moves:
            # RETURNING: multi-row INSERTs (see services.audit_recorder.record_many).
            await self.session.execute(insert(_STAGE_CHANGES).returning(_STAGE_CHANGES.c.id), moves)

    def _stage_change(self, investor_id: int, from_stage: Any, to_stage: Any) -> dict[str, Any]:
        return {
            "investor_id": investor_id,
            "from_stage": from_stage,
            "to_stage": to_stage,
            "changed_by": self.created_by,
        }
