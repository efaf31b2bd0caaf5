"""Spreadsheet imports (xlsx, csv): accepted, then processed by a job; results and errors."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from api.deps import CurrentUser, IdPath, ImportReader, ImportWriter, PageParams
from api.responses import AUTHENTICATED, errors
from models.data_import import ImportMode, OnDuplicate
from schemas.common import Page
from schemas.data_import import ImportRead, ImportSummary, SheetName
from services.spreadsheet_columns import SpreadsheetEntity

router = APIRouter(prefix="/imports", tags=["imports"])

OPERATOR = (*AUTHENTICATED, 403)


@router.post(
    "",
    response_model=ImportRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(*OPERATOR, 413, 415, 422),
)
async def create_import(
    caller: CurrentUser,
    imports: ImportWriter,
    file: Annotated[UploadFile, File(description="An xlsx workbook or a CSV file")],
    entity: Annotated[SpreadsheetEntity, Form()],
    mode: Annotated[ImportMode, Form()] = ImportMode.dry_run,
    on_duplicate: Annotated[OnDuplicate, Form()] = OnDuplicate.error,
    sheet: Annotated[
        SheetName, Form(description="The sheet to read (by default the first)")
    ] = None,
) -> ImportRead:
    """Check a spreadsheet and queue its import (a dry run unless mode=commit)."""
    return await imports.accept(
        await file.read(),
        filename=file.filename or "",
        entity=entity,
        mode=mode,
        on_duplicate=on_duplicate,
        sheet=sheet,
        created_by=caller.id,
    )


@router.get("", response_model=Page[ImportSummary], responses=errors(*OPERATOR))
async def list_imports(
    _: CurrentUser, imports: ImportReader, page: PageParams
) -> Page[ImportSummary]:
    """List imports, newest first."""
    items, total = await imports.list_imports(skip=page.skip, limit=page.limit)
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@router.get("/{import_id:id}", response_model=ImportRead, responses=errors(*OPERATOR, 404))
async def read_import(import_id: IdPath, _: CurrentUser, imports: ImportReader) -> ImportRead:
    """One import: its status, counts and first 1,000 errors."""
    return await imports.read(import_id)


@router.get(
    "/{import_id:id}/errors.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **errors(*OPERATOR, 404),
    },
)
async def import_errors_csv(import_id: IdPath, _: CurrentUser, imports: ImportReader) -> Response:
    """Every error of the import, as CSV (row, column, value, code, message)."""
    return Response(
        await imports.errors_csv(import_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import_{import_id}_erreurs.csv"'},
    )
