"""Input rules and error rendering on the foundation routes (users, auth)."""

import contextlib
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import text

from services.users import UserService
from tests.conftest import error_of

USERS = "/api/v1/users"
ME = "/api/v1/auth/me"
INTERNAL_ERROR = {"detail": "Internal server error", "code": "internal_error"}


def new_user(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": "alice@crm.test",
        "full_name": "Alice Martin",
        "password": "harbour-violet-lamp-1",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def assert_422_at(response: Response, field: str) -> None:
    assert response.status_code == 422, response.text
    locs = [err["loc"] for err in response.json()["detail"]]
    assert ["body", field] in locs or any(loc[:2] == ["body", field] for loc in locs), locs


async def post_user(client: AsyncClient, headers: dict[str, str], **fields: Any) -> Response:
    return await client.post(USERS, json=new_user(**fields), headers=headers)


async def put_user(
    client: AsyncClient, headers: dict[str, str], user_id: int, body: Any
) -> Response:
    return await client.put(f"{USERS}/{user_id}", json=body, headers=headers)


# --- strict types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("is_active", 0),
        ("is_active", 1),
        ("is_active", "true"),
        ("is_active", "false"),
        ("is_active", None),
        ("role", "superuser"),
        ("role", "Admin"),
        ("role", 1),
        ("role", None),
        ("email", 42),
        ("full_name", 42),
        ("full_name", ["Alice"]),
        ("password", 12345678),
    ],
)
async def test_create_rejects_wrong_types(
    client: AsyncClient, admin_headers: dict[str, str], field: str, value: Any
) -> None:
    assert_422_at(await post_user(client, admin_headers, **{field: value}), field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("is_active", 0),
        ("is_active", "true"),
        ("role", "root"),
        ("full_name", None),
        ("email", None),
        ("password", None),
        ("role", None),
        ("is_active", None),
    ],
)
async def test_update_rejects_wrong_types_and_null(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int, field: str, value: Any
) -> None:
    assert_422_at(await put_user(client, admin_headers, user_id, {field: value}), field)


@pytest.mark.parametrize("body", [[], "text", 3, None])
async def test_body_must_be_an_object(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int, body: Any
) -> None:
    response = await put_user(client, admin_headers, user_id, body)
    assert response.status_code == 422


async def test_malformed_json_body_is_422(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        USERS,
        content=b'{"email": "a@crm.test",',
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


# --- unknown and server-owned fields --------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 99),
        ("created_at", "2024-01-01T00:00:00Z"),
        ("updated_at", "2024-01-01T00:00:00Z"),
        ("hashed_password", "$argon2id$v=19$m=65536,t=3,p=4$abc$def"),
        ("is_admin", True),
        ("nickname", "Ali"),
    ],
)
async def test_unknown_and_server_owned_fields_are_422_naming_the_field(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int, field: str, value: Any
) -> None:
    created = await post_user(client, admin_headers, **{field: value})
    assert_422_at(created, field)
    assert created.json()["detail"][0]["type"] == "extra_forbidden"
    updated = await put_user(client, admin_headers, user_id, {field: value})
    assert_422_at(updated, field)


async def test_password_change_refuses_unknown_fields(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.put(
        f"{ME}/password",
        json={"current_password": "x", "new_password": "new-password-1", "user_id": 1},
        headers=user_headers,
    )
    assert_422_at(response, "user_id")


# --- strings --------------------------------------------------------------------------------


async def test_strings_are_trimmed(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await post_user(
        client, admin_headers, email="  alice@crm.test\t", full_name="  Alice Martin \n"
    )
    assert response.status_code == 201
    assert (response.json()["email"], response.json()["full_name"]) == (
        "alice@crm.test",
        "Alice Martin",
    )
    updated = await put_user(
        client, admin_headers, response.json()["id"], {"full_name": "  Alice D.  "}
    )
    assert updated.json()["full_name"] == "Alice D."


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "x" * 256])
async def test_blank_or_long_full_name_is_422(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int, name: str
) -> None:
    assert_422_at(await post_user(client, admin_headers, full_name=name), "full_name")
    assert_422_at(await put_user(client, admin_headers, user_id, {"full_name": name}), "full_name")


async def test_full_name_of_255_characters_is_accepted(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await post_user(client, admin_headers, full_name="x" * 255)
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("full_name", "Ali\x00ce"),
        ("email", "ali\x00ce@crm.test"),
        ("password", "pass\x00word-123"),
    ],
)
async def test_nul_bytes_are_422(
    client: AsyncClient, admin_headers: dict[str, str], field: str, value: str
) -> None:
    assert_422_at(await post_user(client, admin_headers, **{field: value}), field)


async def test_nul_byte_in_login_is_422(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login", json={"email": "a\x00@crm.test", "password": "x"}
    )
    assert_422_at(response, "email")


# --- emails ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "plainaddress",
        "@crm.test",
        "alice@",
        "alice@crm",
        "alice@@crm.test",
        "alice crm@crm.test",
        "alice@crm..test",
        ".alice@crm.test",
        "alice@-crm.test",
        "x" * 65 + "@crm.test",
        "a@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 58 + ".fr",
    ],
)
async def test_bad_email_is_422(
    client: AsyncClient, admin_headers: dict[str, str], email: str
) -> None:
    assert_422_at(await post_user(client, admin_headers, email=email), "email")


@pytest.mark.parametrize(
    "email",
    [
        "someone@example.test",
        "someone@example.com",
        "first.last+tag@sub.domain.fr",
        "o'brien@crm.test",
        "x" * 64 + "@crm.test",
    ],
)
async def test_valid_email_is_accepted(
    client: AsyncClient, admin_headers: dict[str, str], email: str
) -> None:
    response = await post_user(client, admin_headers, email=email)
    assert response.status_code == 201, response.text
    assert response.json()["email"] == email.lower()


async def test_email_of_254_characters_is_accepted_and_255_refused(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    domain = "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".fr"  # 195 characters
    local = "a" * (254 - 1 - len(domain))
    ok = await post_user(client, admin_headers, email=f"{local}@{domain}")
    assert ok.status_code == 201, ok.text
    too_long = await post_user(client, admin_headers, email=f"{local}x@{domain}")
    assert_422_at(too_long, "email")


# --- path ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["abc", "1.5", "1e3", "0x10", "%20"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_non_integer_path_id_is_422(
    client: AsyncClient, admin_headers: dict[str, str], user_id: str, method: str
) -> None:
    response = await client.request(
        method, f"{USERS}/{user_id}", json={"full_name": "X"}, headers=admin_headers
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_huge_path_id_is_404(
    client: AsyncClient, admin_headers: dict[str, str], method: str
) -> None:
    response = await client.request(
        method, f"{USERS}/99999999999999999999", json={"full_name": "X"}, headers=admin_headers
    )
    assert response.status_code == 404
    assert error_of(response) == {"detail": "User not found", "code": "not_found"}


# --- routing errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", ME),
        ("POST", ME),
        ("GET", "/api/v1/auth/login"),
        ("GET", f"{ME}/password"),
        ("PATCH", USERS),
        ("POST", f"{USERS}/1"),
        ("POST", "/health"),
    ],
)
async def test_wrong_method_is_405_json(
    client: AsyncClient, admin_headers: dict[str, str], method: str, path: str
) -> None:
    response = await client.request(method, path, headers=admin_headers)
    assert response.status_code == 405
    assert error_of(response) == {"detail": "Method Not Allowed", "code": "method_not_allowed"}
    assert "allow" in response.headers


@pytest.mark.parametrize(
    "path", ["/nope", "/api/v1/nope", "/api/v2/users", "/api/v1/users/1/extra", "/api/v1/auth"]
)
async def test_unknown_route_is_404_json(
    client: AsyncClient, admin_headers: dict[str, str], path: str
) -> None:
    response = await client.get(path, headers=admin_headers)
    assert response.status_code == 404
    assert error_of(response) == {"detail": "Not Found", "code": "not_found"}


# --- database and unexpected errors ---------------------------------------------------------


async def test_unique_violation_reaching_the_generic_handler_is_409(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skip the service's own duplicate check so the IntegrityError reaches the app handler.
    monkeypatch.setattr(UserService, "integrity_guard", lambda *_, **__: contextlib.nullcontext())
    assert (await post_user(client, admin_headers)).status_code == 201
    response = await post_user(client, admin_headers, email="ALICE@crm.test")
    assert response.status_code == 409
    assert error_of(response) == {
        "detail": "A record with these values already exists",
        "code": "conflict",
    }


async def test_concurrency_failure_reaching_the_generic_handler_is_409(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def serialization_failure(self: UserService, **_: Any) -> Any:
        await self.session.execute(
            text("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'serialization_failure'; END $$")
        )

    monkeypatch.setattr(UserService, "list", serialization_failure)
    response = await client.get(USERS, headers=admin_headers)
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"


async def test_unexpected_exception_is_a_bare_json_500(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(self: UserService, **_: Any) -> Any:
        raise RuntimeError("secret internals: /srv/app/services/users.py line 42")

    monkeypatch.setattr(UserService, "list", boom)
    response = await client.get(USERS, headers=admin_headers)
    assert response.status_code == 500
    assert error_of(response) == INTERNAL_ERROR
    assert "secret" not in response.text
    assert "Traceback" not in response.text


async def test_unexpected_database_error_is_a_bare_json_500(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bad_sql(self: UserService, **_: Any) -> Any:
        await self.session.execute(text("SELECT no_such_column FROM users"))

    monkeypatch.setattr(UserService, "list", bad_sql)
    response = await client.get(USERS, headers=admin_headers)
    assert response.status_code == 500
    assert error_of(response) == INTERNAL_ERROR
    assert "no_such_column" not in response.text


async def test_a_failed_request_rolls_back_its_writes(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create = UserService.create

    async def create_then_fail(self: UserService, data: Any, **extra: Any) -> Any:
        await real_create(self, data, **extra)
        raise RuntimeError("after the insert")

    monkeypatch.setattr(UserService, "create", create_then_fail)
    assert (await post_user(client, admin_headers)).status_code == 500
    monkeypatch.undo()
    listed = await client.get(USERS, headers=admin_headers)
    assert [u["email"] for u in listed.json()["items"]] == ["admin@crm.test"]


# --- body size ------------------------------------------------------------------------------


async def test_body_over_one_mib_is_413(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    big = new_user(full_name="x" * (1024 * 1024 + 1))
    response = await client.post(USERS, json=big, headers=admin_headers)
    assert response.status_code == 413
    assert error_of(response) == {
        "detail": "Request body is too large",
        "code": "payload_too_large",
    }


async def test_streamed_body_over_one_mib_is_413(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 65536

    response = await client.post(
        USERS, content=chunks(), headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_login_body_over_one_mib_is_413(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login", json={"email": "a@crm.test", "password": "x" * (1024 * 1024)}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
