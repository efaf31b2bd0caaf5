"""The live notification stream (Server-Sent Events): one LISTEN connection per process (the
database's, core.db) fans out to every open stream through `hub`; a stream holds no pooled
connection between events, and re-checks its user at each event and heartbeat."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi.sse import ServerSentEvent

from core.config import settings
from core.db import read_session
from core.exceptions import DATABASE_ERRORS
from schemas.notification import NotificationRead
from services.notifications import CATCH_UP_BATCH, NotificationService
from services.stream_tickets import StreamCaller
from services.users import UserService

logger = logging.getLogger(__name__)

# What an EventSource waits before reconnecting after the stream ends (milliseconds).
RECONNECT_MS = 2000
EVENT_NAME = "notification"


class NotificationHub:
    """The open streams of this process, by user: a notification committed for a user (by any
    process: the table's trigger notifies) wakes that user's streams, which read what is new;
    a change to the account wakes them to check it. While the LISTEN connection is lost, every
    stream reads at each heartbeat instead, and all of them catch up when it is back."""

    def __init__(self) -> None:
        self.listening = False
        self._streams: dict[int, set[asyncio.Event]] = {}

    @property
    def open_streams(self) -> int:
        return sum(len(events) for events in self._streams.values())

    def subscribe(self, user_id: int) -> asyncio.Event:
        wake = asyncio.Event()
        self._streams.setdefault(user_id, set()).add(wake)
        return wake

    def unsubscribe(self, user_id: int, wake: asyncio.Event) -> None:
        events = self._streams.get(user_id)
        if events is not None:
            events.discard(wake)
            if not events:
                del self._streams[user_id]

    def _wake(self, user_id: int) -> None:
        for wake in self._streams.get(user_id, ()):
            wake.set()

    def _wake_all(self) -> None:
        for events in self._streams.values():
            for wake in events:
                wake.set()

    def on_notification(self, payload: str) -> None:
        """A new notification's user id (migration 0020's trigger)."""
        if payload.isdigit():
            self._wake(int(payload))

    def on_user_changed(self, payload: str) -> None:
        """A changed account's id, or '*' (migration 0006's trigger): its streams check it."""
        if payload.isdigit():
            self._wake(int(payload))
        else:
            self._wake_all()

    def set_listening(self, listening: bool) -> None:
        self.listening = listening
        # Back: whatever was committed meanwhile is read. Lost: streams poll at heartbeats.
        self._wake_all()


hub = NotificationHub()


async def caller_still_valid(caller: StreamCaller) -> bool:
    """Whether the account is active, with the same stamp, and the session not revoked (read
    from the callers' cache when it knows the account, which every change evicts)."""
    async with read_session() as session:
        user = await UserService(session).get_caller(caller.user_id)
    return (
        user is not None
        and user.security_stamp == caller.security_stamp
        and caller.session_id not in user.revoked_sessions
    )


async def _new_notifications(user_id: int, last_id: int) -> list[ServerSentEvent]:
    """The user's notifications after `last_id` as events, read on a short session of its own."""
    events: list[ServerSentEvent] = []
    async with read_session() as session:
        notifications = NotificationService(session)
        while True:
            batch = await notifications.after(user_id, last_id)
            events += [
                ServerSentEvent(
                    id=str(item.id), event=EVENT_NAME, data=NotificationRead.model_validate(item)
                )
                for item in batch
            ]
            if len(batch) < CATCH_UP_BATCH:
                return events
            last_id = batch[-1].id


async def _start_after(user_id: int, last_event_id: int | None) -> int:
    if last_event_id is not None:
        return last_event_id
    async with read_session() as session:
        return await NotificationService(session).latest_id(user_id)


async def _woken(wake: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)
    woken = wake.is_set()
    wake.clear()
    return woken


async def notification_events(
    caller: StreamCaller, last_event_id: int | None
) -> AsyncIterator[ServerSentEvent]:
    """The caller's notifications as they are committed, after those since `last_event_id`
    (the last one the client received: nothing is lost across a reconnect), with a comment
    every NOTIFICATION_HEARTBEAT_SECONDS; ends when the user or session no longer holds, after
    NOTIFICATION_STREAM_MAX_SECONDS, or when the database fails (the client reconnects)."""
    # Subscribed before the first read: what commits from then on wakes this stream.
    wake = hub.subscribe(caller.user_id)
    ends_at = time.monotonic() + settings.notification_stream_max_seconds
    try:
        last_id = await _start_after(caller.user_id, last_event_id)
        # Sent at once, so the client (and a proxy) sees the stream open before any event.
        yield ServerSentEvent(comment="open", retry=RECONNECT_MS)
        woken = True
        while True:
            if not await caller_still_valid(caller):
                return
            if woken or not hub.listening:
                for event in await _new_notifications(caller.user_id, last_id):
                    last_id = int(event.id or last_id)
                    yield event
            remaining = ends_at - time.monotonic()
            if remaining <= 0:
                return
            heartbeat = settings.notification_heartbeat_seconds
            woken = await _woken(wake, min(heartbeat, remaining))
            if not woken and remaining > heartbeat:
                yield ServerSentEvent(comment="heartbeat")
    except DATABASE_ERRORS as exc:
        logger.warning("Notification stream ended by a database error: %r", exc)
    finally:
        hub.unsubscribe(caller.user_id, wake)
