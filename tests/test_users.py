"""User administration (admin only) and the first-admin bootstrap."""

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import main
from core.config import settings
from core.db import db
from services.auth import DEFAULT_ADMIN_EMAIL, AuthService
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, error_of, owner_connection
from tests.factories import USER_PASSWORD, bearer, create_user, first_admin_id

FORBIDDEN_TO_USERS = {
    "detail": "Not allowed for the user role: only an admin may manage users",
    "code": "forbidden",
}

USERS = "/api/v1/users"
LOGIN = "/api/v1/auth/login"

READ_FIELDS = {
    "id",
    "email",
    "full_name",
    "role",
    "is_admin",
    "is_active",
    "two_factor_enabled",
    "created_at",
    "updated_at",
}


def new_user(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": "alice@crm.test",
        "full_name": "Alice Martin",
        "password": "harbour-violet-lamp-1",
    }
    body.update(overrides)
    return body


def assert_no_secret(response: Response) -> None:
    assert "password" not in response.text
    assert "$argon2" not in response.text


async def make_user(client: AsyncClient, headers: dict[str, str], **overrides: Any) -> Any:
    response = await client.post(USERS, json=new_user(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    assert_no_secret(response)
    return response.json()


async def login_status(client: AsyncClient, email: str, password: str) -> int:
    response = await client.post(LOGIN, json={"email": email, "password": password})
    return response.status_code


def assert_conflict(response: Response, code: str = "conflict") -> None:
    assert response.status_code == 409, response.text
    assert response.json()["code"] == code
    assert set(response.json()) == {"detail", "code", "request_id"}


# --- access ---------------------------------------------------------------------------------

EVERY_ROUTE = [
    ("GET", USERS),
    ("POST", USERS),
    ("GET", f"{USERS}/1"),
    ("PUT", f"{USERS}/1"),
    ("DELETE", f"{USERS}/1"),
]


@pytest.mark.parametrize(("method", "path"), EVERY_ROUTE)
async def test_regular_user_gets_403_on_every_route(
    client: AsyncClient, user_headers: dict[str, str], method: str, path: str
) -> None:
    body = new_user(email="x@crm.test") if method == "POST" else {"full_name": "X"}
    response = await client.request(method, path, json=body, headers=user_headers)
    assert response.status_code == 403
    assert error_of(response) == {
        "detail": "Not allowed for the user role: only an admin may manage users",
        "code": "forbidden",
    }


@pytest.mark.parametrize(("method", "path"), EVERY_ROUTE)
async def test_anonymous_gets_401_on_every_route(
    client: AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_regular_user_403_changes_nothing(
    client: AsyncClient, user_headers: dict[str, str], session: AsyncSession
) -> None:
    response = await client.post(USERS, json=new_user(), headers=user_headers)
    assert response.status_code == 403
    count = (await session.execute(text("SELECT count(*) FROM users"))).scalar_one()
    assert count == 2


# --- create ---------------------------------------------------------------------------------


async def test_create_user(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    created = await make_user(client, admin_headers, email="  Alice.Martin@CRM.Test ")
    assert set(created) == READ_FIELDS
    assert created["email"] == "alice.martin@crm.test"
    assert (created["full_name"], created["role"], created["is_active"]) == (
        "Alice Martin",
        "user",
        True,
    )
    assert created["is_admin"] is False
    assert await login_status(client, "alice.martin@crm.test", "harbour-violet-lamp-1") == 200


async def test_create_admin_and_inactive_user(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = await make_user(client, admin_headers, role="admin")
    assert (admin["role"], admin["is_admin"]) == ("admin", True)
    off = await make_user(client, admin_headers, email="off@crm.test", is_active=False)
    assert off["is_active"] is False
    assert await login_status(client, "off@crm.test", "harbour-violet-lamp-1") == 401


@pytest.mark.parametrize("email", ["alice@crm.test", "ALICE@crm.test", "Alice@CRM.TEST"])
async def test_create_with_a_taken_email_is_409(
    client: AsyncClient, admin_headers: dict[str, str], email: str
) -> None:
    await make_user(client, admin_headers)
    response = await client.post(USERS, json=new_user(email=email), headers=admin_headers)
    assert_conflict(response, "duplicate_email")
    assert response.json()["detail"] == "A user with this email already exists"


@pytest.mark.committing
async def test_concurrent_creates_with_the_same_email_give_one_201_and_one_409(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    responses = await asyncio.gather(
        client.post(USERS, json=new_user(email="same@crm.test"), headers=admin_headers),
        client.post(USERS, json=new_user(email="SAME@crm.test"), headers=admin_headers),
    )
    assert sorted(r.status_code for r in responses) == [201, 409]


async def test_create_with_a_short_password_is_422(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(USERS, json=new_user(password="1234567"), headers=admin_headers)
    assert response.status_code == 422
    assert ["body", "password"] in [e["loc"] for e in response.json()["detail"]]


# --- read and list --------------------------------------------------------------------------


async def test_read_user(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    created = await make_user(client, admin_headers)
    response = await client.get(f"{USERS}/{created['id']}", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == created
    assert_no_secret(response)


@pytest.mark.parametrize("user_id", ["999", "0", "-1", "2147483648", "99999999999999999999"])
async def test_read_unknown_user_is_404(
    client: AsyncClient, admin_headers: dict[str, str], user_id: str
) -> None:
    response = await client.get(f"{USERS}/{user_id}", headers=admin_headers)
    assert response.status_code == 404
    assert error_of(response) == {"detail": "User not found", "code": "not_found"}


async def test_list_users_pages_and_sorts(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    for name in ["carol", "bob", "dave"]:
        await make_user(client, admin_headers, email=f"{name}@crm.test", full_name=name.title())
    response = await client.get(USERS, params={"skip": 1, "limit": 2}, headers=admin_headers)
    assert response.status_code == 200
    assert_no_secret(response)
    body = response.json()
    assert set(body) == {"items", "total", "skip", "limit"}
    assert (body["total"], body["skip"], body["limit"]) == (4, 1, 2)
    # Default sort is by email: admin, bob, carol, dave.
    assert [u["email"] for u in body["items"]] == ["bob@crm.test", "carol@crm.test"]
    assert set(body["items"][0]) == READ_FIELDS

    desc = await client.get(USERS, params={"sort": "-full_name"}, headers=admin_headers)
    assert [u["full_name"] for u in desc.json()["items"]] == [
        "Dave",
        "Carol",
        "Bob",
        "Administrator",
    ]


async def test_list_defaults_and_skip_past_the_end(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = (await client.get(USERS, headers=admin_headers)).json()
    assert (body["total"], body["skip"], body["limit"]) == (1, 0, 50)
    beyond = (await client.get(USERS, params={"skip": 10}, headers=admin_headers)).json()
    assert beyond == {"items": [], "total": 1, "skip": 10, "limit": 50}


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"skip": -1}, "skip"),
        ({"skip": "1.5"}, "skip"),
        ({"sort": "hashed_password"}, "sort"),
        ({"sort": "password"}, "sort"),
    ],
)
async def test_list_rejects_out_of_range_params(
    client: AsyncClient, admin_headers: dict[str, str], params: dict[str, Any], loc: str
) -> None:
    response = await client.get(USERS, params=params, headers=admin_headers)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["query", loc]]


@pytest.mark.parametrize("limit", [1, 200])
async def test_list_accepts_limit_bounds(
    client: AsyncClient, admin_headers: dict[str, str], limit: int
) -> None:
    response = await client.get(USERS, params={"limit": limit}, headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["limit"] == limit


# --- update ---------------------------------------------------------------------------------


async def test_update_is_partial(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    created = await make_user(client, admin_headers)
    path = f"{USERS}/{created['id']}"

    renamed = await client.put(path, json={"full_name": "Alice Dupont"}, headers=admin_headers)
    assert renamed.status_code == 200
    assert_no_secret(renamed)
    body = renamed.json()
    assert body["full_name"] == "Alice Dupont"
    assert {k: v for k, v in body.items() if k not in ("full_name", "updated_at")} == {
        k: v for k, v in created.items() if k not in ("full_name", "updated_at")
    }

    moved = await client.put(path, json={"email": "ALICE.D@crm.test"}, headers=admin_headers)
    assert (moved.json()["email"], moved.json()["full_name"]) == (
        "alice.d@crm.test",
        "Alice Dupont",
    )

    promoted = await client.put(path, json={"role": "admin"}, headers=admin_headers)
    assert (promoted.json()["role"], promoted.json()["is_admin"]) == ("admin", True)

    disabled = await client.put(path, json={"is_active": False}, headers=admin_headers)
    assert (disabled.json()["is_active"], disabled.json()["role"]) == (False, "admin")

    unchanged = await client.put(path, json={}, headers=admin_headers)
    assert unchanged.status_code == 200
    assert unchanged.json()["email"] == "alice.d@crm.test"


async def test_update_password(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    created = await make_user(client, admin_headers)
    response = await client.put(
        f"{USERS}/{created['id']}", json={"password": "another-password"}, headers=admin_headers
    )
    assert response.status_code == 200
    assert_no_secret(response)
    assert await login_status(client, "alice@crm.test", "another-password") == 200
    assert await login_status(client, "alice@crm.test", "harbour-violet-lamp-1") == 401


async def test_disabling_a_user_revokes_their_token(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int, user_headers: dict[str, str]
) -> None:
    response = await client.put(
        f"{USERS}/{user_id}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    me = await client.get("/api/v1/auth/me", headers=user_headers)
    assert me.status_code == 401


@pytest.mark.parametrize("email", ["bob@crm.test", "BOB@crm.test", "bob@CRM.test"])
async def test_update_to_a_taken_email_is_409(
    client: AsyncClient, admin_headers: dict[str, str], email: str
) -> None:
    alice = await make_user(client, admin_headers)
    await make_user(client, admin_headers, email="bob@crm.test")
    response = await client.put(
        f"{USERS}/{alice['id']}", json={"email": email}, headers=admin_headers
    )
    assert_conflict(response, "duplicate_email")
    unchanged = await client.get(f"{USERS}/{alice['id']}", headers=admin_headers)
    assert unchanged.json()["email"] == "alice@crm.test"


async def test_update_own_email_with_another_case_is_allowed(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    alice = await make_user(client, admin_headers)
    response = await client.put(
        f"{USERS}/{alice['id']}", json={"email": "ALICE@crm.test"}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json()["email"] == "alice@crm.test"


async def test_update_unknown_user_is_404(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.put(f"{USERS}/999", json={"full_name": "X"}, headers=admin_headers)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# --- last active admin ----------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"role": "user"}, {"is_active": False}])
async def test_the_last_active_admin_cannot_be_demoted(
    client: AsyncClient, admin_headers: dict[str, str], change: Any
) -> None:
    admin_id = await first_admin_id()
    response = await client.put(f"{USERS}/{admin_id}", json=change, headers=admin_headers)
    assert_conflict(response)
    assert response.json()["detail"] == "The last active admin cannot be removed or demoted"
    me = await client.get("/api/v1/auth/me", headers=admin_headers)
    assert (me.json()["role"], me.json()["is_active"]) == ("admin", True)


async def test_an_inactive_admin_does_not_count_as_another_admin(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create_user("sleeping-admin@crm.test", role="admin", is_active=False)
    admin_id = await first_admin_id()
    response = await client.put(f"{USERS}/{admin_id}", json={"role": "user"}, headers=admin_headers)
    assert_conflict(response)


@pytest.mark.parametrize("change", [{"role": "user"}, {"is_active": False}])
async def test_with_two_admins_one_can_be_demoted(
    client: AsyncClient, admin_headers: dict[str, str], change: Any
) -> None:
    await create_user("second-admin@crm.test", role="admin")
    admin_id = await first_admin_id()
    response = await client.put(f"{USERS}/{admin_id}", json=change, headers=admin_headers)
    assert response.status_code == 200
    assert response.json()[next(iter(change))] == next(iter(change.values()))


async def test_a_user_that_is_not_admin_can_be_disabled_freely(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int
) -> None:
    response = await client.put(
        f"{USERS}/{user_id}", json={"role": "user", "is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200


@pytest.mark.committing
async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    client: AsyncClient, session: AsyncSession
) -> None:
    first = await first_admin_id()
    second = await create_user("second-admin@crm.test", role="admin")
    responses = await asyncio.gather(
        client.put(f"{USERS}/{second}", json={"role": "user"}, headers=await bearer(first)),
        client.put(f"{USERS}/{first}", json={"role": "user"}, headers=await bearer(second)),
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses in ([200, 401], [200, 403], [200, 409]), [r.text for r in responses]
    admins = await session.execute(
        text("SELECT count(*) FROM users WHERE role = 'admin' AND is_active")
    )
    assert admins.scalar_one() == 1


@pytest.mark.committing
async def test_two_admins_deleting_each_other_at_once_leave_one_admin(
    client: AsyncClient, session: AsyncSession
) -> None:
    first = await first_admin_id()
    second = await create_user("second-admin@crm.test", role="admin")
    responses = await asyncio.gather(
        client.delete(f"{USERS}/{second}", headers=await bearer(first)),
        client.delete(f"{USERS}/{first}", headers=await bearer(second)),
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses in ([204, 401], [204, 403], [204, 409]), [r.text for r in responses]
    admins = await session.execute(
        text("SELECT count(*) FROM users WHERE role = 'admin' AND is_active")
    )
    assert admins.scalar_one() == 1


# --- delete ---------------------------------------------------------------------------------


async def test_delete_user(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    alice = await make_user(client, admin_headers)
    response = await client.delete(f"{USERS}/{alice['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert response.content == b""
    again = await client.get(f"{USERS}/{alice['id']}", headers=admin_headers)
    assert again.status_code == 404
    assert await login_status(client, "alice@crm.test", "harbour-violet-lamp-1") == 401


async def test_deleting_yourself_is_409(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    await create_user("second-admin@crm.test", role="admin")
    admin_id = await first_admin_id()
    response = await client.delete(f"{USERS}/{admin_id}", headers=admin_headers)
    assert_conflict(response)
    assert response.json()["detail"] == "You cannot delete your own account"


async def test_deleting_another_admin_works_while_one_remains(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    second = await create_user("second-admin@crm.test", role="admin")
    response = await client.delete(f"{USERS}/{second}", headers=admin_headers)
    assert response.status_code == 204


async def test_delete_unknown_user_is_404(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.delete(f"{USERS}/999", headers=admin_headers)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# --- first admin bootstrap ------------------------------------------------------------------


async def empty_users_table() -> None:
    async with owner_connection() as conn:
        await conn.execute(text("TRUNCATE users RESTART IDENTITY CASCADE"))


async def users_in_db() -> list[tuple[str, str, bool]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text("SELECT email, role, is_active FROM users ORDER BY id"))
        return [(r.email, r.role, r.is_active) for r in rows]


@pytest.mark.committing
async def test_first_admin_is_created_from_settings(client: AsyncClient) -> None:
    await empty_users_table()
    async with db.sessionmaker() as session, session.begin():
        generated = await AuthService(session).ensure_first_admin(settings)
    assert generated is None
    assert await users_in_db() == [(ADMIN_EMAIL, "admin", True)]
    assert await login_status(client, ADMIN_EMAIL, ADMIN_PASSWORD) == 200


@pytest.mark.committing
async def test_first_admin_without_password_gets_a_printed_random_one(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await empty_users_table()
    monkeypatch.setattr(settings, "first_admin_password", None)
    await main.bootstrap_first_admin()
    printed = capsys.readouterr().out
    assert ADMIN_EMAIL in printed
    password = printed.split("Password (shown once, change it):")[1].split()[0]
    assert len(password) >= 16
    assert await login_status(client, ADMIN_EMAIL, password) == 200
    # Shown once: a second start prints nothing and creates nobody.
    await main.bootstrap_first_admin()
    assert capsys.readouterr().out == ""
    assert len(await users_in_db()) == 1


@pytest.mark.committing
async def test_first_admin_defaults_to_the_documented_email(
    client: AsyncClient,
) -> None:
    await empty_users_table()
    defaults = settings.model_copy(update={"first_admin_email": None, "first_admin_password": None})
    async with db.sessionmaker() as session, session.begin():
        generated = await AuthService(session).ensure_first_admin(defaults)
    assert generated is not None
    assert await users_in_db() == [(DEFAULT_ADMIN_EMAIL, "admin", True)]
    assert await login_status(client, DEFAULT_ADMIN_EMAIL, generated) == 200


@pytest.mark.committing
async def test_no_first_admin_when_users_exist(client: AsyncClient) -> None:
    await empty_users_table()
    await create_user("someone@crm.test", password=USER_PASSWORD)
    async with db.sessionmaker() as session, session.begin():
        generated = await AuthService(session).ensure_first_admin(settings)
    assert generated is None
    assert await users_in_db() == [("someone@crm.test", "user", True)]


@pytest.mark.committing
async def test_concurrent_bootstraps_create_one_admin() -> None:
    await empty_users_table()

    async def bootstrap() -> str | None:
        async with db.sessionmaker() as session, session.begin():
            return await AuthService(session).ensure_first_admin(settings)

    await asyncio.gather(bootstrap(), bootstrap(), bootstrap())
    assert await users_in_db() == [(ADMIN_EMAIL, "admin", True)]
