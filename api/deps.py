"""Request dependencies, as Annotated aliases the routes declare."""

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import settings
from core.db import get_session
from core.exceptions import AuthError, PermissionDeniedError
from core.security import InvalidTokenError, decode_access_token
from models.user import AuthenticatedUser
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
) -> AuthenticatedUser:
    """The active user behind the Bearer token; 401 otherwise, checked on every request."""
    if not token:
        raise AuthError()
    user_id = decode_access_token(token, settings)
    user = await UserService(session).get_caller(user_id) if user_id <= PG_INT_MAX else None
    if user is None:
        raise InvalidTokenError()
    return user


CurrentUser = Annotated[AuthenticatedUser, Depends(get_current_user)]


async def get_admin_user(user: CurrentUser) -> AuthenticatedUser:
    if not user.is_admin:
        raise PermissionDeniedError("Administrator role required")
    return user


AdminUser = Annotated[AuthenticatedUser, Depends(get_admin_user)]


ServiceT = TypeVar("ServiceT")


def _service(service_class: Callable[[AsyncSession], ServiceT]) -> Callable[..., Any]:
    """A dependency building `service_class` on the request's session."""

    async def build(session: SessionDep) -> ServiceT:
        return service_class(session)

    return build


UserServiceDep = Annotated[UserService, Depends(_service(UserService))]
AuthServiceDep = Annotated[AuthService, Depends(_service(AuthService))]
InvestorServiceDep = Annotated[InvestorService, Depends(_service(InvestorService))]
ContactServiceDep = Annotated[ContactService, Depends(_service(ContactService))]
InteractionServiceDep = Annotated[InteractionService, Depends(_service(InteractionService))]
KpiServiceDep = Annotated[KpiService, Depends(_service(KpiService))]


ItemT = TypeVar("ItemT", bound=BaseModel)


class Pagination:
    """`skip` / `limit` of a list request."""

    def __init__(self, skip: int, limit: int) -> None:
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


async def pagination(
    skip: Annotated[int, Query(ge=0, le=PG_INT_MAX, description="Rows to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size (1-200)")] = 50,
) -> Pagination:
    """The `skip` / `limit` query parameters shared by every list.

    A coroutine: FastAPI runs a plain callable (such as a class) in its thread pool, a thread
    hop on every list request for two integers.
    """
    return Pagination(skip, limit)


PageParams = Annotated[Pagination, Depends(pagination)]
