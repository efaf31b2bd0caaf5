"""Health and readiness probes, CORS, the documentation pages and the security headers."""

from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient

from core.config import settings
from core.db import db
from services.users import UserService
from tests.conftest import error_of

# Port 1 on the loopback: nothing listens there, so connecting fails at once.
UNREACHABLE_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/crm"


@pytest.fixture
async def database_down() -> AsyncIterator[None]:
    """Point the app at a closed port for one test, as the lifespan configures it; the real
    database comes back after."""
    # The whole state comes back as it was, the test's own sessions (bound to its rolled-back
    # transaction) included: a new engine there would leave later tests on the old one's.
    saved = vars(db).copy()
    db.configure(settings, UNREACHABLE_URL)
    try:
        yield
    finally:
        await db.engine.dispose()
        vars(db).update(saved)


# --- /health and /ready ---------------------------------------------------------------------


async def test_health(client: AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_the_database_answers(client: AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


@pytest.mark.usefixtures("database_down")
async def test_health_does_not_touch_the_database(client: AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.usefixtures("database_down")
async def test_ready_is_503_json_when_the_database_is_unreachable(client: AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 503
    assert error_of(response) == {
        "detail": "The database is not reachable",
        "code": "service_unavailable",
    }


async def test_api_is_503_json_when_the_database_is_unreachable(
    client: AsyncClient, admin_headers: dict[str, str], database_down: None
) -> None:
    # admin_headers reads the admin id, so it comes before database_down.
    response = await client.get("/api/v1/auth/me", headers=admin_headers)
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    login = await client.post(
        "/api/v1/auth/login", json={"email": "admin@crm.test", "password": "whatever-1"}
    )
    assert login.status_code == 503
    assert login.json()["code"] == "service_unavailable"


async def test_ready_again_once_the_database_is_back(client: AsyncClient) -> None:
    # Runs after the tests above: the swapped engine must not have leaked.
    assert (await client.get("/ready")).status_code == 200


# --- CORS -----------------------------------------------------------------------------------


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://localhost:3000"])
async def test_preflight_from_an_allowed_origin(client: AsyncClient, origin: str) -> None:
    response = await client.options("/api/v1/auth/login", headers=preflight_headers(origin))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://localhost:5174", "https://localhost:5173", "null"],
)
async def test_preflight_from_another_origin_gets_no_allow_origin(
    client: AsyncClient, origin: str
) -> None:
    response = await client.options("/api/v1/users", headers=preflight_headers(origin, "GET"))
    assert "access-control-allow-origin" not in response.headers
    simple = await client.get("/health", headers={"Origin": origin})
    assert "access-control-allow-origin" not in simple.headers


async def test_simple_request_from_an_allowed_origin(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(
        "/api/v1/auth/me", headers={**admin_headers, "Origin": "http://localhost:5173"}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"


async def test_cors_exposes_retry_after_to_the_spa(client: AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": "http://localhost:5173"})
    assert "retry-after" in response.headers["access-control-expose-headers"].lower()


# --- documentation --------------------------------------------------------------------------


async def test_openapi_document(client: AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["title"] == "TPM Finance CRM API"
    scheme = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert scheme["type"] == "oauth2"
    assert scheme["flows"]["password"]["tokenUrl"] == "/api/v1/auth/login"


async def test_swagger_ui(client: AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text
    assert "/openapi.json" in response.text
    assert "TPM Finance CRM API" in response.text


async def test_redoc(client: AsyncClient) -> None:
    response = await client.get("/redoc")
    assert response.status_code == 200
    assert "redoc" in response.text.lower()
    assert "/openapi.json" in response.text


async def test_swagger_authorize_logs_in_through_the_password_flow(client: AsyncClient) -> None:
    """What the Authorize button sends: the form to tokenUrl, then the Bearer token."""
    spec = (await client.get("/openapi.json")).json()
    token_url = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"][
        "tokenUrl"
    ]
    response = await client.post(
        token_url,
        data={
            "grant_type": "password",
            "username": "admin@crm.test",
            "password": "admin-password-123",
        },
    )
    assert response.status_code == 200
    token = response.json()["access_token"]
    me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200


# --- security headers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "authenticated"),
    [
        ("GET", "/api/v1/auth/me", True),
        ("GET", "/api/v1/users", True),
        ("GET", "/api/v1/auth/me", False),
        ("GET", "/api/v1/nope", True),
        ("DELETE", "/api/v1/auth/me", True),
        ("POST", "/api/v1/auth/login", False),
    ],
)
async def test_api_responses_carry_security_headers(
    client: AsyncClient,
    admin_headers: dict[str, str],
    method: str,
    path: str,
    authenticated: bool,
) -> None:
    headers = admin_headers if authenticated else {}
    response = await client.request(method, path, headers=headers, json={})
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


async def test_login_token_response_is_not_cached(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login",
        json={"email": "admin@crm.test", "password": "admin-password-123"},
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_health_carries_nosniff(client: AsyncClient) -> None:
    response = await client.get("/health")
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_error_responses_outside_the_routes_carry_security_headers(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    too_large = await client.post(
        "/api/v1/users",
        content=b"x" * (2 * 1024 * 1024),
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert too_large.status_code == 413

    async def boom(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(UserService, "list", boom)
    crashed = await client.get("/api/v1/users", headers=admin_headers)
    assert crashed.status_code == 500
    for response in (too_large, crashed):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


async def test_a_request_without_origin_still_says_the_answer_varies_by_origin(
    client: AsyncClient,
) -> None:
    # CORS is skipped for such requests (core.middleware); a shared cache must still not hand
    # this answer, which has no Access-Control-Allow-Origin, to a cross-origin request.
    response = await client.get("/health")
    assert response.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in response.headers


async def test_a_preflight_answered_by_cors_has_the_request_id_and_security_headers(
    client: AsyncClient,
) -> None:
    preflight = await client.options(
        "/api/v1/auth/login",
        headers={**preflight_headers("http://localhost:5173"), "X-Request-ID": "preflight-1"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["x-request-id"] == "preflight-1"
    assert preflight.headers["x-content-type-options"] == "nosniff"
    assert preflight.headers["cache-control"] == "no-store"
