"""Spreadsheet exports: every record a list route would show, as CSV or xlsx, in constant memory.

Rows are read in batches through a server-side cursor of one read-only REPEATABLE READ
transaction on a connection of the export's own (core.db snapshot sessions): the file is one
consistent picture however long it takes, and the request's own sessions are never held.
CSV is streamed as it is read; xlsx is written (XlsxWriter's constant-memory mode) to an
anonymous temporary file in worker threads, then streamed from it."""

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Integer, Row, Select, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import Actor
from core.config import settings
from core.db import AsyncSnapshotSession, db
from core.exceptions import AppError
from models.audit import AuditAction
from models.contact import Contact
from models.interaction import Interaction
from models.investor import Investor
from models.kpi import Kpi
from models.user import User
from schemas.export import ContactExportFilters, ExportFormat, ExportOptions
from schemas.interaction import InteractionFilters
from schemas.investor import InvestorFilters
from schemas.kpi import KpiFilters
from services import investor_search
from services.audit_recorder import record
from services.contacts import ContactService
from services.interactions import InteractionService
from services.investors import InvestorService
from services.kpis import LIST_ORDER, KpiService
from services.spreadsheet_columns import COLUMNS, FILE_STEMS, SpreadsheetEntity
from services.spreadsheet_writers import (
    UTF8_BOM,
    SheetWriter,
    csv_formatter,
    csv_lines,
    csv_row,
    sheet_name,
)

# Rows fetched per round trip of the cursor, and written per hop to a worker thread.
BATCH_ROWS = 2_000
# Bytes read from the finished xlsx file per chunk of the response.
FILE_CHUNK_BYTES = 256 * 1024


ExportFilters = InvestorFilters | ContactExportFilters | InteractionFilters | KpiFilters


class ExportBusy(AppError):
    status_code = 429
    code = "export_busy"
    message = "Too many exports are running, try again in a moment"


class ExportSlots:
    """At most EXPORT_CONCURRENCY exports per process: each holds a connection and a snapshot
    (which holds back vacuum) for its whole length, so one more is refused, not queued."""

    def __init__(self) -> None:
        self.taken = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the block; ExportBusy when none is free."""
        if self.taken >= settings.export_concurrency:
            raise ExportBusy()
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1


export_slots = ExportSlots()


@dataclass(frozen=True)
class ExportPlan:
    """What one export holds: the list route's filters (and sort), or a search for investors."""

    entity: SpreadsheetEntity
    filters: ExportFilters
    caller_id: int
    sort: str | None = None
    search: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(ZoneInfo(settings.timezone)))

    def filename(self, file_format: ExportFormat) -> str:
        """The French name of the file, dated in the CRM's zone: investisseurs_2026-11-26.xlsx."""
        return f"{FILE_STEMS[self.entity]}_{self.started_at.date().isoformat()}.{file_format}"

    def applied_filters(self) -> dict[str, Any]:
        return self.filters.model_dump(mode="json", exclude_none=True)

    def description(self, lang: str, rows: int) -> list[tuple[str, str]]:
        """The lines of the filters sheet: what was exported, when, how, how many."""
        label = _LABELS[lang]
        lines = [
            (label["export"], FILE_STEMS[self.entity]),
            (label["date"], self.started_at.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ]
        lines += [
            (f"{label['filter']} {name}", str(value))
            for name, value in self.applied_filters().items()
        ]
        if self.search is not None:
            lines.append((label["search"], self.search))
            lines.append((label["limit"], label["limit_text"]))
        sort = self.sort or (label["relevance"] if self.search is not None else None)
        if sort is not None:
            lines.append((label["sort"], sort))
        lines.append((label["rows"], str(rows)))
        return lines


_CAP = investor_search.SEARCH_CANDIDATES
_LABELS = {
    "fr": {
        "export": "Export",
        "date": "Date",
        "filter": "Filtre",
        "search": "Recherche",
        "limit": "Limite",
        "limit_text": f"au plus les {_CAP:,} meilleurs résultats de la recherche".replace(",", " "),
        "relevance": "pertinence",
        "sort": "Tri",
        "rows": "Lignes",
    },
    "en": {
        "export": "Export",
        "date": "Date",
        "filter": "Filter",
        "search": "Search",
        "limit": "Limit",
        "limit_text": f"at most the {_CAP:,} best matches of the search",
        "relevance": "relevance",
        "sort": "Sort",
        "rows": "Rows",
    },
}


async def record_export(
    session: AsyncSession, plan: ExportPlan, file_format: ExportFormat, actor: Actor
) -> None:
    """One audit entry per export: who took which records out, in which form. The search text
    itself is left out (it is often a person's name)."""
    changes: dict[str, Any] = {
        "format": file_format.value,
        "filters": plan.applied_filters(),
        "sort": plan.sort,
        "search": plan.search is not None,
    }
    await record(session, AuditAction.export, plan.entity.value, None, changes, actor=actor)


class ExportReader:
    """The rows of an export, read on a snapshot session, in the order of the file's columns."""

    def __init__(self, session: AsyncSnapshotSession) -> None:
        self.session = session

    async def batches(self, plan: ExportPlan) -> AsyncIterator[Sequence[Row[Any]]]:
        """Every matching row, a batch at a time (never the whole result in memory)."""
        statement = await self._statement(plan)
        if statement is None:
            return
        # On the session's connection: plain rows, without the ORM's per-row loading (a third
        # of the reading time of a large export).
        connection = await self.session.connection()
        result = await connection.stream(statement.execution_options(yield_per=BATCH_ROWS))
        async for batch in result.partitions():
            yield batch

    async def _statement(self, plan: ExportPlan) -> Select[Any] | None:
        """The list route's filters and order, built by the entity's own service."""
        filters = plan.filters
        if isinstance(filters, InvestorFilters):
            investors = InvestorService(self.session)
            where = investors.filter_clauses(filters, plan.caller_id)
            order = investors.order_by(plan.sort)
            if plan.search is not None:
                ranked = await self._search(plan.search)
                if not ranked:
                    return None
                where.append(Investor.id.in_(ranked))
                if plan.sort is None:
                    # The search's own order: best match first.
                    order = [func.array_position(literal(ranked, ARRAY(Integer)), Investor.id)]
            return _select(plan.entity, where, order)
        if isinstance(filters, ContactExportFilters):
            contacts = ContactService(self.session)
            where = contacts.live()
            if filters.investor_id is not None:
                where.append(Contact.investor_id == filters.investor_id)
            # The per-investor list's order (name, id), investor after investor.
            return _select(
                plan.entity, where, [Contact.investor_id.asc(), *contacts.order_by(None)]
            )
        if isinstance(filters, InteractionFilters):
            interactions = InteractionService(self.session)
            where = interactions.live() + interactions.filter_clauses(filters)
            return _select(plan.entity, where, interactions.order_by(None))
        if isinstance(filters, KpiFilters):
            kpis = KpiService(self.session)
            return _select(plan.entity, kpis.live() + kpis.filter_clauses(filters), LIST_ORDER)
        raise TypeError(f"no export for {type(filters).__name__}")

    async def _search(self, text: str) -> list[int]:
        """The ids of the search's best matches, best first (at most its cap)."""
        rows, _ = await investor_search.search_investors(
            self.session, text, skip=0, limit=investor_search.SEARCH_CANDIDATES
        )
        return [row["id"] for row in rows]


# The model each entity's rows come from; an investor's owner and a child record's investor
# are given by email, joined by primary key.
_MODELS: dict[SpreadsheetEntity, Any] = {
    SpreadsheetEntity.investor: Investor,
    SpreadsheetEntity.contact: Contact,
    SpreadsheetEntity.interaction: Interaction,
    SpreadsheetEntity.kpi: Kpi,
}


def _select(
    entity: SpreadsheetEntity,
    where: Sequence[ColumnElement[bool]],
    order: Sequence[ColumnElement[Any]],
) -> Select[Any]:
    model = _MODELS[entity]
    joined = {"owner_email": User.email, "investor_email": Investor.email}
    selected = [
        joined[column.field] if column.field in joined else getattr(model, column.field)
        for column in COLUMNS[entity]
    ]
    statement = select(*selected)
    if entity is SpreadsheetEntity.investor:
        statement = statement.outerjoin(User, User.id == Investor.owner_id)
    else:
        statement = statement.join(Investor, Investor.id == model.investor_id)
    return statement.where(*where).order_by(*order)


@asynccontextmanager
async def snapshot() -> AsyncIterator[ExportReader]:
    """A reader on a snapshot session of its own, its transaction ended with the block."""
    async with db.snapshot_sessionmaker() as session, session.begin():
        yield ExportReader(session)


async def csv_stream(plan: ExportPlan, options: ExportOptions) -> AsyncIterator[bytes]:
    """The export as CSV bytes: the BOM and header at once, then a chunk per batch of rows."""
    columns = COLUMNS[plan.entity]
    semicolon = options.sep == "semicolon"
    delimiter = ";" if semicolon else ","
    header = [column.header(options.lang) for column in columns]
    yield (UTF8_BOM + csv_lines([header], delimiter)).encode()
    formatters = [
        csv_formatter(column, lang=options.lang, decimal_comma=semicolon) for column in columns
    ]
    async with snapshot() as reader:
        async for batch in reader.batches(plan):
            yield csv_lines((csv_row(formatters, row) for row in batch), delimiter).encode()


async def xlsx_file(plan: ExportPlan, options: ExportOptions) -> IO[bytes]:
    """The export written to an anonymous temporary file (gone once closed), rewound."""
    target = tempfile.TemporaryFile()  # noqa: SIM115 (closed by file_chunks, or below)
    try:
        writer = await asyncio.to_thread(
            SheetWriter,
            target,
            COLUMNS[plan.entity],
            title=sheet_name(plan.entity, options.lang),
            lang=options.lang,
            constant_memory=True,
        )
        async with snapshot() as reader:
            async for batch in reader.batches(plan):
                await asyncio.to_thread(writer.write_rows, batch)
        lines = plan.description(options.lang, writer.next_row - 1)
        title = "Filters" if options.lang == "en" else "Filtres"
        await asyncio.to_thread(writer.close, lines, lines_title=title)
        target.seek(0)
    except BaseException:
        target.close()
        raise
    return target


async def file_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    """The file's bytes, read off the event loop; the file is closed (and so deleted) at the
    end, also when the client goes away mid-way."""
    try:
        while chunk := await asyncio.to_thread(file.read, FILE_CHUNK_BYTES):
            yield chunk
    finally:
        file.close()
