"""Interactions: the activity history logged against each investor."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentUser, IdPath, InteractionReader, InteractionWriter, PageParams
from api.responses import AUTHENTICATED, errors
from schemas.common import Page
from schemas.interaction import (
    InteractionCreate,
    InteractionFilters,
    InteractionRead,
    InteractionUpdate,
)

router = APIRouter(prefix="/interactions", tags=["interactions"])


@router.get("", response_model=Page[InteractionRead], responses=errors(*AUTHENTICATED))
async def list_interactions(
    _: CurrentUser,
    interactions: InteractionReader,
    page: PageParams,
    filters: Annotated[InteractionFilters, Query()],
) -> Page[InteractionRead]:
    """List interactions, newest first, filtered by type, investor and date range (inclusive)."""
    items, total = await interactions.list_interactions(filters, skip=page.skip, limit=page.limit)
    return page.of(InteractionRead, items, total)


@router.get(
    "/investor/{investor_id:id}",
    response_model=Page[InteractionRead],
    responses=errors(*AUTHENTICATED, 404),
)
async def list_investor_interactions(
    investor_id: IdPath, _: CurrentUser, interactions: InteractionReader, page: PageParams
) -> Page[InteractionRead]:
    """List one investor's interactions, newest first."""
    items, total = await interactions.list_for_investor(
        investor_id, skip=page.skip, limit=page.limit
    )
    return page.of(InteractionRead, items, total)


@router.post(
    "/investor/{investor_id:id}",
    response_model=InteractionRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(*AUTHENTICATED, 404, 409),
)
async def create_interaction(
    investor_id: IdPath,
    body: InteractionCreate,
    user: CurrentUser,
    interactions: InteractionWriter,
) -> InteractionRead:
    """Log an interaction with an investor (the contact, if any, must be one of its contacts)."""
    interaction = await interactions.create_for_investor(investor_id, body, created_by=user.id)
    return InteractionRead.model_validate(interaction)


@router.get(
    "/{interaction_id:id}", response_model=InteractionRead, responses=errors(*AUTHENTICATED, 404)
)
async def read_interaction(
    interaction_id: IdPath, _: CurrentUser, interactions: InteractionReader
) -> InteractionRead:
    """Read an interaction."""
    return InteractionRead.model_validate(await interactions.get(interaction_id))


@router.put(
    "/{interaction_id:id}",
    response_model=InteractionRead,
    responses=errors(*AUTHENTICATED, 404, 409),
)
async def update_interaction(
    interaction_id: IdPath,
    body: InteractionUpdate,
    _: CurrentUser,
    interactions: InteractionWriter,
) -> InteractionRead:
    """Update an interaction (only the fields sent change)."""
    interaction = await interactions.get(interaction_id, for_update=True)
    return InteractionRead.model_validate(await interactions.update_interaction(interaction, body))


@router.delete(
    "/{interaction_id:id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(*AUTHENTICATED, 404),
)
async def delete_interaction(
    interaction_id: IdPath, user: CurrentUser, interactions: InteractionWriter
) -> None:
    """Move an interaction to the trash."""
    interaction = await interactions.get(interaction_id, for_update=True)
    await interactions.delete(interaction, deleted_by=user.id)
