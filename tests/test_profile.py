"""PUT /auth/me: one's own name, and one's own email behind the current password."""

from typing import Any

import pytest
from httpx import AsyncClient

from core.db import db
from services.password_reset import PasswordResetService
from tests.conftest import ADMIN_EMAIL, error_of
from tests.factories import USER_PASSWORD, create_user, scalar

ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"
EMAIL = "user@crm.test"


async def login_status(client: AsyncClient, email: str, password: str) -> int:
    return (await client.post(LOGIN, json={"email": email, "password": password})).status_code


async def test_a_user_renames_themself(client: AsyncClient, user_headers: dict[str, str]) -> None:
    response = await client.put(ME, json={"full_name": "  Jeanne Dupont "}, headers=user_headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["email"], body["full_name"], body["role"]) == (EMAIL, "Jeanne Dupont", "user")
    # The same token still works, and reads the new name (the caller cache was evicted).
    assert (await client.get(ME, headers=user_headers)).json()["full_name"] == "Jeanne Dupont"


async def test_an_admin_renames_themself(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.put(ME, json={"full_name": "Chief"}, headers=admin_headers)
    assert (response.status_code, response.json()["is_admin"]) == (200, True)


async def test_a_new_email_with_the_current_password(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    body = {"email": "Jeanne@CRM.test", "current_password": USER_PASSWORD}
    response = await client.put(ME, json=body, headers=user_headers)

    assert response.status_code == 200, response.text
    assert response.json()["email"] == "jeanne@crm.test"
    assert await login_status(client, "jeanne@crm.test", USER_PASSWORD) == 200
    assert await login_status(client, EMAIL, USER_PASSWORD) == 401


async def test_a_new_email_without_the_current_password_is_422(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.put(ME, json={"email": "jeanne@crm.test"}, headers=user_headers)

    assert response.status_code == 422
    assert error_of(response) == {
        "detail": [
            {
                "type": "current_password_required",
                "loc": ["body", "current_password"],
                "msg": "The current password is required to change the email",
            }
        ],
        "code": "current_password_required",
    }
    assert await login_status(client, EMAIL, USER_PASSWORD) == 200


async def test_a_new_email_with_a_wrong_password_is_400(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    body = {"email": "jeanne@crm.test", "current_password": "not-my-password", "full_name": "X"}
    response = await client.put(ME, json=body, headers=user_headers)

    assert response.status_code == 400
    assert error_of(response) == {
        "detail": "The current password is incorrect",
        "code": "invalid_password",
    }
    assert (await client.get(ME, headers=user_headers)).json()["full_name"] == "User"


async def test_the_same_email_in_other_capitals_needs_no_password(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.put(ME, json={"email": "USER@crm.test"}, headers=user_headers)
    assert (response.status_code, response.json()["email"]) == (200, EMAIL)


async def test_a_taken_email_is_409(client: AsyncClient, user_headers: dict[str, str]) -> None:
    body = {"email": ADMIN_EMAIL.upper(), "current_password": USER_PASSWORD}
    response = await client.put(ME, json=body, headers=user_headers)

    assert response.status_code == 409
    assert error_of(response)["code"] == "duplicate_email"


async def test_a_new_email_voids_the_reset_links_sent_to_the_old_one(
    client: AsyncClient, user_id: int, user_headers: dict[str, str]
) -> None:
    async with db.sessionmaker() as session, session.begin():
        token = await PasswordResetService(session).mint_token(user_id)
    body = {"email": "jeanne@crm.test", "current_password": USER_PASSWORD}
    assert (await client.put(ME, json=body, headers=user_headers)).status_code == 200

    confirm = await client.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": token, "new_password": "harbour-violet-lamp-1"},
    )
    assert (confirm.status_code, confirm.json()["code"]) == (400, "invalid_reset_token")


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"role": "admin"}, ["body", "role"]),
        ({"is_active": False}, ["body", "is_active"]),
        ({"password": "harbour-violet-lamp-1"}, ["body", "password"]),
        ({"full_name": "   "}, ["body", "full_name"]),
        ({"email": "not-an-address", "current_password": USER_PASSWORD}, ["body", "email"]),
        ({"full_name": None}, ["body", "full_name"]),
    ],
)
async def test_invalid_or_server_owned_fields_are_422(
    client: AsyncClient,
    user_id: int,
    user_headers: dict[str, str],
    body: dict[str, Any],
    loc: list[str],
) -> None:
    response = await client.put(ME, json=body, headers=user_headers)

    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]
    assert await scalar("SELECT role FROM users WHERE id = :id", id=user_id) == "user"


async def test_without_a_token_it_is_401(client: AsyncClient) -> None:
    await create_user(EMAIL)
    response = await client.put(ME, json={"full_name": "Intruder"})
    assert (response.status_code, response.json()["code"]) == (401, "not_authenticated")
