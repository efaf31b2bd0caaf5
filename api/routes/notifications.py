"""The caller's notifications: list, unread count, read, and the live stream (Server-Sent
Events) with its single-use tickets."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import (
    CurrentUser,
    IdPath,
    NotificationReader,
    NotificationWriter,
    PageParams,
    StreamCallerDep,
    StreamTicketWriter,
    TokenCaller,
)
from api.responses import AUTHENTICATED, errors, json_errors
from schemas.common import Page
from schemas.notification import NotificationRead, StreamTicketRead, UnreadCount
from services.notification_stream import notification_events
from services.stream_tickets import TICKET_LIFETIME

router = APIRouter(prefix="/notifications", tags=["notifications"])

# The largest notification id a client can send back (a BIGINT).
_MAX_EVENT_ID = 2**63 - 1


@router.get("", response_model=Page[NotificationRead], responses=errors(*AUTHENTICATED))
async def list_notifications(
    caller: CurrentUser,
    notifications: NotificationReader,
    page: PageParams,
    unread: Annotated[bool | None, Query(description="true: only the unread ones")] = None,
) -> Page[NotificationRead]:
    """The caller's notifications, unread first, then newest."""
    items, total = await notifications.list_for(
        caller.id, unread_only=bool(unread), skip=page.skip, limit=page.limit
    )
    return page.of(NotificationRead, items, total)


@router.get("/unread-count", response_model=UnreadCount, responses=errors(*AUTHENTICATED))
async def unread_count(caller: CurrentUser, notifications: NotificationReader) -> UnreadCount:
    """How many of the caller's notifications are unread."""
    return UnreadCount(count=await notifications.unread_count(caller.id))


@router.post("/read-all", status_code=status.HTTP_204_NO_CONTENT, responses=errors(*AUTHENTICATED))
async def read_all(caller: CurrentUser, notifications: NotificationWriter) -> None:
    """Mark every notification of the caller read."""
    await notifications.mark_all_read(caller.id)


@router.post(
    "/{notification_id:id}/read",
    response_model=NotificationRead,
    responses=errors(*AUTHENTICATED, 404),
)
async def read_notification(
    notification_id: IdPath, caller: CurrentUser, notifications: NotificationWriter
) -> NotificationRead:
    """Mark one of the caller's notifications read (again: it keeps its first reading time)."""
    return NotificationRead.model_validate(
        await notifications.mark_read(caller.id, notification_id)
    )


@router.post(
    "/stream-ticket",
    response_model=StreamTicketRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(*AUTHENTICATED),
)
async def create_stream_ticket(
    caller: TokenCaller, tickets: StreamTicketWriter
) -> StreamTicketRead:
    """A single-use ticket, valid 60 s, to open the stream as `?ticket=` (an EventSource cannot
    send an Authorization header)."""
    return StreamTicketRead(
        ticket=await tickets.issue(caller), expires_in=int(TICKET_LIFETIME.total_seconds())
    )


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses=json_errors(*AUTHENTICATED, 403),
)
async def stream_notifications(
    caller: StreamCallerDep,
    last_event_id: Annotated[
        int,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=_MAX_EVENT_ID,
            description="The id of the last event received: those after it are sent first "
            "(0, no event received: only what comes after the opening)",
        ),
    ] = 0,
    resume_after: Annotated[
        int,
        Query(
            alias="last_event_id",
            ge=0,
            le=_MAX_EVENT_ID,
            description="The same as the Last-Event-ID header, for a client that reopens the "
            "stream itself with a new ticket (an EventSource cannot set that header)",
        ),
    ] = 0,
) -> AsyncIterator[ServerSentEvent]:
    """The caller's new notifications as Server-Sent Events (`event: notification`, `id`, data
    as in the list), a comment every 15 s; Bearer token or `?ticket=`."""
    # Ids start at 1: an EventSource never sends 0, which stands for "none received".
    after = last_event_id or resume_after or None
    async for event in notification_events(caller, after):
        yield event
