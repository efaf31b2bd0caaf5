"""Request ids (header, error bodies, log lines), the one error body and the log formats
(issue 12 §8)."""

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from core.config import settings
from core.exceptions import InvalidFieldError
from core.observability import configure_logging
from main import create_app
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.uvicorn_process import uvicorn_process

API = "/api/v1"
LOGIN = f"{API}/auth/login"
USERS = f"{API}/users"


def generated_id(response: Response) -> str:
    """The response's X-Request-ID, checked to be a new UUID."""
    request_id = response.headers["x-request-id"]
    parsed = uuid.UUID(request_id)
    assert (str(parsed), parsed.version, parsed.variant) == (request_id, 4, uuid.RFC_4122)
    return request_id


def error_with_id(response: Response, status: int, code: str) -> dict[str, object]:
    """The error body, checked to be {detail, code, request_id} with the header's id."""
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert set(body) == {"detail", "code", "request_id"}
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# --- X-Request-ID ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caller_id",
    ["abc", "Req-42_x.7", "7d0c4a1e-1b7a-4c53-9d5e-0f1f7b1f0c11", "a" * 64],
)
async def test_a_valid_caller_id_is_echoed(client: AsyncClient, caller_id: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": caller_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == caller_id


@pytest.mark.parametrize(
    "caller_id",
    ["a" * 65, "has space", "semi;colon", "new\\nline", 'quote"d', "é", ""],
)
async def test_an_invalid_caller_id_is_replaced_by_a_new_uuid(
    client: AsyncClient, caller_id: str
) -> None:
    response = await client.get("/health", headers={b"X-Request-ID": caller_id.encode()})
    assert response.status_code == 200
    assert generated_id(response) != caller_id


async def test_without_a_caller_id_each_response_gets_its_own(client: AsyncClient) -> None:
    first, second = await client.get("/health"), await client.get("/health")
    assert generated_id(first) != generated_id(second)


async def test_the_caller_id_is_the_one_in_the_error_body(client: AsyncClient) -> None:
    response = await client.get(f"{API}/auth/me", headers={"X-Request-ID": "trace-0042"})
    assert error_with_id(response, 401, "not_authenticated")["request_id"] == "trace-0042"


# --- one error body -------------------------------------------------------------------------


async def test_every_kind_of_error_carries_the_request_id(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    error_with_id(await client.get(f"{API}/auth/me"), 401, "not_authenticated")
    user = {"email": "jeanne@crm.test", "full_name": "Jeanne", "password": "Secret-Pass-4821"}
    error_with_id(await client.get(f"{USERS}/999999", headers=admin_headers), 404, "not_found")
    error_with_id(await client.get("/no/such/path"), 404, "not_found")
    error_with_id(await client.delete("/health"), 405, "method_not_allowed")
    assert (await client.post(USERS, json=user, headers=admin_headers)).status_code == 201
    duplicate = await client.post(USERS, json=user, headers=admin_headers)
    error_with_id(duplicate, 409, "duplicate_email")
    declared = await client.post(
        USERS, content=b"{}", headers={**admin_headers, "Content-Length": str(10**9)}
    )
    error_with_id(declared, 413, "payload_too_large")
    streamed = await client.post(
        USERS,
        json={**user, "full_name": "x" * (settings.max_body_bytes + 1)},
        headers=admin_headers,
    )
    error_with_id(streamed, 413, "payload_too_large")


async def test_a_schema_422_keeps_fastapi_detail_and_adds_the_code(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(f"{USERS}?limit=0", headers=admin_headers)
    body = error_with_id(response, 422, "validation_error")
    assert isinstance(body["detail"], list)
    [item] = body["detail"]
    assert item["loc"] == ["query", "limit"]
    assert item["type"] == "greater_than_equal"
    assert isinstance(item["msg"], str)


async def test_too_many_failed_logins_is_a_429_with_the_request_id(client: AsyncClient) -> None:
    wrong = {"email": ADMIN_EMAIL, "password": "not-the-password"}
    for _ in range(settings.login_max_failures):
        error_with_id(await client.post(LOGIN, json=wrong), 401, "invalid_credentials")
    locked = await client.post(LOGIN, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    error_with_id(locked, 429, "too_many_attempts")


class WeakPassword(InvalidFieldError):
    code = "weak_password"
    message = "The password is too easy to guess"


@pytest.fixture
async def app_with_failing_routes() -> AsyncIterator[AsyncClient]:
    """A fresh application (the real factory, middleware and handlers) with two more routes:
    a rule that refuses a value, and a bug."""
    app: FastAPI = create_app()

    @app.post("/rule")
    async def refuse() -> None:
        raise WeakPassword("body", "password")

    @app.get("/bug")
    async def crash() -> None:
        raise RuntimeError("an unexpected bug")

    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_a_rule_422_names_its_code_and_field(app_with_failing_routes: AsyncClient) -> None:
    response = await app_with_failing_routes.post("/rule", headers={"X-Request-ID": "rule-1"})
    assert response.json() == {
        "detail": [
            {
                "type": "weak_password",
                "loc": ["body", "password"],
                "msg": "The password is too easy to guess",
            }
        ],
        "code": "weak_password",
        "request_id": "rule-1",
    }
    assert response.status_code == 422
    assert response.headers["x-request-id"] == "rule-1"


async def test_the_500_rendered_outside_the_middleware_has_the_request_id(
    app_with_failing_routes: AsyncClient,
) -> None:
    response = await app_with_failing_routes.get("/bug", headers={"X-Request-ID": "bug-1"})
    body = error_with_id(response, 500, "internal_error")
    assert body == {
        "detail": "Internal server error",
        "code": "internal_error",
        "request_id": "bug-1",
    }
    assert response.headers.get_list("x-request-id") == ["bug-1"]
    generated = await app_with_failing_routes.get("/bug")
    assert error_with_id(generated, 500, "internal_error")["request_id"] == generated_id(generated)


# --- log lines ------------------------------------------------------------------------------


@pytest.fixture
def log_output(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """What the application's log handler writes, in a buffer; the configuration is put back
    afterwards. The access line is on, as uvicorn's access log would have it."""
    caplog.set_level(logging.INFO, logger="tpm_crm.access")
    output = io.StringIO()
    yield output
    configure_logging(settings.log_format)


async def test_json_lines_carry_the_request_fields(
    client: AsyncClient, log_output: io.StringIO
) -> None:
    configure_logging("json", stream=log_output)
    response = await client.post(
        LOGIN,
        json={"email": "nobody@crm.test", "password": "wrong-password"},
        headers={"X-Request-ID": "json-line-1"},
    )
    assert response.status_code == 401
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == "json-line-1"]
    access = [line for line in mine if line["logger"] == "tpm_crm.access"]
    assert len(access) == 1
    assert access[0]["level"] == "INFO"
    assert access[0]["method"] == "POST"
    assert access[0]["path"] == LOGIN
    assert access[0]["status"] == 401
    assert isinstance(access[0]["duration_ms"], float)
    assert access[0]["duration_ms"] > 0
    assert "time" in access[0]
    assert access[0]["message"] == f'"POST {LOGIN}" 401 {access[0]["duration_ms"]:.2f}ms'
    # The application's own line, written in the middle of the request, carries it too.
    failed = [line for line in mine if line["message"] == "Failed login attempt"]
    assert len(failed) == 1
    assert failed[0]["logger"] == "services.auth"
    assert (failed[0]["method"], failed[0]["path"]) == ("POST", LOGIN)
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line)
        assert {"method", "path", "status", "duration_ms"} <= set(line)


async def test_text_lines_carry_the_request_id(
    client: AsyncClient, log_output: io.StringIO
) -> None:
    configure_logging("text", stream=log_output)
    response = await client.get("/health", headers={"X-Request-ID": "text-line-1"})
    assert response.status_code == 200
    [access] = [line for line in log_output.getvalue().splitlines() if "text-line-1" in line]
    assert " INFO tpm_crm.access [text-line-1] " in access
    assert '"GET /health" 200 ' in access


async def test_a_log_line_outside_any_request_has_no_request_id(log_output: io.StringIO) -> None:
    configure_logging("json", stream=log_output)
    logging.getLogger("tpm_crm").warning("Outside a request")
    [line] = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert line["message"] == "Outside a request"
    assert line["request_id"] == "-"
    assert line["method"] is None


def test_under_uvicorn_every_line_is_json_and_the_access_line_is_the_apis(
    database_url: str,
) -> None:
    with uvicorn_process(database_url, env={"LOG_FORMAT": "json"}) as (base, server):
        response = httpx.get(f"{base}/health", headers={"X-Request-ID": "served-1"})
        assert response.headers["x-request-id"] == "served-1"
    assert server.stderr is not None
    lines = [json.loads(line) for line in server.stderr.read().splitlines()]
    loggers = {line["logger"] for line in lines}
    # uvicorn's own lines (start-up, shutdown) in the same format; its access log replaced.
    assert "uvicorn.error" in loggers
    assert "uvicorn.access" not in loggers
    [access] = [line for line in lines if line["request_id"] == "served-1"]
    assert (access["logger"], access["method"], access["path"]) == (
        "tpm_crm.access",
        "GET",
        "/health",
    )
    assert access["status"] == 200


def test_no_access_log_turns_the_apis_access_line_off(database_url: str) -> None:
    with uvicorn_process(database_url, "--no-access-log") as (base, server):
        response = httpx.get(f"{base}/health", headers={"X-Request-ID": "served-2"})
        assert response.status_code == 200
    assert server.stderr is not None
    output = server.stderr.read()
    assert "Application startup complete" in output
    assert "served-2" not in output


async def test_a_path_cannot_forge_a_text_log_line(
    client: AsyncClient, log_output: io.StringIO
) -> None:
    configure_logging("text", stream=log_output)
    forged = "/x%0A2026-01-01 00:00:00,000 INFO tpm_crm.access [admin] forged"
    response = await client.get(forged, headers={"X-Request-ID": "text-line-2"})
    assert response.status_code == 404
    lines = log_output.getvalue().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    [access] = [line for line in lines if "text-line-2" in line]
    assert '"GET /x%0A2026-01-01%2000%3A00%3A00%2C000%20INFO' in access
