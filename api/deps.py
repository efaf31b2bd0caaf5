"""Request dependencies, as Annotated aliases the routes declare."""

from collections.abc import Sequence
from typing import Annotated, TypeVar

from fastapi import Depends, Query
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import settings
from core.db import get_session
from core.exceptions import AuthError, PermissionDeniedError
from core.security import decode_access_token
from models.user import User
from schemas.common import PG_INT_MAX, Page
from services.auth import AuthService
from services.contacts import ContactService
from services.interactions import InteractionService
from services.investors import InvestorService
from services.kpis import KpiService
from services.users import UserService

# scope="function": the transaction is committed before the response is sent.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

# auto_error=False so a missing token gets our JSON body; tokenUrl drives Swagger's Authorize.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)


async def get_current_user(
    session: SessionDep, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> User:
    """The active user behind the Bearer token; 401 otherwise, checked on every request."""
    if not token:
        raise AuthError()
    user_id = decode_access_token(token, settings)
    user = await session.get(User, user_id) if user_id <= PG_INT_MAX else None
    if user is None or not user.is_active:
        raise AuthError("Invalid or expired token", code="invalid_token")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise PermissionDeniedError("Administrator role required")
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]


async def _user_service(session: SessionDep) -> UserService:
    return UserService(session)


async def _auth_service(session: SessionDep) -> AuthService:
    return AuthService(session)


UserServiceDep = Annotated[UserService, Depends(_user_service)]
AuthServiceDep = Annotated[AuthService, Depends(_auth_service)]


async def _investor_service(session: SessionDep) -> InvestorService:
    return InvestorService(session)


async def _contact_service(session: SessionDep) -> ContactService:
    return ContactService(session)


InvestorServiceDep = Annotated[InvestorService, Depends(_investor_service)]
ContactServiceDep = Annotated[ContactService, Depends(_contact_service)]


async def _interaction_service(session: SessionDep) -> InteractionService:
    return InteractionService(session)


async def _kpi_service(session: SessionDep) -> KpiService:
    return KpiService(session)


InteractionServiceDep = Annotated[InteractionService, Depends(_interaction_service)]
KpiServiceDep = Annotated[KpiService, Depends(_kpi_service)]


ItemT = TypeVar("ItemT", bound=BaseModel)


class Pagination:
    """`skip` / `limit` query parameters shared by every list."""

    def __init__(
        self,
        skip: Annotated[int, Query(ge=0, le=PG_INT_MAX, description="Rows to skip")] = 0,
        limit: Annotated[int, Query(ge=1, le=200, description="Page size (1-200)")] = 50,
    ) -> None:
        self.skip = skip
        self.limit = limit

    def of(self, item_schema: type[ItemT], items: Sequence[object], total: int) -> Page[ItemT]:
        """The list response for these rows, each read through the item schema."""
        return Page(
            items=[item_schema.model_validate(item) for item in items],
            total=total,
            skip=self.skip,
            limit=self.limit,
        )


PageParams = Annotated[Pagination, Depends()]
