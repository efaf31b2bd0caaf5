"""GDPR requests: a person's data exported, or the person anonymised."""

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, GdprWriter
from api.responses import AUTHENTICATED, errors
from schemas.common import Email
from schemas.gdpr import AnonymizeRequest, AnonymizeResult, PersonalDataExport

router = APIRouter(prefix="/gdpr", tags=["gdpr"])


@router.get("/export", response_model=PersonalDataExport, responses=errors(*AUTHENTICATED, 403))
async def export_personal_data(
    email: Annotated[Email, Query(description="The person's email address")],
    _: CurrentUser,
    gdpr: GdprWriter,
) -> PersonalDataExport:
    """Export everything held about the person with this email, as one JSON document."""
    return await gdpr.export(email)


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
