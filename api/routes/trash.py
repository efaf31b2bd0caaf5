"""The trash: what DELETE moved aside, restoring it, destroying it now."""

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from api.deps import CurrentUser, IdPath, PageParams, TrashReader, TrashWriter
from api.responses import AUTHENTICATED, errors
from models.trash import TrashEntity
from schemas.common import Page
from schemas.contact import ContactRead
from schemas.interaction import InteractionRead
from schemas.investor import InvestorRead
from schemas.kpi import KpiRead
from schemas.task import TaskRead
from schemas.trash import TrashFilters, TrashItem

router = APIRouter(prefix="/trash", tags=["trash"])

RestoredRecord = InvestorRead | ContactRead | InteractionRead | KpiRead | TaskRead


@router.get("", response_model=Page[TrashItem], responses=errors(*AUTHENTICATED, 403))
async def list_trash(
    _: CurrentUser,
    trash: TrashReader,
    page: PageParams,
    filters: Annotated[TrashFilters, Query()],
) -> Page[TrashItem]:
    """List what is in the trash, newest deletion first: who deleted it, when, and when the
    nightly purge destroys it."""
    items, total = await trash.list_entries(filters, skip=page.skip, limit=page.limit)
    return page.of(TrashItem, items, total)


@router.post(
    "/{entity}/{entity_id:id}/restore",
    response_model=RestoredRecord,
    responses=errors(*AUTHENTICATED, 403, 404, 409),
)
async def restore_from_trash(
    entity: TrashEntity, entity_id: IdPath, _: CurrentUser, trash: TrashWriter
) -> BaseModel:
    """Restore a record with everything its deletion took (same ids, same history)."""
    return await trash.restore(entity, entity_id)


@router.delete(
    "/{entity}/{entity_id:id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(*AUTHENTICATED, 403, 404, 409),
)
async def purge_from_trash(
    entity: TrashEntity, entity_id: IdPath, _: CurrentUser, trash: TrashWriter
) -> None:
    """Destroy a record in the trash now, with everything its deletion took."""
    await trash.purge(entity, entity_id)
