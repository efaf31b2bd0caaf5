"""Password reset: the request (same answer for every address, 3 per email per hour), the job
that mints the token and mails the link (a real worker, a real SMTP server), and the
confirmation (single use, 30 minutes, every session ended)."""

import re
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.smtp import Envelope
from httpx import AsyncClient, Response
from pydantic import ValidationError

from core.config import Settings, settings
from core.db import db
from services.jobs import JobService
from services.password_reset import PASSWORD_RESET_JOB, PasswordResetService, reset_link
from tests.conftest import error_of
from tests.factories import USER_PASSWORD, bearer, create_user, execute, fetch, scalar
from tests.test_email import Mailbox, parse, smtp_server
from tests.worker_process import finished, worker_in_process

REQUEST = "/api/v1/auth/password-reset/request"
CONFIRM = "/api/v1/auth/password-reset/confirm"
LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
EMAIL = "user@crm.test"
NEW_PASSWORD = "harbour-violet-lamp-1"
ACCEPTED = {
    "message": (
        "If an active account uses this address, a reset link valid 30 minutes is on its way."
    )
}


async def request_reset(client: AsyncClient, email: str) -> Response:
    return await client.post(REQUEST, json={"email": email})


async def confirm(client: AsyncClient, token: str, password: str = NEW_PASSWORD) -> Response:
    return await client.post(CONFIRM, json={"token": token, "new_password": password})


async def login_status(client: AsyncClient, email: str, password: str) -> int:
    return (await client.post(LOGIN, json={"email": email, "password": password})).status_code


async def queued_resets() -> list[Any]:
    """The payloads of the reset jobs, oldest first."""
    rows = await fetch(
        "SELECT payload FROM jobs WHERE type = :type ORDER BY id", type="auth.password_reset"
    )
    return [row.payload for row in rows]


async def mint(user_id: int) -> str:
    """A token as the job mints it (committed with the test's transaction)."""
    async with db.sessionmaker() as session, session.begin():
        return await PasswordResetService(session).mint_token(user_id)


def assert_invalid_token(response: Response) -> None:
    assert response.status_code == 400, response.text
    assert error_of(response) == {
        "detail": "This reset link is invalid, used or expired; ask for a new one",
        "code": "invalid_reset_token",
    }


# --- POST /auth/password-reset/request ------------------------------------------------------


async def test_a_known_and_an_unknown_address_get_the_same_answer(client: AsyncClient) -> None:
    user_id = await create_user(EMAIL)

    known = await request_reset(client, EMAIL)
    unknown = await request_reset(client, "nobody@crm.test")

    assert (known.status_code, unknown.status_code) == (202, 202)
    assert known.json() == unknown.json() == ACCEPTED
    assert await queued_resets() == [{"user_id": user_id}]
    # Anonymous, and holding no token: the Jobs API shows nothing to take over the account.
    assert await scalar("SELECT created_by FROM jobs") is None
    assert await scalar("SELECT count(*) FROM password_reset_tokens") == 0


async def test_the_request_counter_never_stores_an_address(client: AsyncClient) -> None:
    await request_reset(client, "nobody@crm.test")

    (row,) = await fetch("SELECT email_key FROM password_reset_requests")
    assert len(row.email_key) == 32
    assert b"nobody" not in row.email_key


async def test_an_inactive_account_gets_no_email(client: AsyncClient) -> None:
    await create_user(EMAIL, is_active=False)

    response = await request_reset(client, EMAIL)

    assert (response.status_code, response.json()) == (202, ACCEPTED)
    assert await queued_resets() == []


async def test_a_fourth_request_in_the_hour_queues_nothing(client: AsyncClient) -> None:
    user_id = await create_user(EMAIL)

    # One address whatever its capitals.
    for email in ("user@crm.test", "USER@crm.test", "User@CRM.test", "user@crm.test"):
        response = await request_reset(client, email)
        assert (response.status_code, response.json()) == (202, ACCEPTED)

    assert await queued_resets() == [{"user_id": user_id}] * 3
    # The dropped request is not counted: an hour after the accepted ones, the owner asks again.
    assert await scalar("SELECT count(*) FROM password_reset_requests") == 3
    await execute("UPDATE password_reset_requests SET requested_at = now() - interval '61 minutes'")
    await request_reset(client, EMAIL)
    assert len(await queued_resets()) == 4
    # The requests of the past hour went with it.
    assert await scalar("SELECT count(*) FROM password_reset_requests") == 1


async def test_an_unknown_address_is_limited_alike(client: AsyncClient) -> None:
    for _ in range(4):
        assert (await request_reset(client, "nobody@crm.test")).status_code == 202
    assert await scalar("SELECT count(*) FROM password_reset_requests") == 3


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "email"]),
        ({"email": "not-an-address"}, ["body", "email"]),
        ({"email": EMAIL, "user_id": 1}, ["body", "user_id"]),
    ],
)
async def test_a_malformed_request_is_422(
    client: AsyncClient, body: dict[str, Any], loc: list[str]
) -> None:
    await create_user(EMAIL)
    response = await client.post(REQUEST, json=body)
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]
    assert await queued_resets() == []


# --- POST /auth/password-reset/confirm ------------------------------------------------------


async def test_a_reset_sets_the_password_and_ends_every_session(client: AsyncClient) -> None:
    user_id = await create_user(EMAIL)
    old_session = await bearer(user_id)
    assert (await client.get(ME, headers=old_session)).status_code == 200
    token = await mint(user_id)

    response = await confirm(client, token)

    assert (response.status_code, response.content) == (204, b"")
    stale = await client.get(ME, headers=old_session)
    assert (stale.status_code, stale.json()["code"]) == (401, "invalid_token")
    assert await login_status(client, EMAIL, NEW_PASSWORD) == 200
    assert await login_status(client, EMAIL, USER_PASSWORD) == 401


async def test_a_token_works_once(client: AsyncClient) -> None:
    token = await mint(await create_user(EMAIL))

    assert (await confirm(client, token)).status_code == 204
    assert_invalid_token(await confirm(client, token, "another-quiet-orbit-9"))
    assert await login_status(client, EMAIL, NEW_PASSWORD) == 200


async def test_a_token_expires_after_30_minutes(client: AsyncClient) -> None:
    token = await mint(await create_user(EMAIL))
    lifetime = await scalar("SELECT expires_at - created_at FROM password_reset_tokens")
    assert lifetime.total_seconds() == 30 * 60

    await execute("UPDATE password_reset_tokens SET expires_at = now() - interval '1 second'")

    assert_invalid_token(await confirm(client, token))
    assert await login_status(client, EMAIL, USER_PASSWORD) == 200


async def test_an_unknown_token_is_refused(client: AsyncClient) -> None:
    await mint(await create_user(EMAIL))
    assert_invalid_token(await confirm(client, "A" * 43))


async def test_a_token_is_stored_only_as_its_sha256(client: AsyncClient) -> None:
    token = await mint(await create_user(EMAIL))

    (row,) = await fetch("SELECT * FROM password_reset_tokens")
    assert token.encode() not in b"".join(str(value).encode() for value in row)
    matching = "SELECT count(*) FROM password_reset_tokens WHERE token_hash = sha256(:token)"
    assert await scalar(matching, token=token.encode()) == 1


async def test_a_new_token_revokes_the_previous_one(client: AsyncClient) -> None:
    user_id = await create_user(EMAIL)
    first = await mint(user_id)
    second = await mint(user_id)

    assert_invalid_token(await confirm(client, first))
    assert (await confirm(client, second)).status_code == 204


async def test_a_weak_password_is_refused_and_leaves_the_token_usable(client: AsyncClient) -> None:
    token = await mint(await create_user(EMAIL))

    weak = await confirm(client, token, "password123")

    assert weak.status_code == 422
    body = error_of(weak)
    assert body["code"] == "weak_password"
    assert [(error["type"], error["loc"]) for error in body["detail"]] == [
        ("weak_password", ["body", "new_password"])
    ]
    assert await login_status(client, EMAIL, USER_PASSWORD) == 200
    assert (await confirm(client, token)).status_code == 204


async def test_a_deactivated_account_cannot_be_reset(client: AsyncClient) -> None:
    user_id = await create_user(EMAIL)
    token = await mint(user_id)
    await execute("UPDATE users SET is_active = false WHERE id = :id", id=user_id)

    assert_invalid_token(await confirm(client, token))


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"token": "A" * 43}, ["body", "new_password"]),
        ({"new_password": NEW_PASSWORD}, ["body", "token"]),
        ({"token": "not.a.token", "new_password": NEW_PASSWORD}, ["body", "token"]),
        ({"token": "A" * 129, "new_password": NEW_PASSWORD}, ["body", "token"]),
        ({"token": "A" * 43, "new_password": "short"}, ["body", "new_password"]),
    ],
)
async def test_a_malformed_confirmation_is_422(
    client: AsyncClient, body: dict[str, Any], loc: list[str]
) -> None:
    response = await client.post(CONFIRM, json=body)
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]


# --- the job: token minted and mailed by a real worker --------------------------------------


def delivered(mailbox: Mailbox) -> list[EmailMessage]:
    messages = []
    for envelope in mailbox.delivered:
        assert isinstance(envelope, Envelope) and isinstance(envelope.content, bytes)
        messages.append(parse(envelope.content.replace(b"\r\n", b"\n")))
    return messages


def token_in(message: EmailMessage) -> str:
    """The token of the link the message carries, once the link is checked."""
    plain = message.get_body(("plain",))
    assert plain is not None
    (link,) = re.findall(r"https?://\S+", plain.get_content())
    assert link.startswith(f"{settings.password_reset_url}?token=")
    tokens: list[str] = parse_qs(urlsplit(link).query)["token"]
    assert len(tokens) == 1
    return tokens[0]


async def reset_job_id() -> int:
    return int(await scalar("SELECT id FROM jobs WHERE type = :type", type=PASSWORD_RESET_JOB))


@pytest.mark.committing
async def test_the_job_mails_a_link_that_resets_the_password(
    client: AsyncClient, smtp_backend: Callable[[int], None]
) -> None:
    user_id = await create_user(EMAIL)
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        assert (await request_reset(client, EMAIL)).status_code == 202
        job_id = await reset_job_id()
        async with worker_in_process(db):
            assert (await finished(job_id)).status == "succeeded"

    (message,) = delivered(mailbox)
    assert [address.addr_spec for address in message["To"].addresses] == [EMAIL]
    assert message["Subject"] == "Réinitialisation de votre mot de passe"
    assert "30 minutes" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    token = token_in(message)
    assert len(token) >= 43  # 256 bits, URL-safe base64
    # Neither the queue nor the job's row ever held it.
    leaked = "SELECT count(*) FROM jobs WHERE payload::text LIKE '%' || :token || '%'"
    assert await scalar(leaked, token=token) == 0
    assert await queued_resets() == [{"user_id": user_id}]

    assert (await confirm(client, token)).status_code == 204
    assert await login_status(client, EMAIL, NEW_PASSWORD) == 200


@pytest.mark.committing
async def test_a_retried_job_mints_a_new_token_and_revokes_the_first(
    client: AsyncClient, smtp_backend: Callable[[int], None]
) -> None:
    await create_user(EMAIL)
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        await request_reset(client, EMAIL)
        job_id = await reset_job_id()
        async with worker_in_process(db):
            assert (await finished(job_id)).status == "succeeded"
            # Run again, as after a failure past the send: the same job, the same payload.
            await execute("UPDATE jobs SET status = 'failed' WHERE id = :id", id=job_id)
            async with db.sessionmaker() as session, session.begin():
                await JobService(session).retry(job_id)
            assert (await finished(job_id)).status == "succeeded"

    first, second = (token_in(message) for message in delivered(mailbox))
    assert first != second
    assert await scalar("SELECT count(*) FROM password_reset_tokens") == 1
    assert_invalid_token(await confirm(client, first))
    assert (await confirm(client, second)).status_code == 204


@pytest.mark.committing
async def test_an_attempt_the_server_refused_leaves_no_token(
    client: AsyncClient, smtp_backend: Callable[[int], None]
) -> None:
    await create_user(EMAIL)
    mailbox = Mailbox(data_replies=["451 4.7.1 Greylisted, try again later"])
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        await request_reset(client, EMAIL)
        job_id = await reset_job_id()
        async with worker_in_process(db):
            # The first attempt's retry waits EMAIL_RETRY's first delay (a few seconds).
            assert (await finished(job_id)).status == "succeeded"

    assert await scalar("SELECT attempts FROM jobs WHERE id = :id", id=job_id) == 2
    (message,) = delivered(mailbox)
    assert await scalar("SELECT count(*) FROM password_reset_tokens") == 1
    assert (await confirm(client, token_in(message))).status_code == 204


@pytest.mark.committing
async def test_no_job_runs_for_an_account_deactivated_since_the_request(
    client: AsyncClient, smtp_backend: Callable[[int], None]
) -> None:
    user_id = await create_user(EMAIL)
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        await request_reset(client, EMAIL)
        await execute("UPDATE users SET is_active = false WHERE id = :id", id=user_id)
        job_id = await reset_job_id()
        async with worker_in_process(db):
            assert (await finished(job_id)).status == "succeeded"

    assert mailbox.delivered == []
    assert await scalar("SELECT count(*) FROM password_reset_tokens") == 0


# --- PASSWORD_RESET_URL ---------------------------------------------------------------------


def test_the_link_keeps_the_pages_own_query_and_replaces_a_token() -> None:
    page = Settings(
        _env_file=None, password_reset_url="https://crm.example.fr/reset?lang=fr&token=x"
    )
    assert reset_link("abc_-9", page) == "https://crm.example.fr/reset?lang=fr&token=abc_-9"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://crm.example.fr/reset",
        "crm.example.fr/reset",
        "https:///reset",
        "https://crm.example.fr/#/reset",
    ],
)
def test_a_reset_url_that_is_no_web_page_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="PASSWORD_RESET_URL"):
        Settings(_env_file=None, password_reset_url=url)
