"""Authentication: login (form and JSON), throttling, JWT validation, /auth/me, password change."""

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from httpx import AsyncClient, Response
from jose import jwt
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import core.security
from core.config import JWT_AUDIENCE, JWT_ISSUER, MIN_SECRET_KEY_BYTES, settings
from core.db import db
from services.users import caller_cache
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, error_of
from tests.factories import USER_PASSWORD, create_user, first_admin_id, password_hash

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
PASSWORD = "/api/v1/auth/me/password"


async def login_json(client: AsyncClient, email: str, password: str) -> Response:
    return await client.post(LOGIN, json={"email": email, "password": password})


async def login_form(client: AsyncClient, email: str, password: str) -> Response:
    return await client.post(LOGIN, data={"username": email, "password": password})


def assert_invalid_credentials(response: Response) -> None:
    assert response.status_code == 401
    assert error_of(response) == {
        "detail": "Incorrect email or password",
        "code": "invalid_credentials",
    }
    assert response.headers["www-authenticate"] == "Bearer"


def assert_token(response: Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "refresh_expires_in",
    }
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86400
    assert body["refresh_expires_in"] == 30 * 86400
    token: str = body["access_token"]
    return token


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_locs(response: Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [err["loc"] for err in response.json()["detail"]]


# --- login ----------------------------------------------------------------------------------


async def test_login_with_json_body(client: AsyncClient) -> None:
    token = assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    me = await client.get(ME, headers=bearer_header(token))
    assert me.status_code == 200
    assert me.json()["email"] == ADMIN_EMAIL


async def test_login_with_oauth2_password_form(client: AsyncClient) -> None:
    response = await client.post(
        LOGIN,
        data={"grant_type": "password", "username": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
    )
    token = assert_token(response)
    me = await client.get(ME, headers=bearer_header(token))
    assert me.json()["email"] == ADMIN_EMAIL


async def test_login_email_is_case_insensitive(client: AsyncClient) -> None:
    assert_token(await login_json(client, ADMIN_EMAIL.upper(), ADMIN_PASSWORD))
    assert_token(await login_form(client, "Admin@CRM.Test", ADMIN_PASSWORD))


async def test_login_trims_the_email(client: AsyncClient) -> None:
    assert_token(await login_json(client, f"  {ADMIN_EMAIL} ", ADMIN_PASSWORD))


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (f"email={ADMIN_EMAIL}&password={ADMIN_PASSWORD}", "text/plain"),
        (json.dumps({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}), "text/plain"),
        (
            '--b\r\nContent-Disposition: form-data; name="username"\r\n\r\n'
            f'{ADMIN_EMAIL}\r\n--b\r\nContent-Disposition: form-data; name="password"\r\n\r\n'
            f"{ADMIN_PASSWORD}\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        ("", ""),
    ],
)
async def test_login_refuses_other_content_types(
    client: AsyncClient, content: str, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(LOGIN, content=content.encode(), headers=headers)
    assert error_locs(response) == [["header", "content-type"]]


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({"email": ADMIN_EMAIL}, "password"),
        ({"password": ADMIN_PASSWORD}, "email"),
        ({}, "email"),
    ],
)
async def test_login_json_missing_field_is_422(
    client: AsyncClient, body: dict[str, str], missing: str
) -> None:
    response = await client.post(LOGIN, json=body)
    assert ["body", missing] in error_locs(response)


@pytest.mark.parametrize(
    "data", [{"username": ADMIN_EMAIL}, {"password": ADMIN_PASSWORD}, {"user": ADMIN_EMAIL}]
)
async def test_login_form_missing_field_is_422(client: AsyncClient, data: dict[str, str]) -> None:
    response = await client.post(LOGIN, data=data)
    assert error_locs(response)


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"text"', b"null"])
async def test_login_malformed_json_is_422(client: AsyncClient, content: bytes) -> None:
    response = await client.post(
        LOGIN, content=content, headers={"Content-Type": "application/json"}
    )
    assert error_locs(response)


async def test_login_json_refuses_unknown_fields(client: AsyncClient) -> None:
    response = await client.post(
        LOGIN, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "role": "admin"}
    )
    assert ["body", "role"] in error_locs(response)


async def test_unknown_email_and_wrong_password_get_the_same_401(client: AsyncClient) -> None:
    unknown = await login_json(client, "nobody@crm.test", ADMIN_PASSWORD)
    wrong = await login_json(client, ADMIN_EMAIL, "wrong-password")
    wrong_form = await login_form(client, ADMIN_EMAIL, "wrong-password")
    for response in (unknown, wrong, wrong_form):
        assert_invalid_credentials(response)
    # Byte for byte but the request id, which each response has its own.
    assert error_of(unknown) == error_of(wrong) == error_of(wrong_form)


async def test_disabled_user_cannot_log_in(client: AsyncClient) -> None:
    await create_user("off@crm.test", is_active=False)
    assert_invalid_credentials(await login_json(client, "off@crm.test", USER_PASSWORD))


async def test_both_failure_paths_run_exactly_one_argon2_verify(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = core.security._password_context
    real_verify = context.verify
    calls: list[str] = []

    def spy(secret: str, hashed: str, *args: Any, **kwargs: Any) -> bool:
        calls.append(hashed)
        return bool(real_verify(secret, hashed, *args, **kwargs))

    monkeypatch.setattr(context, "verify", spy)

    assert_invalid_credentials(await login_json(client, "nobody@crm.test", "whatever-pass"))
    assert len(calls) == 1
    assert calls[0].startswith("$argon2")

    calls.clear()
    assert_invalid_credentials(await login_json(client, ADMIN_EMAIL, "whatever-pass"))
    assert len(calls) == 1
    assert calls[0].startswith("$argon2")


# --- throttling -----------------------------------------------------------------------------


async def fail_logins(client: AsyncClient, email: str, times: int) -> None:
    for _ in range(times):
        assert_invalid_credentials(await login_json(client, email, "wrong-password"))


def assert_throttled(response: Response) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "too_many_attempts"
    assert set(response.json()) == {"detail", "code", "request_id"}
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 900
    return int(retry_after)


async def test_sixth_attempt_is_429_even_with_the_right_password(client: AsyncClient) -> None:
    await fail_logins(client, ADMIN_EMAIL, 5)
    assert_throttled(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    assert_throttled(await login_form(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    assert_throttled(await login_json(client, ADMIN_EMAIL, "wrong-password"))


async def test_throttle_counts_per_lower_cased_email(client: AsyncClient) -> None:
    for email in ["ADMIN@crm.test", "Admin@CRM.TEST", "admin@crm.test", "aDmin@crm.test"]:
        assert_invalid_credentials(await login_json(client, email, "wrong-password"))
    assert_invalid_credentials(await login_form(client, "ADMIN@CRM.TEST", "wrong-password"))
    assert_throttled(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))


async def test_throttle_is_per_email(client: AsyncClient) -> None:
    await fail_logins(client, "nobody@crm.test", 5)
    assert_throttled(await login_json(client, "nobody@crm.test", "wrong-password"))
    assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))


async def test_success_before_the_fifth_failure_resets_the_count(client: AsyncClient) -> None:
    await fail_logins(client, ADMIN_EMAIL, 4)
    assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    # Without the reset, the 5th of these would already be refused.
    await fail_logins(client, ADMIN_EMAIL, 5)
    assert_throttled(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))


async def test_failures_are_stored_in_postgresql(
    client: AsyncClient, session: AsyncSession
) -> None:
    await fail_logins(client, "Nobody@CRM.test", 3)
    rows = (await session.execute(text("SELECT email FROM login_failures"))).scalars().all()
    assert rows == ["nobody@crm.test"] * 3


async def test_failures_older_than_the_window_do_not_count(
    client: AsyncClient, session: AsyncSession
) -> None:
    await fail_logins(client, ADMIN_EMAIL, 5)
    await session.execute(
        text("UPDATE login_failures SET failed_at = now() - interval '16 minutes'")
    )
    await session.commit()
    assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))


async def test_retry_after_is_the_time_until_the_oldest_failure_leaves_the_window(
    client: AsyncClient, session: AsyncSession
) -> None:
    await fail_logins(client, ADMIN_EMAIL, 5)
    assert assert_throttled(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD)) > 800
    await session.execute(
        text(
            "UPDATE login_failures SET failed_at = now() - interval '14 minutes' "
            "WHERE id = (SELECT min(id) FROM login_failures)"
        )
    )
    await session.commit()
    assert 55 <= assert_throttled(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD)) <= 61


async def test_throttled_attempts_are_not_recorded(
    client: AsyncClient, session: AsyncSession
) -> None:
    await fail_logins(client, ADMIN_EMAIL, 5)
    for _ in range(3):
        assert_throttled(await login_json(client, ADMIN_EMAIL, "wrong-password"))
    count = (await session.execute(text("SELECT count(*) FROM login_failures"))).scalar_one()
    assert count == 5


# --- JWT ------------------------------------------------------------------------------------


Account = tuple[int, uuid.UUID]


async def admin_account(session: AsyncSession) -> Account:
    """The first admin's id and security stamp, as a login would put them in a token."""
    stmt = text("SELECT id, security_stamp FROM users WHERE email = :e")
    admin = (await session.execute(stmt, {"e": ADMIN_EMAIL})).one()
    return int(admin.id), admin.security_stamp


async def admin_id(session: AsyncSession) -> int:
    stmt = text("SELECT id FROM users WHERE email = :e")
    return int((await session.execute(stmt, {"e": ADMIN_EMAIL})).scalar_one())


def claims_for(account: Account, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(account[0]),
        "stamp": account[1].hex,
        "sid": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "typ": "access",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], *, key: str | None = None, algorithm: str = "HS256") -> str:
    return str(jwt.encode(claims, key or settings.signing_key(), algorithm=algorithm))


def unsigned_token(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_issued_token_carries_the_expected_claims(client: AsyncClient) -> None:
    before = int(datetime.now(UTC).timestamp())
    token = assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.get_unverified_claims(token)
    assert claims["sub"] == str(await first_admin_id())
    assert claims["iss"] == "tpm-finance-crm"
    assert claims["aud"] == "tpm-finance-crm-api"
    assert claims["typ"] == "access"
    assert before - 5 <= claims["iat"] <= before + 60
    assert claims["exp"] - claims["iat"] == 86400


async def test_a_hand_built_valid_token_is_accepted(
    client: AsyncClient, session: AsyncSession
) -> None:
    # The baseline for the rejections below: only the one altered claim makes them fail.
    token = sign(claims_for(await admin_account(session)))
    response = await client.get(ME, headers=bearer_header(token))
    assert response.status_code == 200


def expired(account: Account) -> dict[str, Any]:
    past = datetime.now(UTC) - timedelta(hours=2)
    return claims_for(
        account,
        iat=int(past.timestamp()),
        exp=int((past + timedelta(hours=1)).timestamp()),
    )


BAD_TOKENS: dict[str, Any] = {
    "missing exp": lambda uid: sign(claims_for(uid, exp=None)),
    "missing aud": lambda uid: sign(claims_for(uid, aud=None)),
    "missing iss": lambda uid: sign(claims_for(uid, iss=None)),
    "missing sub": lambda uid: sign(claims_for(uid, sub=None)),
    "missing typ": lambda uid: sign(claims_for(uid, typ=None)),
    "wrong aud": lambda uid: sign(claims_for(uid, aud="another-api")),
    "wrong iss": lambda uid: sign(claims_for(uid, iss="someone-else")),
    "wrong typ": lambda uid: sign(claims_for(uid, typ="refresh")),
    "non-numeric sub": lambda uid: sign(claims_for(uid, sub="admin")),
    "sub beyond INTEGER": lambda uid: sign(claims_for(uid, sub="99999999999999999999")),
    "expired": lambda uid: sign(expired(uid)),
    "alg none": lambda uid: unsigned_token(claims_for(uid)),
    "other key": lambda uid: sign(claims_for(uid), key="another-secret-key-" + "x" * 40),
    "HS512": lambda uid: sign(claims_for(uid), algorithm="HS512"),
    "tampered": lambda uid: sign(claims_for(uid))[:-4] + "AAAA",
    # Issued before the stamps existed, or before the account's stamp was replaced.
    "missing stamp": lambda uid: sign(claims_for(uid, stamp=None)),
    "another stamp": lambda uid: sign(claims_for(uid, stamp=uuid.uuid4().hex)),
    "stamp not hex": lambda uid: sign(claims_for(uid, stamp="z" * 32)),
    "stamp not a string": lambda uid: sign(claims_for(uid, stamp=12345)),
    # Issued before sessions could be revoked: no logout could end it.
    "missing sid": lambda uid: sign(claims_for(uid, sid=None)),
    "sid not hex": lambda uid: sign(claims_for(uid, sid="z" * 32)),
    "garbage": lambda uid: "not.a.token",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_invalid_tokens_are_refused(
    client: AsyncClient, session: AsyncSession, case: str
) -> None:
    token = BAD_TOKENS[case](await admin_account(session))
    response = await client.get(ME, headers=bearer_header(token))
    assert response.status_code == 401
    assert error_of(response) == {"detail": "Invalid or expired token", "code": "invalid_token"}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.committing
async def test_token_of_a_disabled_user_stops_working_at_once(
    client: AsyncClient, session: AsyncSession
) -> None:
    await create_user("soon-off@crm.test")
    token = assert_token(await login_json(client, "soon-off@crm.test", USER_PASSWORD))
    assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    # Plain SQL, as another API process or an operator would do it: this process learns of it
    # by the users table's notification, which arrives right after the commit.
    generation = caller_cache.generation
    await session.execute(
        text("UPDATE users SET is_active = false WHERE email = 'soon-off@crm.test'")
    )
    await session.commit()
    await until(lambda: caller_cache.generation > generation)
    response = await client.get(ME, headers=bearer_header(token))
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_an_account_disabled_through_the_api_is_refused_on_the_next_request(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user("next-off@crm.test")
    token = assert_token(await login_json(client, "next-off@crm.test", USER_PASSWORD))
    assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    assert caller_cache.get(user_id) is not None  # the account is cached
    disabled = await client.put(
        f"/api/v1/users/{user_id}", json={"is_active": False}, headers=admin_headers
    )
    assert disabled.status_code == 200, disabled.text
    # No waiting for the notification: the process that made the change forgot it at once.
    response = await client.get(ME, headers=bearer_header(token))
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_token_of_a_deleted_user_stops_working_at_once(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user("gone@crm.test")
    token = assert_token(await login_json(client, "gone@crm.test", USER_PASSWORD))
    deleted = await client.delete(f"/api/v1/users/{user_id}", headers=admin_headers)
    assert deleted.status_code == 204
    response = await client.get(ME, headers=bearer_header(token))
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


# --- /auth/me -------------------------------------------------------------------------------


async def test_me_returns_exactly_the_public_fields(
    client: AsyncClient, user_id: int, user_headers: dict[str, str]
) -> None:
    response = await client.get(ME, headers=user_headers)
    assert response.status_code == 200
    assert response.json() == {
        "id": user_id,
        "email": "user@crm.test",
        "full_name": "User",
        "role": "user",
        "is_admin": False,
        "is_active": True,
        "two_factor_enabled": False,
    }


async def test_me_of_the_admin(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    body = (await client.get(ME, headers=admin_headers)).json()
    assert (body["email"], body["role"], body["is_admin"]) == (ADMIN_EMAIL, "admin", True)


# --- PUT /auth/me/password ------------------------------------------------------------------


async def test_change_password(client: AsyncClient, user_headers: dict[str, str]) -> None:
    response = await client.put(
        PASSWORD,
        json={"current_password": USER_PASSWORD, "new_password": "brand-new-password"},
        headers=user_headers,
    )
    assert response.status_code == 204
    assert response.content == b""
    assert_token(await login_json(client, "user@crm.test", "brand-new-password"))
    assert_invalid_credentials(await login_json(client, "user@crm.test", USER_PASSWORD))


async def test_change_password_with_wrong_current_password_is_400(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.put(
        PASSWORD,
        json={"current_password": "not-my-password", "new_password": "brand-new-password"},
        headers=user_headers,
    )
    assert response.status_code == 400
    assert error_of(response) == {
        "detail": "The current password is incorrect",
        "code": "invalid_password",
    }
    assert_token(await login_json(client, "user@crm.test", USER_PASSWORD))


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"current_password": USER_PASSWORD, "new_password": "short"}, "new_password"),
        ({"current_password": USER_PASSWORD, "new_password": "1234567"}, "new_password"),
        ({"current_password": USER_PASSWORD, "new_password": "x" * 129}, "new_password"),
        ({"current_password": USER_PASSWORD, "new_password": "nul\x00byte-pass"}, "new_password"),
        ({"current_password": USER_PASSWORD, "new_password": 12345678}, "new_password"),
        ({"current_password": USER_PASSWORD}, "new_password"),
        ({"new_password": "brand-new-password"}, "current_password"),
        ({"current_password": USER_PASSWORD, "new_password": "brand-new", "x": 1}, "x"),
    ],
)
async def test_change_password_validation(
    client: AsyncClient, user_headers: dict[str, str], body: dict[str, Any], loc: str
) -> None:
    response = await client.put(PASSWORD, json=body, headers=user_headers)
    assert ["body", loc] in error_locs(response)
    assert_token(await login_json(client, "user@crm.test", USER_PASSWORD))


async def test_change_password_requires_a_token(client: AsyncClient) -> None:
    response = await client.put(
        PASSWORD, json={"current_password": USER_PASSWORD, "new_password": "brand-new-password"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


# --- verified-token cache -------------------------------------------------------------------


async def test_a_cached_token_is_refused_once_it_expires(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    after_expiry = int(jwt.get_unverified_claims(token)["exp"]) + 1
    # Both clocks: the cache's, and the one python-jose verifies an uncached token against.
    monkeypatch.setattr(core.security, "time", SimpleNamespace(time=lambda: float(after_expiry)))
    monkeypatch.setattr(jwt, "timegm", lambda _: after_expiry)
    response = await client.get(ME, headers=bearer_header(token))
    assert response.status_code == 401
    assert error_of(response) == {"detail": "Invalid or expired token", "code": "invalid_token"}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_cached_token_is_refused_once_the_signing_key_changes(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    assert (await client.get(ME, headers=bearer_header(token))).status_code == 200
    new_key = "a-replacement-signing-key-" + "k" * MIN_SECRET_KEY_BYTES
    monkeypatch.setattr(settings, "secret_key", SecretStr(new_key))
    response = await client.get(ME, headers=bearer_header(token))
    assert response.status_code == 401
    assert error_of(response) == {"detail": "Invalid or expired token", "code": "invalid_token"}
    # Only the old key's tokens are refused: one signed with the new key is accepted.
    fresh = assert_token(await login_json(client, ADMIN_EMAIL, ADMIN_PASSWORD))
    assert jwt.get_unverified_claims(fresh)["sub"] == str(await first_admin_id())
    assert (await client.get(ME, headers=bearer_header(fresh))).status_code == 200


@pytest.mark.committing
async def test_change_password_locks_the_account_against_a_concurrent_change(
    client: AsyncClient, user_id: int, user_headers: dict[str, str], session: AsyncSession
) -> None:
    async with db.sessionmaker() as other, other.begin():
        await other.execute(text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        change = asyncio.create_task(
            client.put(
                PASSWORD,
                json={"current_password": USER_PASSWORD, "new_password": "brand-new-password"},
                headers=user_headers,
            )
        )
        for _ in range(400):
            waiting = await session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = 'tpm-finance-crm' AND wait_event_type = 'Lock'"
                )
            )
            await session.rollback()
            if waiting.scalar_one():
                break
            await asyncio.sleep(0.02)
        else:
            change.cancel()
            raise AssertionError("the password change did not wait for the account's row lock")
        # Another change lands first: the waiting one must check against it, not the old hash.
        await other.execute(
            text("UPDATE users SET hashed_password = :hash WHERE id = :id"),
            {"hash": password_hash("changed-meanwhile"), "id": user_id},
        )
    response = await change
    assert response.status_code == 400, response.text
    assert error_of(response) == {
        "detail": "The current password is incorrect",
        "code": "invalid_password",
    }
    assert_token(await login_json(client, "user@crm.test", "changed-meanwhile"))


async def until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Wait for an event that arrives asynchronously (a notification), failing past limit_s."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the awaited event never came"
        await asyncio.sleep(0.01)
