"""Sessions that can be revoked (issue 15): refresh tokens rotated on every use, a reused one
ending its session, logout of one session or of all, and the account changes that end them all;
each access token carries its session (`sid`) and is refused, on every process, once it ends."""

import asyncio
import hashlib
import json
import logging
import uuid
from typing import Any

import httpx
import pytest
from httpx import AsyncClient, Response
from jose import jwt
from sqlalchemy import Row
from sqlalchemy.util import await_only

from core.db import db
from services.sessions import SessionService
from services.users import USER_CHANGES_CHANNEL, caller_cache
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, engine_event, error_of
from tests.factories import USER_PASSWORD, create_user, execute, fetch, first_admin_id, scalar
from tests.test_auth import LOGIN, ME, PASSWORD, assert_token, bearer_header, until
from tests.test_db_sessions import connect_directly
from tests.uvicorn_process import uvicorn_process

REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
LOGOUT_ALL = "/api/v1/auth/logout-all"
USERS = "/api/v1/users"
EMAIL = "user@crm.test"

INVALID_TOKEN = {"detail": "Invalid or expired token", "code": "invalid_token"}
INVALID_REFRESH = {
    "detail": "Invalid, expired or revoked refresh token",
    "code": "invalid_refresh_token",
}
REUSED = {
    "detail": "This refresh token was already used: its session is revoked, log in again",
    "code": "refresh_token_reused",
}


async def log_in(client: AsyncClient, email: str = EMAIL, password: str = USER_PASSWORD) -> Any:
    """A login's body (a new session), once its shape is checked."""
    response = await client.post(LOGIN, json={"email": email, "password": password})
    assert_token(response)
    return response.json()


async def refresh(client: AsyncClient, refresh_token: str) -> Response:
    return await client.post(REFRESH, json={"refresh_token": refresh_token})


def assert_refused(response: Response, error: dict[str, str]) -> None:
    assert response.status_code == 401, response.text
    assert error_of(response) == error
    assert response.headers["www-authenticate"] == "Bearer"


async def assert_access(client: AsyncClient, tokens: Any, works: bool) -> None:
    response = await client.get(ME, headers=bearer_header(tokens["access_token"]))
    if works:
        assert response.status_code == 200, response.text
    else:
        assert_refused(response, INVALID_TOKEN)


def session_id(tokens: Any) -> uuid.UUID:
    return uuid.UUID(hex=jwt.get_unverified_claims(tokens["access_token"])["sid"])


async def stored_tokens() -> list[Row[Any]]:
    return await fetch("SELECT session_id, token_hash, used_at FROM refresh_tokens ORDER BY id")


def digest(refresh_token: str) -> bytes:
    return hashlib.sha256(refresh_token.encode()).digest()


# --- login ----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "oauth2 form"])
async def test_a_login_starts_a_session_whose_refresh_token_is_stored_as_a_digest_only(
    client: AsyncClient, form: str
) -> None:
    user_id = await create_user()
    if form == "json":
        response = await client.post(LOGIN, json={"email": EMAIL, "password": USER_PASSWORD})
    else:
        response = await client.post(LOGIN, data={"username": EMAIL, "password": USER_PASSWORD})
    assert_token(response)  # the fields and their lifetimes (30 days for the refresh token)
    tokens = response.json()
    refresh_token = tokens["refresh_token"]
    assert len(refresh_token) >= 43  # 256 bits, URL-safe base64

    (session,) = await fetch("SELECT id, user_id, revoked_at FROM auth_sessions")
    assert (session.id, session.user_id, session.revoked_at) == (session_id(tokens), user_id, None)
    (stored,) = await stored_tokens()
    assert (stored.session_id, stored.token_hash, stored.used_at) == (
        session.id,
        digest(refresh_token),
        None,
    )
    # Its lifetime is REFRESH_TOKEN_DAYS from now.
    days = await scalar(
        "SELECT round(extract(epoch FROM expires_at - now()) / 86400) FROM refresh_tokens"
    )
    assert days == 30
    await assert_access(client, tokens, works=True)


async def test_each_login_is_a_session_of_its_own(client: AsyncClient) -> None:
    await create_user()
    first, second = await log_in(client), await log_in(client)
    assert session_id(first) != session_id(second)
    assert first["refresh_token"] != second["refresh_token"]
    assert await scalar("SELECT count(*) FROM auth_sessions") == 2


async def test_a_login_purges_the_users_ended_sessions_only(client: AsyncClient) -> None:
    await create_user()
    ended, revoked_lately, live = await log_in(client), await log_in(client), await log_in(client)
    await execute(
        "UPDATE auth_sessions SET expires_at = now() - interval '1 day', "
        "access_expires_at = now() - interval '1 day' WHERE id = :id",
        id=session_id(ended),
    )
    # Its refresh token expired, but an access token of it may still be alive: kept, so that it
    # stays refused.
    await execute(
        "UPDATE auth_sessions SET expires_at = now() - interval '1 day', revoked_at = now() "
        "WHERE id = :id",
        id=session_id(revoked_lately),
    )
    await log_in(client)
    remaining = {row.id for row in await fetch("SELECT id FROM auth_sessions")}
    assert session_id(ended) not in remaining
    assert {session_id(revoked_lately), session_id(live)} <= remaining
    assert len(remaining) == 3
    assert (
        await scalar(
            "SELECT count(*) FROM refresh_tokens WHERE session_id = :id", id=session_id(ended)
        )
        == 0
    )


# --- refresh --------------------------------------------------------------------------------


async def test_a_refresh_rotates_the_refresh_token_within_the_session(client: AsyncClient) -> None:
    await create_user()
    login = await log_in(client)
    response = await refresh(client, login["refresh_token"])
    assert_token(response)  # the login's body, fields and lifetimes
    renewed = response.json()
    assert renewed["refresh_token"] != login["refresh_token"]
    assert session_id(renewed) == session_id(login)
    assert jwt.get_unverified_claims(renewed["access_token"])["sub"] == str(
        await scalar("SELECT id FROM users WHERE email = :e", e=EMAIL)
    )
    first, second = await stored_tokens()
    assert first.token_hash == digest(login["refresh_token"]) and first.used_at is not None
    assert second.token_hash == digest(renewed["refresh_token"]) and second.used_at is None
    await assert_access(client, renewed, works=True)
    # Rotation goes on: the new one is exchanged in its turn.
    assert_token(await refresh(client, renewed["refresh_token"]))


async def test_a_reused_refresh_token_revokes_its_whole_session(client: AsyncClient) -> None:
    await create_user()
    login = await log_in(client)
    other_device = await log_in(client)
    renewed = (await refresh(client, login["refresh_token"])).json()

    assert_refused(await refresh(client, login["refresh_token"]), REUSED)

    # The thief's copy or the owner's: whichever was exchanged first is dead now, with the rest.
    assert_refused(await refresh(client, renewed["refresh_token"]), INVALID_REFRESH)
    await assert_access(client, renewed, works=False)
    await assert_access(client, login, works=False)
    revoked = await scalar(
        "SELECT revoked_at IS NOT NULL FROM auth_sessions WHERE id = :id", id=session_id(login)
    )
    assert revoked is True
    # Another login of the same account is another session: untouched.
    await assert_access(client, other_device, works=True)
    assert_token(await refresh(client, other_device["refresh_token"]))


async def test_an_expired_refresh_token_is_refused(client: AsyncClient) -> None:
    await create_user()
    login = await log_in(client)
    await execute("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
    assert_refused(await refresh(client, login["refresh_token"]), INVALID_REFRESH)
    # Refused as unknown, not as reused: the session itself is not revoked.
    assert await scalar("SELECT revoked_at FROM auth_sessions") is None


@pytest.mark.parametrize(
    "body",
    [
        '{"refresh_token": "an-unknown-token-of-the-right-length-0123456"}',
        '{"refresh_token": "short-one"}',
        '{"refresh_token": "' + "é" * 256 + '"}',
    ],
    ids=["unknown", "short", "non-ascii"],
)
async def test_an_unknown_refresh_token_is_refused_without_being_echoed(
    client: AsyncClient, body: str
) -> None:
    response = await client.post(
        REFRESH, content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert_refused(response, INVALID_REFRESH)
    assert json.loads(body)["refresh_token"][:8] not in response.text


async def test_a_deactivated_accounts_refresh_token_is_refused(client: AsyncClient) -> None:
    await create_user()
    login = await log_in(client)
    # Plain SQL, which revokes no session: the refresh itself checks the account.
    await execute("UPDATE users SET is_active = false WHERE email = :e", e=EMAIL)
    assert_refused(await refresh(client, login["refresh_token"]), INVALID_REFRESH)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "refresh_token"]),
        ({"refresh_token": ""}, ["body", "refresh_token"]),
        ({"refresh_token": "   "}, ["body", "refresh_token"]),
        ({"refresh_token": "x" * 257}, ["body", "refresh_token"]),
        ({"refresh_token": 12345}, ["body", "refresh_token"]),
        ({"refresh_token": "a\x00b"}, ["body", "refresh_token"]),
        ({"refresh_token": "abc", "user_id": 1}, ["body", "user_id"]),
    ],
)
async def test_a_malformed_refresh_body_is_422_without_echoing_it(
    client: AsyncClient, body: dict[str, Any], loc: list[str]
) -> None:
    response = await client.post(REFRESH, json=body)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [loc]
    assert all("input" not in error for error in response.json()["detail"])
    value = body.get("refresh_token")
    if isinstance(value, str) and len(value.strip()) >= 3:
        assert value.strip()[:3] not in response.text


async def test_a_lone_surrogate_is_refused_as_invalid_text(client: AsyncClient) -> None:
    body = b'{"refresh_token": "lone-surrogate-\\ud800"}'
    response = await client.post(
        REFRESH, content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "refresh_token"]]


async def test_refresh_tokens_never_reach_the_logs(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await create_user()
    login = await log_in(client)
    renewed = (await refresh(client, login["refresh_token"])).json()
    assert_refused(await refresh(client, login["refresh_token"]), REUSED)
    assert_refused(await refresh(client, renewed["refresh_token"]), INVALID_REFRESH)
    assert caplog.records, "nothing was logged at all: the check below would prove nothing"
    for refresh_token in (login["refresh_token"], renewed["refresh_token"]):
        assert refresh_token not in caplog.text


# --- logout ---------------------------------------------------------------------------------


async def test_logout_ends_this_session_only(client: AsyncClient) -> None:
    await create_user()
    login = await log_in(client)
    other_device = await log_in(client)
    renewed = (await refresh(client, login["refresh_token"])).json()
    await assert_access(client, renewed, works=True)  # the account is now cached

    response = await client.post(LOGOUT, headers=bearer_header(renewed["access_token"]))
    assert response.status_code == 204, response.text
    assert response.content == b""

    # Every access token of the session, the one issued at login too, and its refresh token.
    await assert_access(client, renewed, works=False)
    await assert_access(client, login, works=False)
    assert_refused(await refresh(client, renewed["refresh_token"]), INVALID_REFRESH)
    assert_refused(
        await client.post(LOGOUT, headers=bearer_header(renewed["access_token"])), INVALID_TOKEN
    )
    await assert_access(client, other_device, works=True)
    assert_token(await refresh(client, other_device["refresh_token"]))


async def test_a_session_is_ended_only_for_the_user_it_belongs_to(client: AsyncClient) -> None:
    attacker_id = await create_user()
    await create_user("other@crm.test")
    victim = await log_in(client, "other@crm.test")
    # A logout names the session its token carries; one naming another account's session (a
    # token forged with the signing key, a bug) ends nothing.
    async with db.sessionmaker() as session, session.begin():
        await SessionService(session).end(attacker_id, session_id(victim))
    await assert_access(client, victim, works=True)
    assert_token(await refresh(client, victim["refresh_token"]))


@pytest.mark.parametrize("path", [LOGOUT, LOGOUT_ALL])
async def test_logout_needs_a_valid_bearer(client: AsyncClient, path: str) -> None:
    assert_refused(
        await client.post(path), {"detail": "Not authenticated", "code": "not_authenticated"}
    )
    assert_refused(await client.post(path, headers=bearer_header("not.a.token")), INVALID_TOKEN)


async def test_logout_all_ends_every_session_of_the_caller_only(client: AsyncClient) -> None:
    await create_user()
    await create_user("other@crm.test")
    laptop, phone = await log_in(client), await log_in(client)
    someone_else = await log_in(client, "other@crm.test")
    stamp = await scalar("SELECT security_stamp FROM users WHERE email = :e", e=EMAIL)

    response = await client.post(LOGOUT_ALL, headers=bearer_header(phone["access_token"]))
    assert response.status_code == 204, response.text

    for tokens in (laptop, phone):
        await assert_access(client, tokens, works=False)
        assert_refused(await refresh(client, tokens["refresh_token"]), INVALID_REFRESH)
    assert await scalar("SELECT security_stamp FROM users WHERE email = :e", e=EMAIL) != stamp
    assert (
        await scalar(
            "SELECT count(*) FROM auth_sessions s JOIN users u ON u.id = s.user_id "
            "WHERE u.email = :e AND s.revoked_at IS NULL",
            e=EMAIL,
        )
        == 0
    )
    await assert_access(client, someone_else, works=True)
    # A new login starts afresh.
    await assert_access(client, await log_in(client), works=True)


# --- account changes that end every session -------------------------------------------------


async def test_changing_ones_password_ends_every_session_this_one_included(
    client: AsyncClient,
) -> None:
    await create_user()
    current, other_device = await log_in(client), await log_in(client)
    response = await client.put(
        PASSWORD,
        json={"current_password": USER_PASSWORD, "new_password": "brand-new-password"},
        headers=bearer_header(current["access_token"]),
    )
    assert response.status_code == 204, response.text
    for tokens in (current, other_device):
        await assert_access(client, tokens, works=False)
        assert_refused(await refresh(client, tokens["refresh_token"]), INVALID_REFRESH)
    await assert_access(client, await log_in(client, password="brand-new-password"), works=True)


@pytest.mark.parametrize(
    "change",
    [{"is_active": False}, {"role": "admin"}, {"password": "set-by-the-admin"}],
    ids=["deactivation", "role change", "password"],
)
async def test_an_admin_change_to_the_account_ends_its_sessions(
    client: AsyncClient, admin_headers: dict[str, str], change: dict[str, Any]
) -> None:
    user_id = await create_user()
    tokens = await log_in(client)
    await assert_access(client, tokens, works=True)
    response = await client.put(f"{USERS}/{user_id}", json=change, headers=admin_headers)
    assert response.status_code == 200, response.text
    await assert_access(client, tokens, works=False)
    assert_refused(await refresh(client, tokens["refresh_token"]), INVALID_REFRESH)
    assert (
        await scalar(
            "SELECT count(*) FROM auth_sessions WHERE user_id = :id AND revoked_at IS NULL",
            id=user_id,
        )
        == 0
    )


async def test_an_admin_renaming_the_account_ends_no_session(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user()
    tokens = await log_in(client)
    response = await client.put(
        f"{USERS}/{user_id}", json={"full_name": "Renamed"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    await assert_access(client, tokens, works=True)
    assert_token(await refresh(client, tokens["refresh_token"]))


async def test_deleting_the_account_deletes_its_sessions(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user()
    tokens = await log_in(client)
    response = await client.delete(f"{USERS}/{user_id}", headers=admin_headers)
    assert response.status_code == 204, response.text
    assert await scalar("SELECT count(*) FROM auth_sessions") == 0
    assert await scalar("SELECT count(*) FROM refresh_tokens") == 0
    assert_refused(await refresh(client, tokens["refresh_token"]), INVALID_REFRESH)


# --- concurrency and other processes (committed for real) -----------------------------------


async def lock_waiters() -> int:
    """The app's connections waiting for a row lock."""
    return int(
        await scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tpm-finance-crm' "
            "AND wait_event_type = 'Lock'"
        )
    )


@pytest.mark.committing
async def test_two_simultaneous_refreshes_with_one_token_one_wins_the_other_is_reuse(
    client: AsyncClient,
) -> None:
    await create_user()
    login = await log_in(client)
    paused = False

    async def hold_until_the_other_waits() -> None:
        # The first refresh holds its token's row lock until the second is blocked on it: the
        # second cannot read the token before the first has used it up.
        deadline = asyncio.get_running_loop().time() + 5.0
        while not await lock_waiters():
            assert asyncio.get_running_loop().time() < deadline, "no refresh waited for the lock"
            await asyncio.sleep(0.02)

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal paused
        if "FROM refresh_tokens" in statement and "FOR UPDATE" in statement and not paused:
            paused = True
            await_only(hold_until_the_other_waits())

    with engine_event("after_cursor_execute", on_statement):
        responses = await asyncio.gather(
            refresh(client, login["refresh_token"]), refresh(client, login["refresh_token"])
        )

    assert sorted(response.status_code for response in responses) == [200, 401]
    (won,) = [response for response in responses if response.status_code == 200]
    (lost,) = [response for response in responses if response.status_code == 401]
    assert_refused(lost, REUSED)
    # The reuse revoked the session: what the winner got is dead too.
    assert_refused(await refresh(client, won.json()["refresh_token"]), INVALID_REFRESH)
    await assert_access(client, won.json(), works=False)


@pytest.mark.committing
async def test_a_session_revoked_by_plain_sql_is_refused_once_notified(
    client: AsyncClient,
) -> None:
    await until(lambda: caller_cache.listening)
    user_id = await create_user()
    tokens = await log_in(client)
    await assert_access(client, tokens, works=True)
    assert caller_cache.get(user_id) is not None  # answered from the cache from now on

    conn = await connect_directly()
    received: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(USER_CHANGES_CHANNEL, lambda *args: received.put_nowait(args[-1]))
    try:
        generation = caller_cache.generation
        # As another process would: nothing evicts the account here but the notification.
        await conn.execute(
            "UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1", user_id
        )
        assert await asyncio.wait_for(received.get(), 5.0) == str(user_id)
        await until(lambda: caller_cache.generation > generation)
        # A refresh rewrites the session's expiries, never its revocation: no notification.
        await conn.execute(
            "UPDATE auth_sessions SET access_expires_at = access_expires_at WHERE user_id = $1",
            user_id,
        )
        await conn.execute("SELECT pg_notify($1, 'marker')", USER_CHANGES_CHANNEL)
        assert await asyncio.wait_for(received.get(), 5.0) == "marker"
    finally:
        await conn.close()
    await assert_access(client, tokens, works=False)


@pytest.mark.committing
async def test_a_logout_through_one_process_is_refused_by_another_within_a_second(
    database_url: str,
) -> None:
    await create_user()
    with (
        uvicorn_process(database_url, env={"RUN_WORKER": "false"}) as (api_a, _),
        uvicorn_process(database_url, env={"RUN_WORKER": "false"}) as (api_b, _),
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            credentials = {"email": EMAIL, "password": USER_PASSWORD}
            tokens = (await http.post(f"{api_a}{LOGIN}", json=credentials)).json()
            other_device = (await http.post(f"{api_a}{LOGIN}", json=credentials)).json()
            headers = bearer_header(tokens["access_token"])
            # B has met the session: the account sits in its caller cache from now on.
            assert (await http.get(f"{api_b}{ME}", headers=headers)).status_code == 200

            logout = await http.post(f"{api_a}{LOGOUT}", headers=headers)
            assert logout.status_code == 204, logout.text

            deadline = asyncio.get_running_loop().time() + 1.0
            while True:
                refused = await http.get(f"{api_b}{ME}", headers=headers)
                if refused.status_code != 200 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert refused.status_code == 401, refused.text
            assert refused.json()["code"] == "invalid_token"
            # Only that session ended: the account's other one still works on B.
            other = await http.get(
                f"{api_b}{ME}", headers=bearer_header(other_device["access_token"])
            )
            assert other.status_code == 200, other.text


async def test_the_first_admin_logs_in_and_out_like_anyone(client: AsyncClient) -> None:
    tokens = await log_in(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert jwt.get_unverified_claims(tokens["access_token"])["sub"] == str(await first_admin_id())
    response = await client.post(LOGOUT, headers=bearer_header(tokens["access_token"]))
    assert response.status_code == 204, response.text
    await assert_access(client, tokens, works=False)
