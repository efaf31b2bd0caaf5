"""The callers' cache: the accounts behind recent tokens are kept in memory while the app LISTENs
for changes to users, and forgotten as soon as any change is committed, whoever made it.

Changes are made the way another API process or an operator would: plain SQL on a connection
of the test's own, outside the app's pool, so the app can only learn of them by notification.
"""

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from httpx import AsyncClient
from sqlalchemy import make_url
from sqlalchemy.util import await_only

import services.users
from models.user import AuthenticatedUser, UserRole
from services.users import USER_CHANGES_CHANNEL, CallerCache, caller_cache
from tests.conftest import ADMIN_EMAIL, engine_event, error_of, role_url
from tests.factories import bearer, create_user
from tests.test_auth import until
from tests.test_db_sessions import connect_directly

FORBIDDEN_TO_USERS = {
    "detail": "Not allowed for the user role: only an admin may manage users",
    "code": "forbidden",
}

# Changes reach the cache by notification, and only committed changes are notified.
pytestmark = pytest.mark.committing

ME = "/api/v1/auth/me"
USERS = "/api/v1/users"
LISTENER = "tpm-finance-crm listener"
INVALID_TOKEN = {"detail": "Invalid or expired token", "code": "invalid_token"}


@pytest.fixture(autouse=True)
async def listening(app: object) -> None:
    """The app listens before each test starts (a previous test may have cut its connection)."""
    await until(lambda: caller_cache.listening)


async def connect_as_owner() -> asyncpg.Connection:
    """A connection as the owner role: TRUNCATE is not the app role's to run."""
    return await asyncpg.connect(
        make_url(role_url("owner")).set(drivername="postgresql").render_as_string(False)
    )


async def run_sql(sql: str, *args: object) -> None:
    """Plain SQL committed on a connection of its own, as another process or an operator does."""
    conn = await (connect_as_owner() if sql.startswith("TRUNCATE") else connect_directly())
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def change_elsewhere(sql: str, *args: object) -> None:
    """Commit `sql` elsewhere, then wait until the app has received its notification."""
    generation = caller_cache.generation
    await run_sql(sql, *args)
    await until(lambda: caller_cache.generation > generation)


async def cached_caller(client: AsyncClient, user_id: int) -> dict[str, str]:
    """Headers of a caller whose account the app now holds in its cache."""
    headers = await bearer(user_id)
    # The account's creation is notified too: a lookup it overtakes is not cached, so ask
    # again until one is.
    deadline = asyncio.get_running_loop().time() + 5.0
    while caller_cache.get(user_id) is None:
        assert asyncio.get_running_loop().time() < deadline, "the account was never cached"
        response = await client.get(ME, headers=headers)
        assert response.status_code == 200, response.text
    return headers


@contextmanager
def account_reads(
    then: Callable[[], Awaitable[None]] | None = None,
) -> Iterator[list[object]]:
    """The ids of the accounts the app reads from users meanwhile; `then` runs after each read,
    before the app goes on."""
    reads: list[object] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "FROM users" in statement and "WHERE users.id = " in statement:
            reads.append(params[0])
            if then is not None:
                # The engine runs its events inside SQLAlchemy's greenlet: this waits for the
                # coroutine on the event loop, with the app's request suspended meanwhile.
                await_only(then())

    with engine_event("after_cursor_execute", record):
        yield reads


async def listener_states() -> list[str]:
    conn = await connect_directly()
    try:
        rows = await conn.fetch(
            "SELECT state FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            LISTENER,
        )
    finally:
        await conn.close()
    return [row["state"] for row in rows]


# --- the app listens ------------------------------------------------------------------------


async def test_the_app_listens_on_one_connection_of_its_own() -> None:
    assert caller_cache.listening is True
    # Which channels a backend listens on cannot be read from another session: its name
    # tells it apart from the pool's connections, and a notification proves it listens.
    assert await listener_states() == ["idle"]
    generation = caller_cache.generation
    await run_sql("SELECT pg_notify($1, '*')", USER_CHANGES_CHANNEL)
    await until(lambda: caller_cache.generation > generation)


async def test_a_second_request_with_the_same_token_is_answered_from_the_cache(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    first_response = await client.get(ME, headers=admin_headers)
    assert first_response.status_code == 200, first_response.text
    assert first_response.json()["email"] == ADMIN_EMAIL
    cached = caller_cache.get(first_response.json()["id"])
    assert cached is not None
    # An entry that differs from the row shows where the next answer comes from.
    caller_cache.put(replace(cached, full_name="From the cache"), caller_cache.generation)
    second_response = await client.get(ME, headers=admin_headers)
    assert second_response.status_code == 200, second_response.text
    assert second_response.json() == {**first_response.json(), "full_name": "From the cache"}


# --- changes made elsewhere -----------------------------------------------------------------


async def test_an_admin_demoted_by_plain_sql_is_refused_admin_routes(client: AsyncClient) -> None:
    admin_id = await create_user("second-admin@crm.test", role="admin")
    headers = await cached_caller(client, admin_id)
    assert (await client.get(USERS, headers=headers)).status_code == 200
    await change_elsewhere("UPDATE users SET role = 'user' WHERE id = $1", admin_id)
    response = await client.get(USERS, headers=headers)
    assert response.status_code == 403
    assert error_of(response) == {
        "detail": "Not allowed for the user role: only an admin may manage users",
        "code": "forbidden",
    }
    me = await client.get(ME, headers=headers)
    assert me.status_code == 200, me.text
    assert (me.json()["role"], me.json()["is_admin"]) == ("user", False)


@pytest.mark.parametrize(
    "change",
    ["UPDATE users SET is_active = false WHERE id = $1", "DELETE FROM users WHERE id = $1"],
    ids=["deactivated", "deleted"],
)
async def test_an_account_removed_by_plain_sql_loses_access(
    client: AsyncClient, change: str
) -> None:
    user_id = await create_user()
    headers = await cached_caller(client, user_id)
    await change_elsewhere(change, user_id)
    response = await client.get(ME, headers=headers)
    assert response.status_code == 401
    assert error_of(response) == INVALID_TOKEN


async def test_a_name_changed_by_plain_sql_shows_on_the_next_request(client: AsyncClient) -> None:
    user_id = await create_user()
    headers = await cached_caller(client, user_id)
    await change_elsewhere(
        "UPDATE users SET full_name = 'Renamed Elsewhere' WHERE id = $1", user_id
    )
    response = await client.get(ME, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "Renamed Elsewhere"


async def test_emptying_the_users_table_forgets_every_cached_account(client: AsyncClient) -> None:
    # Accounts of their own: the admin_headers fixture's session would hold off the TRUNCATE.
    cached = [
        await cached_caller(client, await create_user(email))
        for email in ("a@crm.test", "b@crm.test")
    ]
    # TRUNCATE fires no row trigger: its notification says '*'. The autouse cleanup puts the
    # first admin back afterwards.
    await change_elsewhere("TRUNCATE users CASCADE")
    for headers in cached:
        response = await client.get(ME, headers=headers)
        assert response.status_code == 401
        assert error_of(response) == INVALID_TOKEN


# --- the notifications themselves -----------------------------------------------------------


@pytest.fixture
async def user_changes() -> AsyncIterator[asyncio.Queue[str]]:
    """The payloads on the users' channel, as received by a listener of the test's own."""
    conn = await connect_directly()
    received: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(USER_CHANGES_CHANNEL, lambda *args: received.put_nowait(args[-1]))
    try:
        yield received
    finally:
        await conn.close()


async def next_payloads(received: asyncio.Queue[str], count: int = 1) -> list[str]:
    return [await asyncio.wait_for(received.get(), 5.0) for _ in range(count)]


async def test_committed_changes_are_notified_by_id_and_a_truncate_by_a_star(
    user_changes: asyncio.Queue[str],
) -> None:
    first_id = await create_user("first@crm.test")
    second_id = await create_user("second@crm.test")
    # A new account too: after a restore its id may be one a process still holds.
    assert await next_payloads(user_changes, 2) == [str(first_id), str(second_id)]
    await run_sql("UPDATE users SET full_name = 'Renamed' WHERE id = $1", first_id)
    assert await next_payloads(user_changes) == [str(first_id)]
    await run_sql(
        "UPDATE users SET full_name = full_name || '.' WHERE id IN ($1, $2)", first_id, second_id
    )
    assert sorted(await next_payloads(user_changes, 2)) == sorted([str(first_id), str(second_id)])
    conn = await connect_as_owner()
    try:
        rolled_back = conn.transaction()
        await rolled_back.start()
        await conn.execute("UPDATE users SET is_active = false WHERE id = $1", first_id)
        await conn.execute("TRUNCATE users CASCADE")
        await rolled_back.rollback()
        await conn.execute("DELETE FROM users WHERE id = $1", second_id)
        # Notifications arrive in commit order: had the rolled-back transaction sent any, it
        # would come before the deletion's.
        assert await next_payloads(user_changes) == [str(second_id)]
        await conn.execute("TRUNCATE users CASCADE")
        assert await next_payloads(user_changes) == ["*"]
    finally:
        await conn.close()


# --- the listening connection is lost -------------------------------------------------------


async def test_while_the_listener_is_lost_the_cache_is_bypassed_then_resumes(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user()
    headers = await cached_caller(client, user_id)
    conn = await connect_directly()
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            LISTENER,
        )
        assert len(killed) == 1
        await until(lambda: not caller_cache.listening)
        # No notification can arrive now, and none is waited for: the change counts at once.
        await conn.execute("UPDATE users SET is_active = false WHERE id = $1", user_id)
    finally:
        await conn.close()
    response = await client.get(ME, headers=headers)
    assert response.status_code == 401
    assert error_of(response) == INVALID_TOKEN
    await until(lambda: caller_cache.listening)
    # The deactivation was never notified: nothing cached before the loss may outlive it.
    response = await client.get(ME, headers=headers)
    assert response.status_code == 401
    assert error_of(response) == INVALID_TOKEN
    assert await listener_states() == ["idle"]
    # Listening again, the cache is in use again.
    admin = await client.get(ME, headers=admin_headers)
    assert admin.status_code == 200, admin.text
    assert caller_cache.get(admin.json()["id"]) is not None


async def test_a_frozen_listener_is_given_up_within_3_s_and_the_cache_bypassed(
    client: AsyncClient,
) -> None:
    user_id = await create_user()
    headers = await cached_caller(client, user_id)
    conn = await connect_directly()
    try:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            LISTENER,
        )
    finally:
        await conn.close()
    # A server process that answers nothing and sends no FIN: a host gone, a cable cut.
    os.kill(pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    try:
        frozen_at = loop.time()
        # Notified to a listener that will never read it.
        await run_sql("UPDATE users SET is_active = false WHERE id = $1", user_id)
        while (response := await client.get(ME, headers=headers)).status_code == 200:
            assert loop.time() - frozen_at < 3.0, "the cache still served a deactivated user"
            await asyncio.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert response.status_code == 401
    assert error_of(response) == INVALID_TOKEN
    await until(lambda: caller_cache.listening)
    assert await listener_states() == ["idle"]  # a new connection; the frozen one was dropped
    response = await client.get(ME, headers=headers)
    assert response.status_code == 401


# --- a lookup overtaken by a change ---------------------------------------------------------


async def test_a_lookup_overtaken_by_a_change_does_not_cache_what_it_read(
    client: AsyncClient,
) -> None:
    user_id = await create_user()
    headers = await bearer(user_id)
    rename = "UPDATE users SET full_name = 'Renamed Meanwhile' WHERE id = $1"
    # The change lands, and is notified, between the app's reading the account and storing it.
    with account_reads(then=lambda: change_elsewhere(rename, user_id)) as reads:
        response = await client.get(ME, headers=headers)
    assert reads == [user_id]
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "User"  # read before the change
    response = await client.get(ME, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "Renamed Meanwhile"


# --- CallerCache on its own -----------------------------------------------------------------


def account(user_id: int, role: UserRole = UserRole.user) -> AuthenticatedUser:
    return AuthenticatedUser(
        id=user_id,
        email=f"user{user_id}@crm.test",
        full_name=f"User {user_id}",
        role=role,
        is_active=True,
        security_stamp=uuid.UUID(int=user_id),
    )


def listening_cache(**options: Any) -> CallerCache:
    cache = CallerCache(**options)
    cache.set_listening(True)
    return cache


def test_a_notification_forgets_its_account_and_a_star_forgets_them_all() -> None:
    cache = listening_cache()
    for user_id in (1, 2, 3):
        cache.put(account(user_id), cache.generation)
    cache.on_notification("2")
    assert [cache.get(user_id) for user_id in (1, 2, 3)] == [account(1), None, account(3)]
    cache.on_notification("*")
    assert [cache.get(user_id) for user_id in (1, 2, 3)] == [None, None, None]


def test_a_lookup_started_before_an_eviction_does_not_store_its_result() -> None:
    cache = listening_cache()
    evictions: dict[str, Callable[[], None]] = {
        "evict": lambda: cache.evict(2),
        "notification": lambda: cache.on_notification("2"),
        "star": lambda: cache.on_notification("*"),
        "clear": cache.clear,
        "listening again": lambda: cache.set_listening(True),
    }
    for name, evict in evictions.items():
        started = cache.generation
        evict()
        cache.put(account(1), started)
        assert cache.get(1) is None, name
    cache.put(account(1), cache.generation)
    assert cache.get(1) == account(1)


def test_nothing_is_stored_or_served_while_not_listening() -> None:
    cache = CallerCache()
    cache.put(account(1), cache.generation)
    cache.listening = True  # set directly: set_listening's reset would hide a stored entry
    assert cache.get(1) is None
    cache.put(account(1), cache.generation)
    assert cache.get(1) == account(1)
    cache.listening = False
    assert cache.get(1) is None


def test_losing_the_listener_forgets_every_account() -> None:
    cache = listening_cache()
    cache.put(account(1), cache.generation)
    cache.set_listening(False)
    cache.set_listening(True)
    assert cache.get(1) is None


def test_an_entry_expires_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(services.users, "time", SimpleNamespace(monotonic=lambda: clock.now))
    cache = listening_cache(ttl_s=30.0)
    cache.put(account(1), cache.generation)
    clock.now = 1029.9
    assert cache.get(1) == account(1)
    clock.now = 1030.1
    assert cache.get(1) is None


def test_an_admin_entry_expires_after_five_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(services.users, "time", SimpleNamespace(monotonic=lambda: clock.now))
    cache = listening_cache()
    cache.put(account(1, UserRole.admin), cache.generation)
    cache.put(account(2), cache.generation)
    clock.now = 1004.9
    assert (cache.get(1), cache.get(2)) == (account(1, UserRole.admin), account(2))
    clock.now = 1005.1
    assert (cache.get(1), cache.get(2)) == (None, account(2))


def test_the_cache_holds_at_most_its_size() -> None:
    cache = listening_cache(size=2)
    for user_id in (1, 2, 3):
        cache.put(account(user_id), cache.generation)
    held = [user_id for user_id in (1, 2, 3) if cache.get(user_id) is not None]
    assert len(held) <= 2
    assert 3 in held  # the newest account is kept
