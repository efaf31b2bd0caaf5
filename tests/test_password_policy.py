"""The strength rule on every new password (core/password_policy.py): the estimator's score on
the first 72 characters, the account's email local part and name words; and where it applies
(user creation, admin change, own change; the reset: tests/test_password_reset.py)."""

import threading
from typing import Any

import pytest
from httpx import AsyncClient, Response

from core.password_policy import MAX_SCORED_LENGTH, weakness
from core.security import passwords
from tests.conftest import error_of
from tests.factories import USER_PASSWORD, create_user

USERS = "/api/v1/users"
LOGIN = "/api/v1/auth/login"
MY_PASSWORD = "/api/v1/auth/me/password"
EMAIL = "alice.martin@crm.test"
NAME = "Alice Martin"
STRONG = "harbour-violet-lamp-1"

COMMON = "The password is too easy to guess."
LOCAL_PART = "The password contains the part of the email address before the @; leave it out."
NAME_WORD = "The password contains a word of the account holder's name; leave it out."


def assert_weak(response: Response, field: str) -> str:
    """The 422 weak_password body on `field`; its reason."""
    assert response.status_code == 422, response.text
    body = error_of(response)
    assert body["code"] == "weak_password"
    (error,) = body["detail"]
    assert (error["type"], error["loc"]) == ("weak_password", ["body", field])
    reason: str = error["msg"]
    return reason


async def login_status(client: AsyncClient, email: str, password: str) -> int:
    return (await client.post(LOGIN, json={"email": email, "password": password})).status_code


# --- the rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "because"),
    [
        ("password123", "This is a very common password."),
        ("P@ssw0rd123", "This is similar to a commonly used password."),
        ("qwertyuiop", "This is a top-100 common password."),
        ("abcdefghijk", "Sequences like abc or 6543 are easy to guess."),
        ("aaaaaaaaaaaa", 'Repeats like "aaa" are easy to guess.'),
    ],
)
def test_a_guessable_password_is_refused_with_the_estimators_reason(
    password: str, because: str
) -> None:
    reason = weakness(password, EMAIL, NAME)
    assert reason is not None
    assert reason.startswith(f"{COMMON} {because}")


@pytest.mark.parametrize(
    "password", ["ALICE.MARTIN-lamp-harbour-91", "lamp-alice.martin-orbit", "Álice.Martín-orbit-7"]
)
def test_the_email_local_part_is_refused_in_any_case(password: str) -> None:
    assert weakness(password, EMAIL, NAME) == LOCAL_PART


@pytest.mark.parametrize(
    "password", ["orbit-MARTIN-lamp-77", "aliceorbitlamp77", "Marțin-orbit-77"]
)
def test_a_word_of_the_name_is_refused_in_any_case(password: str) -> None:
    assert weakness(password, "a.m@crm.test", NAME) == NAME_WORD


def test_name_words_under_three_letters_and_a_short_local_part_do_not_count() -> None:
    assert weakness("jo-li-harbour-violet-9", "jo@crm.test", "Li Jo") is None


def test_a_strong_password_passes() -> None:
    assert weakness(STRONG, EMAIL, NAME) is None


def test_only_the_first_72_characters_are_scored() -> None:
    weak_head = "a" * MAX_SCORED_LENGTH
    # Scored whole, the random tail would make it strong: the estimator never sees it.
    assert weakness(weak_head + "Xq9#vL2!mZ7@kP4w", EMAIL, NAME) is not None
    assert weakness(STRONG + "a" * 100, EMAIL, NAME) is None


async def test_scoring_runs_in_the_password_hashing_threads() -> None:
    thread_name = await passwords.run(lambda: threading.current_thread().name)
    assert thread_name.startswith("argon2")


# --- where it applies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "reason"),
    [("martin-orbit-lamp-9", NAME_WORD), ("alice.martin-orbit-9", LOCAL_PART)],
)
async def test_creating_a_user_with_a_weak_password_is_422(
    client: AsyncClient, admin_headers: dict[str, str], password: str, reason: str
) -> None:
    body = {"email": EMAIL, "full_name": NAME, "password": password}
    response = await client.post(USERS, json=body, headers=admin_headers)
    assert assert_weak(response, "password") == reason
    assert (
        await client.post(USERS, json=body | {"password": STRONG}, headers=admin_headers)
    ).status_code == 201


async def test_creating_a_user_with_a_common_password_says_why(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = {"email": EMAIL, "full_name": NAME, "password": "password1"}
    response = await client.post(USERS, json=body, headers=admin_headers)
    assert assert_weak(response, "password").startswith(COMMON)


async def test_an_admin_change_is_checked_against_the_name_sent_with_it(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user("user@crm.test")
    response = await client.put(
        f"{USERS}/{user_id}",
        json={"full_name": "Orbit Harbour", "password": "orbit-violet-lamp-2"},
        headers=admin_headers,
    )
    assert assert_weak(response, "password") == NAME_WORD
    # Nothing changed: neither the name nor the password.
    assert await login_status(client, "user@crm.test", USER_PASSWORD) == 200
    assert (await client.get(f"{USERS}/{user_id}", headers=admin_headers)).json()[
        "full_name"
    ] == "User"


async def test_an_admin_change_to_a_guessable_password_is_422(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    user_id = await create_user("user@crm.test")
    response = await client.put(
        f"{USERS}/{user_id}", json={"password": "12345678"}, headers=admin_headers
    )
    assert assert_weak(response, "password").startswith(COMMON)
    assert await login_status(client, "user@crm.test", USER_PASSWORD) == 200


async def test_an_admin_change_for_an_unknown_user_is_404_first(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.put(
        f"{USERS}/999999", json={"password": "12345678"}, headers=admin_headers
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("new_password", "reason"), [("user-orbit-lamp-9", LOCAL_PART), ("letmein123", COMMON)]
)
async def test_changing_ones_own_password_to_a_weak_one_is_422(
    client: AsyncClient, user_headers: dict[str, str], new_password: str, reason: str
) -> None:
    body: dict[str, Any] = {"current_password": USER_PASSWORD, "new_password": new_password}
    response = await client.put(MY_PASSWORD, json=body, headers=user_headers)
    assert assert_weak(response, "new_password").startswith(reason)
    # The session and the old password still work.
    assert (await client.get("/api/v1/auth/me", headers=user_headers)).status_code == 200
    assert await login_status(client, "user@crm.test", USER_PASSWORD) == 200


async def test_a_wrong_current_password_is_400_before_the_strength_check(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    body = {"current_password": "not-my-password", "new_password": "letmein123"}
    response = await client.put(MY_PASSWORD, json=body, headers=user_headers)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_password")


async def test_an_existing_weak_password_keeps_working(client: AsyncClient) -> None:
    await create_user("old@crm.test", password="password")
    assert await login_status(client, "old@crm.test", "password") == 200
