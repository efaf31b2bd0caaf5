"""The attacks of issue 13 on login and tokens, each replayed against the real app: tokens that
outlive a password, role or activity change or change owner when ids are reused, parallel
guesses past the lockout, logins that stall the event loop, one address locking everybody out,
a forged X-Forwarded-For, and login failures kept forever."""

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from httpx import ASGITransport, AsyncClient, Response
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings, settings
from core.db import db
from services.auth import CEILING_FACTOR, CEILING_FIRST_DELAY_S, PURGE_EVERY
from services.users import caller_cache
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, error_of, owner_connection
from tests.factories import USER_PASSWORD, create_user
from tests.test_auth import (
    ME,
    PASSWORD,
    assert_invalid_credentials,
    assert_throttled,
    assert_token,
    bearer_header,
    login_json,
)
from tests.uvicorn_process import uvicorn_process

# Real commits: other processes, other connections and notifications must see the rows.
pytestmark = pytest.mark.committing

USERS = "/api/v1/users"
INVALID_TOKEN = {"detail": "Invalid or expired token", "code": "invalid_token"}
WRONG = "wrong-password"


def assert_refused(response: Response) -> None:
    assert response.status_code == 401, response.text
    assert error_of(response) == INVALID_TOKEN


async def login_token(client: AsyncClient, email: str, password: str = USER_PASSWORD) -> str:
    return assert_token(await login_json(client, email, password))


# --- the security stamp ---------------------------------------------------------------------


async def test_a_password_change_ends_every_token_issued_before(client: AsyncClient) -> None:
    await create_user("changer@crm.test")
    first = await login_token(client, "changer@crm.test")
    second = await login_token(client, "changer@crm.test")
    for token in (first, second):
        assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    changed = await client.put(
        PASSWORD,
        json={"current_password": USER_PASSWORD, "new_password": "a-brand-new-password"},
        headers=bearer_header(first),
    )
    assert changed.status_code == 204, changed.text
    # Same process, at once: the tokens were cached a moment ago.
    assert_refused(await client.get(ME, headers=bearer_header(first)))
    assert_refused(await client.get(ME, headers=bearer_header(second)))
    fresh = await login_token(client, "changer@crm.test", "a-brand-new-password")
    assert (await client.get(ME, headers=bearer_header(fresh))).status_code == 200


async def test_a_password_set_by_an_admin_ends_the_users_tokens(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user("reset@crm.test")
    token = await login_token(client, "reset@crm.test")
    assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    reset = await client.put(
        f"{USERS}/{user_id}", json={"password": "set-by-the-admin"}, headers=admin_headers
    )
    assert reset.status_code == 200, reset.text
    assert_refused(await client.get(ME, headers=bearer_header(token)))
    await login_token(client, "reset@crm.test", "set-by-the-admin")


async def test_a_deactivation_ends_the_tokens_even_once_reactivated(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user("paused@crm.test")
    token = await login_token(client, "paused@crm.test")
    assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    for active in (False, True):
        response = await client.put(
            f"{USERS}/{user_id}", json={"is_active": active}, headers=admin_headers
        )
        assert response.status_code == 200, response.text
    assert_refused(await client.get(ME, headers=bearer_header(token)))
    await login_token(client, "paused@crm.test")


@pytest.mark.parametrize(("before", "after"), [("user", "admin"), ("admin", "user")])
async def test_a_role_change_ends_the_tokens_issued_under_the_old_role(
    client: AsyncClient, admin_headers: dict[str, str], before: str, after: str
) -> None:
    user_id = await create_user("promoted@crm.test", role=before)
    token = await login_token(client, "promoted@crm.test")
    assert (await client.get(ME, headers=bearer_header(token))).json()["role"] == before
    changed = await client.put(f"{USERS}/{user_id}", json={"role": after}, headers=admin_headers)
    assert changed.status_code == 200, changed.text
    assert_refused(await client.get(ME, headers=bearer_header(token)))
    assert_refused(await client.get(USERS, headers=bearer_header(token)))
    fresh = await login_token(client, "promoted@crm.test")
    assert (await client.get(ME, headers=bearer_header(fresh))).json()["role"] == after


async def test_other_changes_keep_the_tokens(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user("renamed@crm.test")
    token = await login_token(client, "renamed@crm.test")
    renamed = await client.put(
        f"{USERS}/{user_id}",
        json={"full_name": "Renamed", "is_active": True, "role": "user"},
        headers=admin_headers,
    )
    assert renamed.status_code == 200, renamed.text
    me = await client.get(ME, headers=bearer_header(token))
    assert me.status_code == 200, me.text
    assert me.json()["full_name"] == "Renamed"


async def test_a_token_never_passes_to_the_next_owner_of_its_user_id(
    client: AsyncClient, session: AsyncSession
) -> None:
    # The finding: a backup restored rolls the id sequence back, and the next account created
    # gets the id an old token names. Here the restore is replayed in SQL.
    old_id = await create_user("former@crm.test")
    token = await login_token(client, "former@crm.test")
    assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    await session.execute(text("DELETE FROM users WHERE id = :id"), {"id": old_id})
    await session.commit()
    # Restarting a sequence is the owner's right, not the API's.
    async with owner_connection() as owner:
        await owner.execute(text(f"ALTER SEQUENCE users_id_seq RESTART WITH {old_id}"))
    new_id = await create_user("new-admin@crm.test", role="admin")
    assert new_id == old_id
    assert_refused(await client.get(ME, headers=bearer_header(token)))
    assert_refused(await client.get(USERS, headers=bearer_header(token)))
    # Even once the new owner's account is in the cache.
    fresh = await login_token(client, "new-admin@crm.test")
    assert (await client.get(USERS, headers=bearer_header(fresh))).status_code == 200
    assert caller_cache.get(new_id) is not None
    assert_refused(await client.get(ME, headers=bearer_header(token)))


async def test_every_account_gets_its_own_random_stamp(session: AsyncSession) -> None:
    for email in ("one@crm.test", "two@crm.test"):
        await create_user(email)
    stamps = (await session.execute(text("SELECT security_stamp FROM users"))).scalars().all()
    assert len(stamps) == 3
    assert len(set(stamps)) == 3
    assert all(isinstance(stamp, uuid.UUID) and stamp.version == 4 for stamp in stamps)


# --- the lock per email and client address --------------------------------------------------


@asynccontextmanager
async def client_at(app: object, address: str) -> AsyncIterator[AsyncClient]:
    """A client whose requests come from `address` (the socket's peer, as uvicorn reports it)."""
    transport = ASGITransport(app=app, raise_app_exceptions=False, client=(address, 50000))  # type: ignore[arg-type]
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def fail_from(app: object, address: str, email: str, times: int) -> None:
    async with client_at(app, address) as http:
        for _ in range(times):
            assert_invalid_credentials(await login_json(http, email, WRONG))


async def login_from(app: object, address: str, email: str, password: str) -> Response:
    async with client_at(app, address) as http:
        return await login_json(http, email, password)


async def test_the_lock_holds_one_address_and_not_the_others(app: object) -> None:
    await fail_from(app, "198.51.100.1", ADMIN_EMAIL, settings.login_max_failures)
    assert_throttled(await login_from(app, "198.51.100.1", ADMIN_EMAIL, ADMIN_PASSWORD))
    assert_token(await login_from(app, "198.51.100.2", ADMIN_EMAIL, ADMIN_PASSWORD))
    assert_token(await login_from(app, "2001:db8::2", ADMIN_EMAIL, ADMIN_PASSWORD))
    # The owner's success elsewhere does not lift the guesser's lock.
    assert_throttled(await login_from(app, "198.51.100.1", ADMIN_EMAIL, ADMIN_PASSWORD))


async def reach_the_ceiling(app: object, email: str) -> None:
    """Every address together fails as often as the per-email ceiling allows (each address
    stopping at its own lock)."""
    for index in range(CEILING_FACTOR):
        await fail_from(app, f"203.0.113.{index + 1}", email, settings.login_max_failures)


async def shift_failures(session: AsyncSession, seconds: int) -> None:
    """Make every recorded failure `seconds` older (all stay within the window)."""
    await session.execute(
        text("UPDATE login_failures SET failed_at = failed_at - make_interval(secs => :s)"),
        {"s": seconds},
    )
    await session.commit()


async def test_beyond_the_ceiling_a_new_address_waits_a_delay_that_doubles(
    app: object, session: AsyncSession
) -> None:
    await reach_the_ceiling(app, ADMIN_EMAIL)
    first = assert_throttled(await login_from(app, "192.0.2.10", ADMIN_EMAIL, ADMIN_PASSWORD))
    assert CEILING_FIRST_DELAY_S - 5 <= first <= CEILING_FIRST_DELAY_S
    # Once the delay has passed, one more attempt goes through...
    await shift_failures(session, CEILING_FIRST_DELAY_S + 1)
    assert_invalid_credentials(await login_from(app, "192.0.2.11", ADMIN_EMAIL, WRONG))
    # ...and, having failed, doubles the wait of every new address, right password or not.
    second = assert_throttled(await login_from(app, "192.0.2.12", ADMIN_EMAIL, ADMIN_PASSWORD))
    assert 2 * CEILING_FIRST_DELAY_S - 5 <= second <= 2 * CEILING_FIRST_DELAY_S
    await shift_failures(session, 2 * CEILING_FIRST_DELAY_S + 1)
    assert_invalid_credentials(await login_from(app, "192.0.2.13", ADMIN_EMAIL, WRONG))
    third = assert_throttled(await login_from(app, "192.0.2.14", ADMIN_EMAIL, ADMIN_PASSWORD))
    assert 4 * CEILING_FIRST_DELAY_S - 5 <= third <= 4 * CEILING_FIRST_DELAY_S
    # Never a server-side sleep: refused at once, and never recorded.
    count = (await session.execute(text("SELECT count(*) FROM login_failures"))).scalar_one()
    assert count == CEILING_FACTOR * settings.login_max_failures + 2


async def test_the_delay_never_exceeds_fifteen_minutes(app: object, session: AsyncSession) -> None:
    await reach_the_ceiling(app, ADMIN_EMAIL)
    # Failures from past rounds of the doubling, still within the window.
    await session.execute(
        text(
            "INSERT INTO login_failures (email, client_address, failed_at) "
            "SELECT :email, '192.0.2.' || n, now() - interval '1 minute' "
            "FROM generate_series(1, 20) AS n"
        ),
        {"email": ADMIN_EMAIL},
    )
    await session.commit()
    retry_after = assert_throttled(await login_from(app, "192.0.2.99", ADMIN_EMAIL, WRONG))
    assert 15 * 60 - 10 <= retry_after <= 15 * 60


async def test_an_address_the_owner_logged_in_from_is_never_slowed_by_others(
    app: object, session: AsyncSession
) -> None:
    user_id = await create_user("owner@crm.test")
    assert_token(await login_from(app, "192.0.2.50", "owner@crm.test", USER_PASSWORD))
    await reach_the_ceiling(app, "owner@crm.test")
    assert_throttled(await login_from(app, "192.0.2.51", "owner@crm.test", USER_PASSWORD))
    assert_token(await login_from(app, "192.0.2.50", "owner@crm.test", USER_PASSWORD))
    # Its own failures still lock it like any address.
    await fail_from(app, "192.0.2.50", "owner@crm.test", settings.login_max_failures)
    assert_throttled(await login_from(app, "192.0.2.50", "owner@crm.test", USER_PASSWORD))
    # A login older than 30 days no longer makes an address known.
    await session.execute(text("DELETE FROM login_failures WHERE client_address = '192.0.2.50'"))
    await session.execute(
        text("UPDATE login_successes SET succeeded_at = now() - interval '31 days'")
    )
    await session.commit()
    assert_throttled(await login_from(app, "192.0.2.50", "owner@crm.test", USER_PASSWORD))
    rows = (
        await session.execute(text("SELECT user_id, client_address FROM login_successes"))
    ).all()
    assert [tuple(row) for row in rows] == [(user_id, "192.0.2.50")]


async def test_failures_are_recorded_per_email_and_address(
    app: object, session: AsyncSession
) -> None:
    await fail_from(app, "::ffff:198.51.100.7", "Someone@CRM.test", 1)
    await fail_from(app, "2001:DB8::7", "someone@crm.test", 1)
    rows = (
        await session.execute(text("SELECT email, client_address FROM login_failures ORDER BY id"))
    ).all()
    assert [tuple(row) for row in rows] == [
        ("someone@crm.test", "198.51.100.7"),
        ("someone@crm.test", "2001:db8::7"),
    ]


# --- parallel guesses -----------------------------------------------------------------------


async def test_parallel_guesses_through_two_processes_check_at_most_the_limit(
    database_url: str, session: AsyncSession
) -> None:
    await create_user("target@crm.test")
    with (
        uvicorn_process(database_url) as (first, _),
        uvicorn_process(database_url) as (second, _),
    ):
        async with httpx.AsyncClient(timeout=60) as http:
            guesses = [
                http.post(
                    f"{base}/api/v1/auth/login",
                    json={"email": "target@crm.test", "password": f"guess-{index}"},
                )
                for index, base in enumerate([first, second] * 15)
            ]
            responses = await asyncio.gather(*guesses)
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(401) == settings.login_max_failures, statuses
    assert statuses.count(429) == 30 - settings.login_max_failures, statuses
    failures = (
        await session.execute(
            text("SELECT count(*) FROM login_failures WHERE email = 'target@crm.test'")
        )
    ).scalar_one()
    assert failures == settings.login_max_failures


# --- X-Forwarded-For ------------------------------------------------------------------------


def guess_from(base: str, forwarded_for: str, password: str = WRONG) -> int:
    response = httpx.post(
        f"{base}/api/v1/auth/login",
        json={"email": ADMIN_EMAIL, "password": password},
        headers={"X-Forwarded-For": forwarded_for},
    )
    return response.status_code


async def test_x_forwarded_for_is_ignored_from_a_peer_that_is_not_the_proxy(
    database_url: str, session: AsyncSession
) -> None:
    # The proxy is elsewhere: this client's header is its own invention, a new one per guess.
    with uvicorn_process(database_url, env={"FORWARDED_ALLOW_IPS": "192.0.2.1"}) as (base, _):
        statuses = [
            await asyncio.to_thread(guess_from, base, f"10.0.0.{index}")
            for index in range(settings.login_max_failures + 1)
        ]
    assert statuses == [401] * settings.login_max_failures + [429]
    addresses = (
        (await session.execute(text("SELECT DISTINCT client_address FROM login_failures")))
        .scalars()
        .all()
    )
    assert addresses == ["127.0.0.1"]


async def test_x_forwarded_for_is_honoured_from_the_proxy(
    database_url: str, session: AsyncSession
) -> None:
    with uvicorn_process(database_url, env={"FORWARDED_ALLOW_IPS": "127.0.0.0/8"}) as (base, _):
        locked = [
            await asyncio.to_thread(guess_from, base, "10.0.0.1")
            for _ in range(settings.login_max_failures + 1)
        ]
        # The proxy appends the peer it saw: only that rightmost entry names the client.
        elsewhere = await asyncio.to_thread(guess_from, base, "10.0.0.1, 10.0.0.2", ADMIN_PASSWORD)
    assert locked == [401] * settings.login_max_failures + [429]
    assert elsewhere == 200
    addresses = (
        (await session.execute(text("SELECT DISTINCT client_address FROM login_failures")))
        .scalars()
        .all()
    )
    assert addresses == ["10.0.0.1"]


async def test_an_ipv6_zone_in_x_forwarded_for_is_no_server_error(
    database_url: str, session: AsyncSession
) -> None:
    with uvicorn_process(database_url, env={"FORWARDED_ALLOW_IPS": "127.0.0.0/8"}) as (base, _):
        answers = [
            await asyncio.to_thread(guess_from, base, f"fe80::1%{'a' * 80}"),
            await asyncio.to_thread(guess_from, base, "fe80::1%eth1"),
        ]
    assert answers == [401, 401]
    addresses = (
        (await session.execute(text("SELECT client_address FROM login_failures"))).scalars().all()
    )
    # The zone names the sender's interface, not another client: one address, counted twice.
    assert addresses == ["fe80::1", "fe80::1"]


@pytest.mark.parametrize(
    "value",
    # A network with host bits set would match nothing in uvicorn; /0 trusts everyone, like *.
    ["*", "127.0.0.1,*", "nginx", "10.0.0.0/33", "172.18.0.1/16", "0.0.0.0/0", "::/0"],
)
def test_forwarded_allow_ips_refuses_a_wildcard_or_a_non_address(value: str) -> None:
    with pytest.raises(ValidationError, match="FORWARDED_ALLOW_IPS"):
        Settings(_env_file=None, forwarded_allow_ips=value)


def test_forwarded_allow_ips_accepts_addresses_and_networks() -> None:
    configured = Settings(_env_file=None, forwarded_allow_ips=" 10.0.0.5, 172.16.0.0/12,::1 ")
    assert configured.forwarded_allow_ips == ["10.0.0.5", "172.16.0.0/12", "::1"]


# --- argon2 off the event loop --------------------------------------------------------------


async def test_a_login_flood_neither_stalls_other_requests_nor_holds_connections(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert (await client.get(ME, headers=admin_headers)).status_code == 200
    pool: Any = db.engine.pool
    held_before = pool.checkedout()  # the admin_headers fixture's session, say
    logins = [
        asyncio.create_task(login_json(client, f"nobody-{index}@crm.test", WRONG))
        for index in range(20)
    ]
    latencies: list[tuple[float, str]] = []
    connections: list[int] = []
    # What is measured is the hashing's hold on the event loop, not a full collection of the
    # test session's heap (thousands of tests' objects; a served process freezes its start-up
    # objects out of the collector, see main.lifespan): no collection during the window.
    gc.collect()
    gc.disable()
    try:
        await asyncio.sleep(0.05)  # the flood is under way
        while not all(task.done() for task in logins):
            connections.append(pool.checkedout() - held_before)
            for path, headers in (("/health", {}), (ME, admin_headers)):
                started = time.perf_counter()
                response = await client.get(path, headers=headers)
                latencies.append((time.perf_counter() - started, path))
                assert response.status_code == 200, response.text
            await asyncio.sleep(0.02)
    finally:
        results = await asyncio.gather(*logins)
        gc.enable()
    for response in results:
        assert_invalid_credentials(response)
    # Measured while the logins ran: 20 argon2 checks take seconds even two at a time.
    assert len(latencies) >= 10, latencies
    assert max(latencies)[0] < 0.1, sorted(latencies)[-5:]
    # Logins waiting for a hashing slot hold no pooled connection: only the slots' holders do,
    # each beside at most the login that just gave the slot back and is committing its record.
    assert max(connections) <= 2 * settings.password_hashing_concurrency, connections


# --- login_failures does not grow forever ---------------------------------------------------


async def old_failures(session: AsyncSession, email: str, count: int, age: timedelta) -> None:
    await session.execute(
        text(
            "INSERT INTO login_failures (email, client_address, failed_at) "
            "SELECT :email, '192.0.2.1', now() - CAST(:age AS interval) "
            "FROM generate_series(1, :count)"
        ),
        {"email": email, "age": age, "count": count},
    )
    await session.commit()


async def failures_of(session: AsyncSession, email: str) -> int:
    stmt = text("SELECT count(*) FROM login_failures WHERE email = :email")
    count = (await session.execute(stmt, {"email": email})).scalar_one()
    await session.commit()
    return int(count)


async def test_a_failure_purges_its_emails_expired_rows(
    client: AsyncClient, session: AsyncSession
) -> None:
    await old_failures(session, "victim@crm.test", 3, timedelta(minutes=16))
    await old_failures(session, "victim@crm.test", 2, timedelta(minutes=5))
    await old_failures(session, "other@crm.test", 3, timedelta(minutes=16))
    assert_invalid_credentials(await login_json(client, "victim@crm.test", WRONG))
    assert await failures_of(session, "victim@crm.test") == 3  # 2 recent ones and this one
    assert await failures_of(session, "other@crm.test") == 3  # left to the periodic purge


async def test_every_hundredth_failure_purges_expired_rows_of_every_email(
    client: AsyncClient, session: AsyncSession
) -> None:
    await old_failures(session, "old@crm.test", 5, timedelta(days=1))
    await old_failures(session, "recent@crm.test", 2, timedelta(minutes=1))
    # The next failure gets an id that is a multiple of PURGE_EVERY.
    await session.commit()
    # Setting a sequence is the owner's right, not the API's.
    async with owner_connection() as owner:
        await owner.execute(
            text("SELECT setval('login_failures_id_seq', :last)"), {"last": 3 * PURGE_EVERY - 1}
        )
    assert_invalid_credentials(await login_json(client, "someone@crm.test", WRONG))
    assert await failures_of(session, "old@crm.test") == 0
    assert await failures_of(session, "recent@crm.test") == 2
    assert await failures_of(session, "someone@crm.test") == 1
