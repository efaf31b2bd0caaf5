"""User administration (admin only)."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentUser, IdPath, PageParams, TwoFactorWriter, UserReader, UserWriter
from api.responses import AUTHENTICATED, errors
from schemas.common import Page
from schemas.user import UserCreate, UserRead, UserSort, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])

ADMIN = (*AUTHENTICATED, 403)


@router.get("", response_model=Page[UserRead], responses=errors(*ADMIN))
async def list_users(
    _: CurrentUser,
    users: UserReader,
    page: PageParams,
    sort: Annotated[UserSort, Query()] = "email",
) -> Page[UserRead]:
    """List users."""
    items, total = await users.list(sort=sort, skip=page.skip, limit=page.limit)
    return page.of(UserRead, items, total)


@router.post(
    "",
    response_model=UserRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(*ADMIN, 409),
)
async def create_user(body: UserCreate, _: CurrentUser, users: UserWriter) -> UserRead:
    """Create a user."""
    return UserRead.model_validate(await users.create(body))


@router.get("/{user_id:id}", response_model=UserRead, responses=errors(*ADMIN, 404))
async def read_user(user_id: IdPath, _: CurrentUser, users: UserReader) -> UserRead:
    """Read a user."""
    return UserRead.model_validate(await users.get(user_id))


@router.put("/{user_id:id}", response_model=UserRead, responses=errors(*ADMIN, 404, 409))
async def update_user(
    user_id: IdPath, body: UserUpdate, _: CurrentUser, users: UserWriter
) -> UserRead:
    """Update a user (only the fields sent change)."""
    return UserRead.model_validate(await users.update_user(user_id, body))


@router.delete(
    "/{user_id:id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(*ADMIN, 404, 409),
)
async def delete_user(user_id: IdPath, admin: CurrentUser, users: UserWriter) -> None:
    """Delete a user; not yourself, nor the last active admin."""
    user = await users.get_for_change(user_id)
    await users.delete_user(user, acting_user=admin)


@router.delete(
    "/{user_id:id}/2fa",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(*ADMIN, 404),
)
async def reset_two_factor(user_id: IdPath, _: CurrentUser, two_factor: TwoFactorWriter) -> None:
    """Turn a user's two-factor login off (a lost phone): its secret and recovery codes go."""
    await two_factor.reset(user_id)
