"""Spreadsheet exports of the CRM's records, and the import templates."""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import CurrentUser, ExportSlot, WriteSession, client_address
from api.responses import AUTHENTICATED, errors
from core.audit import Actor
from models.audit import ActorKind
from models.user import AuthenticatedUser
from schemas.export import ContactExportFilters, ExportFormat, ExportOptions
from schemas.interaction import InteractionFilters
from schemas.investor import InvestorFilters, InvestorSort, SearchText
from schemas.kpi import KpiFilters
from services.exports import (
    ExportPlan,
    csv_stream,
    file_chunks,
    record_export,
    xlsx_file,
)
from services.investor_search import SEARCH_CANDIDATES
from services.spreadsheet_columns import FILE_STEMS, SpreadsheetEntity
from services.spreadsheet_writers import CSV_MEDIA_TYPE, XLSX_MEDIA_TYPE, template_workbook

router = APIRouter(tags=["exports"])

_FILE = {"schema": {"type": "string", "format": "binary"}}
_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CSV_MEDIA_TYPE: _FILE, XLSX_MEDIA_TYPE: _FILE}, "description": "The file"},
    **errors(*AUTHENTICATED, 403, 429),
}
FormatPath = Annotated[ExportFormat, Path(description="`csv` or `xlsx`")]
Options = Annotated[ExportOptions, Query()]


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


async def _export(
    plan: ExportPlan,
    file_format: ExportFormat,
    options: ExportOptions,
    session: WriteSession,
    request: Request,
    user: AuthenticatedUser,
) -> Response:
    """Answer with the export's file (CSV as it is read, xlsx once written), recorded in the
    audit trail, committed before the first byte is sent."""
    actor = Actor(ActorKind.user, user.id, client_address(request))
    headers = _attachment(plan.filename(file_format))
    if file_format is ExportFormat.csv:
        await record_export(session, plan, file_format, actor)
        return StreamingResponse(
            csv_stream(plan, options), media_type=CSV_MEDIA_TYPE, headers=headers
        )
    # Written before the audit entry: the write session's connection is not held meanwhile.
    file = await xlsx_file(plan, options)
    try:
        await record_export(session, plan, file_format, actor)
    except BaseException:
        file.close()
        raise
    return StreamingResponse(file_chunks(file), media_type=XLSX_MEDIA_TYPE, headers=headers)


@router.get(
    "/exports/investor.{file_format}",
    response_class=Response,
    responses=_EXPORT_RESPONSES,
    description="Every investor the list would show with these filters and sort, as CSV "
    "(streamed; UTF-8 with BOM, `;` or `,`) or xlsx (typed cells, a filters sheet). With `q`, "
    f"what the search finds instead: at most its {SEARCH_CANDIDATES} best matches, best first "
    "unless `sort` is given, narrowed by the filters.",
)
async def export_investors(
    file_format: FormatPath,
    user: CurrentUser,
    _slot: ExportSlot,
    session: WriteSession,
    request: Request,
    options: Options,
    filters: Annotated[InvestorFilters, Query()],
    sort: Annotated[
        InvestorSort | None, Query(description="Sort key, `-` for descending (default: name)")
    ] = None,
    q: Annotated[SearchText | None, Query(description="Export the search's matches")] = None,
) -> Response:
    """Export investors (list filters and sort, or a search) as CSV or xlsx."""
    plan = ExportPlan(SpreadsheetEntity.investor, filters, user.id, sort=sort, search=q)
    return await _export(plan, file_format, options, session, request, user)


@router.get("/exports/contact.{file_format}", response_class=Response, responses=_EXPORT_RESPONSES)
async def export_contacts(
    file_format: FormatPath,
    user: CurrentUser,
    _slot: ExportSlot,
    session: WriteSession,
    request: Request,
    options: Options,
    filters: Annotated[ContactExportFilters, Query()],
) -> Response:
    """Export contacts (one investor's, or all), by investor then name, as CSV or xlsx."""
    plan = ExportPlan(SpreadsheetEntity.contact, filters, user.id)
    return await _export(plan, file_format, options, session, request, user)


@router.get(
    "/exports/interaction.{file_format}", response_class=Response, responses=_EXPORT_RESPONSES
)
async def export_interactions(
    file_format: FormatPath,
    user: CurrentUser,
    _slot: ExportSlot,
    session: WriteSession,
    request: Request,
    options: Options,
    filters: Annotated[InteractionFilters, Query()],
) -> Response:
    """Export interactions (the list's filters), newest first, as CSV or xlsx."""
    plan = ExportPlan(SpreadsheetEntity.interaction, filters, user.id)
    return await _export(plan, file_format, options, session, request, user)


@router.get("/exports/kpi.{file_format}", response_class=Response, responses=_EXPORT_RESPONSES)
async def export_kpis(
    file_format: FormatPath,
    user: CurrentUser,
    _slot: ExportSlot,
    session: WriteSession,
    request: Request,
    options: Options,
    filters: Annotated[KpiFilters, Query()],
) -> Response:
    """Export KPI rows (the list's filters), by year, month and investor, as CSV or xlsx."""
    plan = ExportPlan(SpreadsheetEntity.kpi, filters, user.id)
    return await _export(plan, file_format, options, session, request, user)


@router.get(
    "/imports/templates/{entity}.xlsx",
    response_class=Response,
    responses={
        200: {"content": {XLSX_MEDIA_TYPE: _FILE}, "description": "The template"},
        **errors(*AUTHENTICATED, 403),
    },
)
async def import_template(
    entity: Annotated[SpreadsheetEntity, Path(description="investor, contact, interaction, kpi")],
    _: CurrentUser,
) -> Response:
    """Download the import template of an entity: French headers, an example row, drop-down
    lists on the columns with fixed values."""
    # Tens of milliseconds of CPU: off the event loop like the exports' writing.
    return Response(
        await asyncio.to_thread(template_workbook, entity),
        media_type=XLSX_MEDIA_TYPE,
        headers=_attachment(f"modele_{FILE_STEMS[entity]}.xlsx"),
    )
