"""Request dependencies, as Annotated aliases the routes declare."""

import ipaddress
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import AfterValidator, BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from core.audit import Actor, declare_actor
from core.config import settings
from core.db import (
    AsyncReadSession,
    AsyncWriteSession,
    db,
    get_read_session,
    get_write_session,
    read_session,
)
from core.exceptions import AuthError
from core.policy import (
    POLICY,
    Grant,
    Ownership,
    Rule,
    check_ownership,
    check_role,
    check_two_factor,
)
from core.security import InvalidTokenError, decode_access_token
from models.audit import ActorKind
from models.user import AuthenticatedUser
from schemas.common import PG_INT_MAX, Page
from services.audit import AuditService
from services.auth import AuthService
from services.base import BaseService
from services.contacts import ContactService
from services.exports import export_slots
from services.follow_ups import FollowUpRuleService
from services.gdpr import GdprService
from services.imports import ImportService
from services.interactions import InteractionService
from services.investors import InvestorService
from services.jobs import JobService
from services.kpis import KpiService
from services.notifications import NotificationService
from services.password_reset import PasswordResetService
from services.sessions import SessionService
from services.stream_tickets import InvalidStreamTicket, StreamCaller, StreamTicketService
from services.tasks import TaskService
from services.trash import TrashService
from services.two_factor import TwoFactorService
from services.users import UserService, caller_cache

# Each route declares which session it needs, through the read or write variant of its
# service. scope="function": a write is committed before the response is sent, and a read
# hands its connection back before then too.
ReadSession = Annotated[AsyncReadSession, Depends(get_read_session, scope="function")]
WriteSession = Annotated[AsyncWriteSession, Depends(get_write_session, scope="function")]


def client_address(connection: HTTPConnection) -> str:
    """The socket's peer, or the address the trusted proxy put in X-Forwarded-For (uvicorn
    rewrites the peer with FORWARDED_ALLOW_IPS, see main.run), written one way per address."""
    host = connection.client.host if connection.client else ""
    try:
        # A zone (fe80::1%eth0) names the sender's interface, not another client.
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host[:64]
    # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d: the same client either way.
    return str(getattr(address, "ipv4_mapped", None) or address)


def _row_id(value: int) -> int:
    """`value`, or 0 when no INTEGER column can hold it: 0 names no row either (ids start at 1),
    so the lookup answers 404 as for any unknown id, and the driver never meets a number too
    big to bind. The id range is checked here, once, for every id in a path."""
    return value if -PG_INT_MAX - 1 <= value <= PG_INT_MAX else 0


# Every `{..._id:id}` path parameter: an integer (anything else is a 422).
IdPath = Annotated[int, AfterValidator(_row_id)]


class _BearerCaller(OAuth2PasswordBearer):
    """The OAuth2 password scheme of the OpenAPI document, resolved to the active user behind
    the request's Bearer token; 401 otherwise, checked on every request.

    The scheme itself is the dependency, with no session of its own: FastAPI resolves each
    dependency at a cost paid on every request, and the token, its scheme and the read session
    were three of them (docs/adr/0004). A caller the cache does not know is read on a read
    session of its own, whose connection goes back at once: a writing request holds only its
    write session's, never two at a time.
    """

    async def __call__(self, request: HTTPConnection) -> AuthenticatedUser:  # type: ignore[override]
        token = await super().__call__(request)
        if not token:
            raise AuthError()
        claims = decode_access_token(token, settings)
        # decode_access_token already keeps the id within INTEGER.
        user = caller_cache.get(claims.user_id)
        if user is None:
            async with read_session() as session:
                user = await UserService(session).get_caller(claims.user_id)
        # Another stamp: the token predates a password, role or activity change, or names an id
        # that now belongs to another account (ids restart after a restore). A revoked session:
        # the token's was logged out (an empty set first: a UUID's hash is a Python call).
        if (
            user is None
            or user.security_stamp != claims.stamp
            or (user.revoked_sessions and claims.session_id in user.revoked_sessions)
        ):
            raise InvalidTokenError()
        rule = operation_rules.get(id(request.scope.get("route")))
        if settings.require_2fa_for_admins:
            check_two_factor(user.role, user.two_factor_enabled, rule)
        if check_role(user.role, rule) is Grant.owned and rule and rule.ownership:
            await _check_owner(request, user, rule.ownership)
        # The author of what the request writes; reads (the hottest requests) write nothing.
        if request.scope["method"] != "GET":
            declare_actor(Actor(ActorKind.user, user.id, client_address(request)))
        return user


# The permission rule of each /api/v1 operation, by the identity of its route (what the router
# puts in the request's scope): filled by `bind_policy` when the app is built.
operation_rules: dict[int, Rule] = {}


def bind_policy(routes: Sequence[tuple[object, str, str]]) -> None:
    """Give each (route, method, path below the API prefix) its rule from core.policy.POLICY;
    an operation the policy does not name stops the start-up."""
    missing = [(method, path) for _, method, path in routes if (method, path) not in POLICY]
    if missing:
        raise RuntimeError(f"Operations missing from core.policy.POLICY: {missing}")
    for route, method, path in routes:
        operation_rules[id(route)] = POLICY[(method, path)]


async def _check_owner(request: HTTPConnection, user: AuthenticatedUser, owned: Ownership) -> None:
    """403 unless the caller owns the record the path names; 404 when there is none. A path id
    that is no integer is left to the route's validation (422)."""
    raw = request.path_params.get(owned.path_param, "")
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit()):
        return
    service_class = OWNED_RECORDS[owned.path_param]
    async with read_session() as session:
        owners = await service_class(session).owners_of(_row_id(int(raw)))
    if owners is None:
        raise service_class(session).not_found()
    check_ownership(user.id, owners, owned)


# auto_error=False so a missing token gets our JSON body; tokenUrl drives Swagger's Authorize.
# The scheme keeps FastAPI's name in the OpenAPI document.
get_current_user = _BearerCaller(
    tokenUrl="/api/v1/auth/login", scheme_name="OAuth2PasswordBearer", auto_error=False
)


CurrentUser = Annotated[AuthenticatedUser, Depends(get_current_user)]


async def get_current_session_id(request: HTTPConnection, _caller: CurrentUser) -> uuid.UUID:
    """The session of the request's access token, once its caller is known: a dependency of
    its own, so that requests other than a logout never pay for it. The token was verified for
    the caller just before, so decoding it again is answered from the verified tokens."""
    _, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    return decode_access_token(token, settings).session_id


CurrentSessionId = Annotated[uuid.UUID, Depends(get_current_session_id)]


class _StreamCaller(_BearerCaller):
    """Who opens the notification stream: the Bearer token's caller, or the one a single-use
    `ticket` stands for (an EventSource cannot send headers); the same policy applies."""

    async def __call__(  # type: ignore[override]
        self,
        request: HTTPConnection,
        ticket: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=128,
                description="A ticket from POST /notifications/stream-ticket, instead of a token",
            ),
        ] = None,
    ) -> StreamCaller:
        if ticket is None:
            user = await super().__call__(request)
            # The caller's stamp is the token's: a different one was refused just above.
            return StreamCaller(
                user.id, user.security_stamp, await get_current_session_id(request, user)
            )
        async with db.sessionmaker() as writing, writing.begin():
            caller = await StreamTicketService(writing).redeem(ticket)
        async with read_session() as reading:
            account = await UserService(reading).get_caller(caller.user_id)
        # As for a token: the ticket's stamp and session must still hold.
        if (
            account is None
            or account.security_stamp != caller.security_stamp
            or caller.session_id in account.revoked_sessions
        ):
            raise InvalidStreamTicket()
        rule = operation_rules.get(id(request.scope.get("route")))
        if settings.require_2fa_for_admins:
            check_two_factor(account.role, account.two_factor_enabled, rule)
        check_role(account.role, rule)
        return caller


get_stream_caller = _StreamCaller(
    tokenUrl="/api/v1/auth/login", scheme_name="OAuth2PasswordBearer", auto_error=False
)
StreamCallerDep = Annotated[StreamCaller, Depends(get_stream_caller)]


async def get_token_caller(user: CurrentUser, session_id: CurrentSessionId) -> StreamCaller:
    """The request's caller with its token's stamp and session (what a stream ticket keeps)."""
    return StreamCaller(user.id, user.security_stamp, session_id)


TokenCaller = Annotated[StreamCaller, Depends(get_token_caller)]


# The service that finds the owners of the record each owned path parameter names.
OWNED_RECORDS: dict[str, type[BaseService[Any, Any, Any]]] = {
    "investor_id": InvestorService,
    "contact_id": ContactService,
    "interaction_id": InteractionService,
    "kpi_id": KpiService,
    "job_id": JobService,
    "task_id": TaskService,
}


ServiceT = TypeVar("ServiceT")


def _reader(service_class: Callable[[AsyncSession], ServiceT]) -> Any:
    """`service_class` on the request's read session, opened here rather than taken from
    ReadSession: FastAPI resolves each dependency on every request, at a cost that shows on the
    hottest reads (docs/adr/0004). A route takes one reader or ReadSession: each would open a
    session of its own."""

    async def build() -> AsyncIterator[ServiceT]:
        async with read_session() as session:
            yield service_class(session)

    # Like ReadSession: the connection goes back before the response is sent.
    return Depends(build, scope="function")


def _writer(service_class: Callable[[AsyncSession], ServiceT]) -> Any:
    """`service_class` on the request's write session."""

    async def build(session: WriteSession) -> ServiceT:
        return service_class(session)

    return Depends(build)


UserReader = Annotated[UserService, _reader(UserService)]
UserWriter = Annotated[UserService, _writer(UserService)]
AuthWriter = Annotated[AuthService, _writer(AuthService)]
SessionWriter = Annotated[SessionService, _writer(SessionService)]
PasswordResetWriter = Annotated[PasswordResetService, _writer(PasswordResetService)]
InvestorReader = Annotated[InvestorService, _reader(InvestorService)]
InvestorWriter = Annotated[InvestorService, _writer(InvestorService)]
ContactReader = Annotated[ContactService, _reader(ContactService)]
ContactWriter = Annotated[ContactService, _writer(ContactService)]
InteractionReader = Annotated[InteractionService, _reader(InteractionService)]
InteractionWriter = Annotated[InteractionService, _writer(InteractionService)]
KpiReader = Annotated[KpiService, _reader(KpiService)]
KpiWriter = Annotated[KpiService, _writer(KpiService)]
JobReader = Annotated[JobService, _reader(JobService)]
JobWriter = Annotated[JobService, _writer(JobService)]
TwoFactorWriter = Annotated[TwoFactorService, _writer(TwoFactorService)]
TrashReader = Annotated[TrashService, _reader(TrashService)]
TrashWriter = Annotated[TrashService, _writer(TrashService)]
AuditReader = Annotated[AuditService, _reader(AuditService)]
TaskReader = Annotated[TaskService, _reader(TaskService)]
TaskWriter = Annotated[TaskService, _writer(TaskService)]
FollowUpRuleReader = Annotated[FollowUpRuleService, _reader(FollowUpRuleService)]
FollowUpRuleWriter = Annotated[FollowUpRuleService, _writer(FollowUpRuleService)]
NotificationReader = Annotated[NotificationService, _reader(NotificationService)]
NotificationWriter = Annotated[NotificationService, _writer(NotificationService)]
StreamTicketWriter = Annotated[StreamTicketService, _writer(StreamTicketService)]
# The export writes its audit entries: a write session for both operations.
GdprWriter = Annotated[GdprService, _writer(GdprService)]
ImportReader = Annotated[ImportService, _reader(ImportService)]
ImportWriter = Annotated[ImportService, _writer(ImportService)]


async def hold_export_slot() -> AsyncIterator[None]:
    """One of the process's export slots (429 `export_busy` when none is free), held until the
    response has been sent: the default dependency scope ends after the streamed body."""
    with export_slots.hold():
        yield


ExportSlot = Annotated[None, Depends(hold_export_slot)]


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
