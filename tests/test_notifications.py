"""Notifications: the stored list and its reads, who is notified of what, the digest preference,
stream tickets, the live stream (in process, then across two real API processes), retention and
anonymisation."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from httpx import AsyncClient

from core.config import settings
from core.db import db
from core.schedules import schedules
from models.notification import NotificationKind
from services.notification_stream import NotificationHub
from services.notifications import NotificationService
from tests.conftest import error_of
from tests.factories import (
    USER_PASSWORD,
    bearer,
    create_user,
    execute,
    fetch,
    first_admin_id,
    scalar,
)
from tests.uvicorn_process import uvicorn_process
from worker.tasks import NotificationPurgePayload, purge_old_notifications

API = "/api/v1"
NOTIFICATIONS = f"{API}/notifications"
STREAM = f"{NOTIFICATIONS}/stream"
TICKET = f"{NOTIFICATIONS}/stream-ticket"
PREFERENCES = f"{API}/auth/me/preferences"


async def add_notification(
    user_id: int, title: str = "Bonjour", *, age_days: int = 0, read: bool = False
) -> int:
    """A notification stored for the user, `age_days` old."""
    return int(
        await scalar(
            "INSERT INTO notifications (user_id, kind, title, body, link, created_at, read_at) "
            "VALUES (:user_id, 'investor_assigned', :title, 'Corps', '/api/v1/investors/1', "
            "now() - make_interval(days => :age), CASE WHEN :read THEN now() END) RETURNING id",
            user_id=user_id,
            title=title,
            age=age_days,
            read=read,
        )
    )


async def notifications_of(user_id: int) -> list[Any]:
    return await fetch(
        "SELECT id, kind, title, body, link, read_at FROM notifications "
        "WHERE user_id = :id ORDER BY id",
        id=user_id,
    )


# --- the list and its reads -----------------------------------------------------------------


async def test_the_list_shows_unread_first_then_newest_and_only_the_caller_s(
    client: AsyncClient,
) -> None:
    user_id = await create_user()
    other = await create_user("other@crm.test")
    old_unread = await add_notification(user_id, "Ancienne non lue", age_days=3)
    read = await add_notification(user_id, "Lue", age_days=1, read=True)
    new_unread = await add_notification(user_id, "Nouvelle non lue")
    newest_read = await add_notification(user_id, "Lue récemment", read=True)
    await add_notification(other, "Pour un autre")
    headers = await bearer(user_id)

    listed = await client.get(NOTIFICATIONS, headers=headers)
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert [item["id"] for item in page["items"]] == [new_unread, old_unread, newest_read, read]
    assert page["total"] == 4
    first = page["items"][0]
    assert first["kind"] == "investor_assigned"
    assert first["title"] == "Nouvelle non lue"
    assert first["body"] == "Corps"
    assert first["link"] == "/api/v1/investors/1"
    assert first["read_at"] is None
    assert set(first) == {"id", "kind", "title", "body", "link", "created_at", "read_at"}

    unread = await client.get(NOTIFICATIONS, params={"unread": "true"}, headers=headers)
    assert [item["id"] for item in unread.json()["items"]] == [new_unread, old_unread]
    assert unread.json()["total"] == 2

    paged = await client.get(NOTIFICATIONS, params={"skip": 1, "limit": 2}, headers=headers)
    assert [item["id"] for item in paged.json()["items"]] == [old_unread, newest_read]


async def test_the_unread_count_counts_the_caller_s_unread_ones(client: AsyncClient) -> None:
    user_id = await create_user()
    other = await create_user("other@crm.test")
    for _ in range(3):
        await add_notification(user_id)
    await add_notification(user_id, read=True)
    await add_notification(other)
    response = await client.get(f"{NOTIFICATIONS}/unread-count", headers=await bearer(user_id))
    assert response.status_code == 200, response.text
    assert response.json() == {"count": 3}
    nothing = await client.get(
        f"{NOTIFICATIONS}/unread-count", headers=await bearer(await create_user("n@crm.test"))
    )
    assert nothing.json() == {"count": 0}


async def test_reading_one_keeps_its_first_reading_time(client: AsyncClient) -> None:
    user_id = await create_user()
    notification = await add_notification(user_id)
    headers = await bearer(user_id)
    first = await client.post(f"{NOTIFICATIONS}/{notification}/read", headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["id"] == notification
    read_at = first.json()["read_at"]
    assert read_at is not None
    again = await client.post(f"{NOTIFICATIONS}/{notification}/read", headers=headers)
    assert again.status_code == 200
    assert again.json()["read_at"] == read_at
    count = await client.get(f"{NOTIFICATIONS}/unread-count", headers=headers)
    assert count.json() == {"count": 0}


async def test_another_user_s_notification_is_not_found_and_stays_unread(
    client: AsyncClient,
) -> None:
    owner = await create_user()
    notification = await add_notification(owner)
    intruder = await bearer(await create_user("intruder@crm.test", role="admin"))
    response = await client.post(f"{NOTIFICATIONS}/{notification}/read", headers=intruder)
    assert response.status_code == 404, response.text
    assert error_of(response) == {"detail": "Notification not found", "code": "not_found"}
    assert (await notifications_of(owner))[0].read_at is None
    missing = await client.post(f"{NOTIFICATIONS}/2000000000/read", headers=intruder)
    assert missing.status_code == 404
    not_an_id = await client.post(f"{NOTIFICATIONS}/abc/read", headers=intruder)
    assert not_an_id.status_code == 422


async def test_read_all_reads_every_one_of_the_caller_s_only(client: AsyncClient) -> None:
    user_id = await create_user()
    other = await create_user("other@crm.test")
    for _ in range(2):
        await add_notification(user_id)
    await add_notification(other)
    response = await client.post(f"{NOTIFICATIONS}/read-all", headers=await bearer(user_id))
    assert response.status_code == 204, response.text
    assert all(row.read_at is not None for row in await notifications_of(user_id))
    assert [row.read_at for row in await notifications_of(other)] == [None]


async def test_the_routes_need_a_token(client: AsyncClient) -> None:
    for method, path in [
        ("GET", NOTIFICATIONS),
        ("GET", f"{NOTIFICATIONS}/unread-count"),
        ("POST", f"{NOTIFICATIONS}/read-all"),
        ("POST", TICKET),
        ("GET", STREAM),
        ("GET", PREFERENCES),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 401, (method, path, response.text)


# --- who is notified of what ----------------------------------------------------------------


async def test_an_investor_created_for_someone_else_notifies_its_owner(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    owner = await create_user()
    created = await client.post(
        f"{API}/investors",
        json={"name": "Quintavalle SA", "owner_id": owner},
        headers=admin_headers,
    )
    assert created.status_code == 201, created.text
    investor_id = created.json()["id"]
    (notification,) = await notifications_of(owner)
    assert notification.kind == "investor_assigned"
    assert notification.title == "Investisseur attribué : Quintavalle SA"
    assert notification.link == f"/api/v1/investors/{investor_id}"
    # The admin owns nothing it did not give itself, and hears nothing of its own action.
    assert await notifications_of(await first_admin_id()) == []


async def test_nobody_is_notified_of_their_own_action(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user()
    mine = await client.post(
        f"{API}/investors", json={"name": "Mine"}, headers=await bearer(user_id)
    )
    assert mine.status_code == 201, mine.text
    manager_id = await create_user("manager@crm.test", role="manager")
    orphan = await client.post(
        f"{API}/investors", json={"name": "Orphan", "owner_id": None}, headers=admin_headers
    )
    took = await client.patch(
        f"{API}/investors/{orphan.json()['id']}",
        json={"owner_id": manager_id},
        headers=await bearer(manager_id),
    )
    assert took.status_code == 200, took.text
    assert took.json()["owner_id"] == manager_id
    assert await scalar("SELECT count(*) FROM notifications") == 0


async def test_a_reassignment_notifies_the_new_owner_only(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    first = await create_user("first@crm.test")
    second = await create_user("second@crm.test")
    manager = await bearer(await create_user("manager@crm.test", role="manager"))
    created = await client.post(
        f"{API}/investors", json={"name": "Acme", "owner_id": first}, headers=admin_headers
    )
    investor_id = created.json()["id"]
    moved = await client.put(
        f"{API}/investors/{investor_id}", json={"owner_id": second}, headers=manager
    )
    assert moved.status_code == 200, moved.text
    assert [row.title for row in await notifications_of(second)] == ["Investisseur attribué : Acme"]
    assert len(await notifications_of(first)) == 1  # from the creation only
    # Anything else changed, or the same owner again: nobody is told anything.
    same = await client.patch(
        f"{API}/investors/{investor_id}", json={"owner_id": second, "notes": "x"}, headers=manager
    )
    assert same.status_code == 200
    assert len(await notifications_of(second)) == 1


async def test_notify_writes_one_row_per_recipient_in_the_caller_s_transaction() -> None:
    user_id = await create_user()
    actor = await create_user("actor@crm.test")
    async with db.sessionmaker() as session:
        ids = await NotificationService(session).notify(
            [user_id, actor, None, user_id],
            NotificationKind.task_assigned,
            "Tâche",
            actor_id=actor,
        )
        assert len(ids) == 1
        await session.rollback()
    # Rolled back with the change that caused it.
    assert await notifications_of(user_id) == []


# --- preferences ----------------------------------------------------------------------------


async def test_the_daily_digest_is_on_until_switched_off(client: AsyncClient) -> None:
    user_id = await create_user()
    headers = await bearer(user_id)
    assert (await client.get(PREFERENCES, headers=headers)).json() == {"daily_digest": True}
    off = await client.put(PREFERENCES, json={"daily_digest": False}, headers=headers)
    assert off.status_code == 200, off.text
    assert off.json() == {"daily_digest": False}
    assert (await client.get(PREFERENCES, headers=headers)).json() == {"daily_digest": False}
    assert await scalar("SELECT daily_digest FROM users WHERE id = :id", id=user_id) is False
    # Another user's preference is their own.
    other = await bearer(await create_user("other@crm.test"))
    assert (await client.get(PREFERENCES, headers=other)).json() == {"daily_digest": True}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"daily_digest": "no"},
        {"daily_digest": 0},
        {"daily_digest": None},
        {"daily_digest": True, "role": "admin"},
    ],
)
async def test_bad_preferences_are_a_422(client: AsyncClient, body: dict[str, Any]) -> None:
    headers = await bearer(await create_user())
    response = await client.put(PREFERENCES, json=body, headers=headers)
    assert response.status_code == 422, response.text


# --- stream tickets and the stream in process -----------------------------------------------


@dataclass
class Event:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


def parse_events(text: str) -> list[Event]:
    """The blocks of a text/event-stream body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event = Event()
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                event.comments.append(value)
            elif name == "data":
                event.data.append(value)
            elif name in ("id", "event"):
                setattr(event, name, value)
        events.append(event)
    return events


def notification_ids(events: list[Event]) -> list[int]:
    return [int(event.id) for event in events if event.event == "notification" and event.id]


async def test_a_ticket_opens_the_stream_once(client: AsyncClient) -> None:
    headers = await bearer(await create_user())
    issued = await client.post(TICKET, headers=headers)
    assert issued.status_code == 201, issued.text
    assert issued.json()["expires_in"] == 60
    ticket = issued.json()["ticket"]
    assert len(ticket) >= 43
    # Only its digest is kept.
    stored = await scalar("SELECT token_hash FROM notification_stream_tickets")
    assert ticket.encode() not in stored

    opened = await client.get(STREAM, params={"ticket": ticket})
    assert opened.status_code == 200, opened.text
    assert opened.headers["content-type"].startswith("text/event-stream")
    # Neither nginx nor a browser cache holds events back.
    assert opened.headers["x-accel-buffering"] == "no"
    assert opened.headers["cache-control"] == "no-cache"
    assert parse_events(opened.text)[0].comments == ["open"]

    reused = await client.get(STREAM, params={"ticket": ticket})
    assert reused.status_code == 401, reused.text
    assert error_of(reused)["code"] == "invalid_ticket"


async def test_an_expired_or_unknown_ticket_is_refused(client: AsyncClient) -> None:
    headers = await bearer(await create_user())
    ticket = (await client.post(TICKET, headers=headers)).json()["ticket"]
    await execute("UPDATE notification_stream_tickets SET expires_at = now() - interval '1 s'")
    expired = await client.get(STREAM, params={"ticket": ticket})
    assert expired.status_code == 401, expired.text
    assert error_of(expired)["code"] == "invalid_ticket"
    unknown = await client.get(STREAM, params={"ticket": "x" * 43})
    assert unknown.status_code == 401
    assert error_of(unknown)["code"] == "invalid_ticket"


async def test_a_ticket_dies_with_its_session_and_its_account(client: AsyncClient) -> None:
    user_id = await create_user()
    login = await client.post(
        f"{API}/auth/login", json={"email": "user@crm.test", "password": USER_PASSWORD}
    )
    token = {"Authorization": f"Bearer {login.json()['access_token']}"}
    ticket = (await client.post(TICKET, headers=token)).json()["ticket"]
    assert (await client.post(f"{API}/auth/logout", headers=token)).status_code == 204
    after_logout = await client.get(STREAM, params={"ticket": ticket})
    assert after_logout.status_code == 401, after_logout.text

    headers = await bearer(user_id)
    ticket = (await client.post(TICKET, headers=headers)).json()["ticket"]
    await execute("UPDATE users SET is_active = false WHERE id = :id", id=user_id)
    from services.users import caller_cache

    caller_cache.evict(user_id)  # rolled-back tests hear no notification
    deactivated = await client.get(STREAM, params={"ticket": ticket})
    assert deactivated.status_code == 401, deactivated.text


async def test_the_stream_replays_what_followed_last_event_id(client: AsyncClient) -> None:
    user_id = await create_user()
    other = await create_user("other@crm.test")
    first = await add_notification(user_id, "Un")
    second = await add_notification(user_id, "Deux")
    await add_notification(other, "Pas pour moi")
    third = await add_notification(user_id, "Trois")
    headers = await bearer(user_id)

    resumed = await client.get(STREAM, headers={**headers, "Last-Event-ID": str(first)})
    assert resumed.status_code == 200, resumed.text
    events = parse_events(resumed.text)
    assert notification_ids(events) == [second, third]
    sent = [event for event in events if event.event == "notification"]
    assert '"title":"Deux"' in sent[0].data[0]

    # The same as a query parameter, for a client reopening the stream with a new ticket.
    ticket = (await client.post(TICKET, headers=headers)).json()["ticket"]
    reopened = await client.get(STREAM, params={"ticket": ticket, "last_event_id": second})
    assert notification_ids(parse_events(reopened.text)) == [third]

    # Without Last-Event-ID, only what comes after the opening.
    fresh = await client.get(STREAM, headers=headers)
    assert notification_ids(parse_events(fresh.text)) == []

    bad = await client.get(STREAM, headers={**headers, "Last-Event-ID": "abc"})
    assert bad.status_code == 422


def test_the_hub_wakes_only_the_streams_of_the_notified_user() -> None:
    hub = NotificationHub()
    first, second = hub.subscribe(7), hub.subscribe(7)
    other = hub.subscribe(8)
    hub.on_notification("7")
    assert (first.is_set(), second.is_set(), other.is_set()) == (True, True, False)
    hub.on_notification("not-a-user")
    assert not other.is_set()
    hub.unsubscribe(7, first)
    hub.unsubscribe(7, second)
    assert hub.open_streams == 1


def test_a_change_to_every_account_or_to_the_listener_wakes_every_stream() -> None:
    hub = NotificationHub()
    streams = [hub.subscribe(user_id) for user_id in (1, 2, 3)]
    hub.on_user_changed("2")
    assert [wake.is_set() for wake in streams] == [False, True, False]
    hub.on_user_changed("*")  # the users table emptied or restored
    assert all(wake.is_set() for wake in streams)
    for wake in streams:
        wake.clear()
    # Lost, then back: every stream reads what was committed meanwhile.
    hub.set_listening(False)
    assert hub.listening is False and all(wake.is_set() for wake in streams)


# --- retention and anonymisation ------------------------------------------------------------


async def test_the_nightly_purge_deletes_notifications_past_the_retention() -> None:
    user_id = await create_user()
    kept = await add_notification(
        user_id, "Récente", age_days=settings.notification_retention_days - 1
    )
    await add_notification(
        user_id, "Trop vieille", age_days=settings.notification_retention_days + 1
    )
    await execute(
        "INSERT INTO notification_stream_tickets (token_hash, user_id, security_stamp, "
        "session_id, expires_at) VALUES ('\\x00', :id, gen_random_uuid(), gen_random_uuid(), "
        "now() - interval '1 minute')",
        id=user_id,
    )
    from core.jobs import JobContext

    async def no_progress(_: int) -> None:
        return None

    async with db.sessionmaker() as session, session.begin():
        context = JobContext(
            job_id=1, attempt=1, created_by=None, session=session, report_progress=no_progress
        )
        await purge_old_notifications(NotificationPurgePayload(), context)
    assert [row.id for row in await notifications_of(user_id)] == [kept]
    assert await scalar("SELECT count(*) FROM notification_stream_tickets") == 0
    assert any(s.job_type == "notifications.purge" for s in schedules)


async def test_anonymising_an_investor_scrubs_the_notifications_naming_it(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    owner = await create_user()
    created = await client.post(
        f"{API}/investors",
        json={"name": "Aurèle Vasseur", "email": "aurele@vasseur.test", "owner_id": owner},
        headers=admin_headers,
    )
    investor_id = created.json()["id"]
    (named,) = await notifications_of(owner)
    by_email = await add_notification(owner, "Courriel à envoyer")
    await execute(
        "UPDATE notifications SET body = 'Écrire à AURELE@vasseur.test' WHERE id = :id",
        id=by_email,
    )
    unrelated = await add_notification(owner, "Rappel : réunion d'équipe")
    response = await client.post(
        f"{API}/gdpr/anonymize",
        json={"entity": "investor", "id": investor_id},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    rows = {row.id: row for row in await notifications_of(owner)}
    assert (rows[named.id].title, rows[named.id].body) == ("Anonymisé", None)
    assert (rows[by_email].title, rows[by_email].body) == ("Anonymisé", None)
    assert (rows[unrelated].title, rows[unrelated].body) == ("Rappel : réunion d'équipe", "Corps")


# --- across real API processes --------------------------------------------------------------

STREAM_ENV = {
    "RUN_WORKER": "false",
    "NOTIFICATION_STREAM_MAX_SECONDS": "120",
    "NOTIFICATION_HEARTBEAT_SECONDS": "0.3",
}


class EventReader:
    """The events of an open stream as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, seconds: float) -> Event | None:
        """The next block (event or comment), or None when the stream ended."""
        block: list[str] = []

        async def read_block() -> Event | None:
            async for line in self._lines:
                if line == "":
                    if block:
                        return parse_events("\n".join(block))[0]
                    continue
                block.append(line)
            return None

        return await asyncio.wait_for(read_block(), seconds)

    async def next_notification(self, seconds: float) -> Event:
        deadline = time.monotonic() + seconds
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            assert event is not None, "the stream ended"
            if event.event == "notification":
                return event


@asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient, url: str, **kwargs: Any
) -> AsyncIterator[EventReader]:
    async with http.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        reader = EventReader(response)
        opened = await reader.next(5)
        assert opened is not None and opened.comments == ["open"]
        yield reader


async def login(http: httpx.AsyncClient, base: str, email: str) -> dict[str, str]:
    response = await http.post(
        f"{base}/api/v1/auth/login", json={"email": email, "password": USER_PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.mark.committing
async def test_a_notification_made_by_one_process_reaches_a_stream_on_another_within_1_s(
    database_url: str,
) -> None:
    user_id = await create_user("owner@crm.test")
    admin = await bearer(await first_admin_id())
    with (
        uvicorn_process(database_url, env=STREAM_ENV) as (api_a, _),
        uvicorn_process(database_url, env=STREAM_ENV) as (api_b, _),
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            user = await login(http, api_a, "owner@crm.test")
            ticket = (await http.post(f"{api_a}{TICKET}", headers=user)).json()["ticket"]
            async with open_stream(http, f"{api_b}{STREAM}", params={"ticket": ticket}) as stream:
                # Heartbeats come while nothing happens.
                beat = await stream.next(2)
                assert beat is not None and beat.comments == ["heartbeat"]
                started = time.monotonic()
                created = await http.post(
                    f"{api_a}{API}/investors",
                    json={"name": "Live Capital", "owner_id": user_id},
                    headers=admin,
                )
                assert created.status_code == 201, created.text
                event = await stream.next_notification(1.0)
                assert time.monotonic() - started < 1.0
                assert '"title":"Investisseur attribué : Live Capital"' in event.data[0]
                last_seen = event.id
                assert last_seen is not None

            # Disconnected: two more arrive meanwhile; the reconnect (Last-Event-ID) gets both.
            for name in ("Second", "Third"):
                more = await http.post(
                    f"{api_a}{API}/investors",
                    json={"name": name, "owner_id": user_id},
                    headers=admin,
                )
                assert more.status_code == 201, more.text
            async with open_stream(
                http, f"{api_b}{STREAM}", headers={**user, "Last-Event-ID": last_seen}
            ) as stream:
                replayed = [await stream.next_notification(2) for _ in range(2)]
            titles = [event.data[0] for event in replayed]
            assert "Second" in titles[0] and "Third" in titles[1]
            ids = [int(event.id or 0) for event in replayed]
            assert ids == sorted(ids) and ids[0] > int(last_seen)


@pytest.mark.committing
async def test_a_stream_closes_when_its_session_is_logged_out_on_another_process(
    database_url: str,
) -> None:
    await create_user("owner@crm.test")
    with (
        uvicorn_process(database_url, env=STREAM_ENV) as (api_a, _),
        uvicorn_process(database_url, env=STREAM_ENV) as (api_b, _),
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            user = await login(http, api_a, "owner@crm.test")
            async with open_stream(http, f"{api_b}{STREAM}", headers=user) as stream:
                logout = await http.post(f"{api_a}{API}/auth/logout", headers=user)
                assert logout.status_code == 204
                started = time.monotonic()
                while (event := await stream.next(2)) is not None:
                    assert event.comments == ["heartbeat"], event
                assert time.monotonic() - started < 1.5
            refused = await http.get(f"{api_b}{STREAM}", headers=user)
            assert refused.status_code == 401


@pytest.mark.committing
async def test_a_stream_closes_when_its_user_is_deactivated(database_url: str) -> None:
    user_id = await create_user("owner@crm.test")
    admin = await bearer(await first_admin_id())
    with uvicorn_process(database_url, env=STREAM_ENV) as (api, _):
        async with httpx.AsyncClient(timeout=10) as http:
            user = await bearer(user_id)
            async with open_stream(http, f"{api}{STREAM}", headers=user) as stream:
                off = await http.put(
                    f"{api}{API}/users/{user_id}", json={"is_active": False}, headers=admin
                )
                assert off.status_code == 200, off.text
                while (event := await stream.next(2)) is not None:
                    assert event.comments == ["heartbeat"], event


@pytest.mark.committing
async def test_a_rolled_back_notification_is_never_streamed(database_url: str) -> None:
    user_id = await create_user("owner@crm.test")
    headers = await bearer(user_id)
    with uvicorn_process(database_url, env=STREAM_ENV) as (api, _):
        async with (
            httpx.AsyncClient(timeout=10) as http,
            open_stream(http, f"{api}{STREAM}", headers=headers) as stream,
        ):
            async with db.sessionmaker() as session:
                await NotificationService(session).notify(
                    [user_id], NotificationKind.report_ready, "Annulé", actor_id=None
                )
                await session.rollback()
            async with db.sessionmaker() as session, session.begin():
                await NotificationService(session).notify(
                    [user_id], NotificationKind.report_ready, "Validé", actor_id=None
                )
            event = await stream.next_notification(2)
            assert '"title":"Validé"' in event.data[0]


# --- the shipped proxy ----------------------------------------------------------------------


def test_the_nginx_config_streams_without_buffering_and_waits_long() -> None:
    import crossplane  # type: ignore[import-untyped]

    from tests.test_deploy_files import NGINX_CONF, children, http_block, nginx_seconds, only

    (config,) = crossplane.parse(str(NGINX_CONF), single=True)["config"]
    http = http_block(config["parsed"])
    (location,) = [
        location
        for server in children(http, "server")
        for location in children(server["block"], "location")
        if location["args"] == ["=", STREAM]
    ]
    block = location["block"]
    assert only(block, "proxy_pass")["args"] == ["http://crm_api"]
    assert only(block, "proxy_buffering")["args"] == ["off"]
    read_timeout = nginx_seconds(only(block, "proxy_read_timeout")["args"][0])
    # Many heartbeats long: an idle stream is never cut by the proxy.
    assert read_timeout >= 10 * settings.notification_heartbeat_seconds
    assert read_timeout >= 600


@pytest.mark.committing
async def test_open_streams_hold_no_pooled_connection(database_url: str) -> None:
    # A pool of 2 and 6 open streams: were a stream to keep its connection between events, the
    # requests below would wait for one (10 s, then 503) and the deliveries would stall.
    user_id = await create_user("owner@crm.test")
    headers = await bearer(user_id)
    env = {**STREAM_ENV, "DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "0"}
    with uvicorn_process(database_url, env=env) as (api, _):
        async with httpx.AsyncClient(timeout=5) as http, AsyncExitStack() as streams:
            readers = [
                await streams.enter_async_context(
                    open_stream(http, f"{api}{STREAM}", headers=headers)
                )
                for _ in range(6)
            ]
            for _ in range(4):
                answered = await http.get(f"{api}{NOTIFICATIONS}/unread-count", headers=headers)
                assert answered.status_code == 200, answered.text
            async with db.sessionmaker() as session, session.begin():
                await NotificationService(session).notify(
                    [user_id], NotificationKind.report_ready, "Pour tous", actor_id=None
                )
            for reader in readers:
                event = await reader.next_notification(2)
                assert '"title":"Pour tous"' in event.data[0]
