"""GDPR requests: a person's data exported, or the person anonymised."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from api.deps import CurrentUser, GdprWriter
from api.responses import AUTHENTICATED, errors
from schemas.common import Email
from schemas.gdpr import AnonymizeRequest, AnonymizeResult, PersonalDataExport
from services.gdpr_xlsx import XLSX_MEDIA_TYPE, export_workbook

router = APIRouter(prefix="/gdpr", tags=["gdpr"])


@router.get(
    "/export",
    response_model=PersonalDataExport,
    responses={
        200: {"content": {XLSX_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
        **errors(*AUTHENTICATED, 403),
    },
)
async def export_personal_data(
    email: Annotated[Email, Query(description="The person's email address")],
    _: CurrentUser,
    gdpr: GdprWriter,
    output: Annotated[
        Literal["json", "xlsx"], Query(alias="format", description="json or xlsx")
    ] = "json",
) -> PersonalDataExport | Response:
    """Export everything held about the person with this email, as one JSON document or a
    spreadsheet (one sheet per kind of record)."""
    document = await gdpr.export(email)
    if output == "json":
        return document
    disposition = 'attachment; filename="donnees-personnelles.xlsx"'
    return Response(
        export_workbook(document),
        media_type=XLSX_MEDIA_TYPE,
        headers={"Content-Disposition": disposition},
    )


@router.post(
    "/anonymize",
    response_model=AnonymizeResult,
    responses=errors(*AUTHENTICATED, 403, 404, 409),
)
async def anonymize(
    body: AnonymizeRequest, caller: CurrentUser, gdpr: GdprWriter
) -> AnonymizeResult:
    """Irreversibly replace the personal values of a contact or an investor everywhere."""
    return await gdpr.anonymize(body.entity, body.id, actor_id=caller.id)
