"""Every /api/v1 route but login and refresh requires a valid token, and the OpenAPI says so
honestly."""

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from httpx import AsyncClient

from api.deps import get_current_user, get_stream_caller
from main import app as fastapi_app
from tests.conftest import error_of

# The reset link's token stands for the bearer; a wrong one is 400, never 401
# (tests/test_password_reset.py).
PASSWORD_RESET_PATHS = {
    "/api/v1/auth/password-reset/request",
    "/api/v1/auth/password-reset/confirm",
}
# Routes that answer without a token. Anything else must depend on get_current_user.
PUBLIC_PATHS = {
    "/health",
    "/ready",
    "/metrics",  # its own bearer token (METRICS_TOKEN), 404 without it: tests/test_metrics.py
    "/docs",
    "/docs-assets",
    "/redoc",
    "/openapi.json",
    "/api/v1/auth/login",
    # Its proof is the refresh token in its body: an expired access token must not stop it.
    "/api/v1/auth/refresh",
    *PASSWORD_RESET_PATHS,
}
# The Bearer scheme, or its extension that also takes a single-use ticket (the notification
# stream: tests/test_notifications.py).
AUTHENTICATING = {get_current_user, get_stream_caller}
ERROR_BODY_REF = "#/components/schemas/ErrorBody"
VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"


def dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from dependency_calls(sub)


def routes() -> list[RouteContext]:
    """Every route with its effective path and dependencies (routers included with a prefix
    are not flattened into app.routes by FastAPI)."""
    return list(iter_route_contexts(fastapi_app.routes))


def route_path(route: RouteContext) -> str:
    assert route.path is not None, route
    return route.path


def is_api_route(route: RouteContext) -> bool:
    return isinstance(route.original_route, APIRoute)


def api_routes() -> list[tuple[str, str]]:
    """(method, concrete path) for every /api/v1 operation that must require a token."""
    found: list[tuple[str, str]] = []
    for route in routes():
        if is_api_route(route) and route_path(route) not in PUBLIC_PATHS:
            path = re.sub(r"\{[^}]+\}", "1", route_path(route))
            found.extend((method, path) for method in sorted(route.methods or ()))
    return found


# --- the route walk -------------------------------------------------------------------------


def test_every_route_outside_the_allowlist_depends_on_get_current_user() -> None:
    unprotected = [
        route_path(route)
        for route in routes()
        if route_path(route) not in PUBLIC_PATHS
        and not (is_api_route(route) and AUTHENTICATING & set(dependency_calls(route.dependant)))
    ]
    assert unprotected == []


def test_the_allowlist_matches_real_routes() -> None:
    # A renamed public route must not leave a stale entry that would hide a new one.
    assert {route_path(route) for route in routes()} >= PUBLIC_PATHS


def test_the_walk_detects_an_unprotected_route() -> None:
    """The check above can fail: a route without the dependency is reported."""
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/api/v1/unprotected-probe")
    async def probe() -> dict[str, str]:
        return {}

    (route,) = router.routes
    assert isinstance(route, APIRoute)
    assert get_current_user not in set(dependency_calls(route.dependant))
    protected = next(r for r in routes() if route_path(r) == "/api/v1/auth/me")
    assert get_current_user in set(dependency_calls(protected.dependant))


def test_there_are_protected_routes_to_check() -> None:
    paths = {path for _, path in api_routes()}
    assert {"/api/v1/auth/me", "/api/v1/users", "/api/v1/users/1"} <= paths


# --- at runtime -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), api_routes())
async def test_every_protected_route_without_token_is_401(
    client: AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={})
    assert response.status_code == 401
    assert error_of(response) == {"detail": "Not authenticated", "code": "not_authenticated"}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer garbage", "Bearer a.b.c", "Bearer ", "Basic YWRtaW46YWRtaW4=", "Bearer\tx", "token"],
)
async def test_garbage_authorization_header_is_401(client: AsyncClient, authorization: str) -> None:
    response = await client.get("/api/v1/auth/me", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.json()["code"] in ("not_authenticated", "invalid_token")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), api_routes())
async def test_every_protected_route_with_a_garbage_token_is_401(
    client: AsyncClient, method: str, path: str
) -> None:
    response = await client.request(
        method, path, json={}, headers={"Authorization": "Bearer not-a-jwt"}
    )
    assert response.status_code == 401
    assert error_of(response) == {"detail": "Invalid or expired token", "code": "invalid_token"}
    assert response.headers["www-authenticate"] == "Bearer"


# --- OpenAPI --------------------------------------------------------------------------------


def api_operations() -> list[tuple[str, str, dict[str, Any]]]:
    spec = fastapi_app.openapi()
    return [
        (method.upper(), path, operation)
        for path, operations in spec["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in operations.items()
    ]


def operation_id(op: tuple[str, str, dict[str, Any]]) -> str:
    return f"{op[0]} {op[1]}"


@pytest.fixture(params=api_operations(), ids=operation_id)
def operation(request: pytest.FixtureRequest) -> tuple[str, str, dict[str, Any]]:
    op: tuple[str, str, dict[str, Any]] = request.param
    return op


def test_every_operation_declares_401_and_503(
    operation: tuple[str, str, dict[str, Any]],
) -> None:
    _, path, op = operation
    required = {"503"} if path in PASSWORD_RESET_PATHS else {"401", "503"}
    assert required <= set(op["responses"])


def test_every_operation_with_input_declares_422(
    operation: tuple[str, str, dict[str, Any]],
) -> None:
    _, _, op = operation
    has_input = bool(op.get("parameters")) or "requestBody" in op
    assert ("422" in op["responses"]) == has_input


def test_every_declared_error_uses_the_error_schema(
    operation: tuple[str, str, dict[str, Any]],
) -> None:
    _, _, op = operation
    for status, response in op["responses"].items():
        if int(status) < 400:
            continue
        schema = response["content"]["application/json"]["schema"]
        expected = VALIDATION_ERROR_REF if status == "422" else ERROR_BODY_REF
        assert schema == {"$ref": expected}, status


def test_every_operation_but_login_requires_the_bearer_scheme(
    operation: tuple[str, str, dict[str, Any]],
) -> None:
    _, path, op = operation
    expected: Any = None if path in PUBLIC_PATHS else [{"OAuth2PasswordBearer": []}]
    assert op.get("security") == expected


def test_error_body_schemas_declare_detail_code_and_request_id() -> None:
    schemas = fastapi_app.openapi()["components"]["schemas"]
    for name in ("ErrorBody", "HTTPValidationError"):
        assert schemas[name]["required"] == ["detail", "code", "request_id"], name
        assert set(schemas[name]["properties"]) == {"detail", "code", "request_id"}, name


def test_login_describes_both_request_bodies() -> None:
    login = fastapi_app.openapi()["paths"]["/api/v1/auth/login"]["post"]
    content = login["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
    assert content["application/json"]["schema"]["required"] == ["email", "password"]
    assert content["application/x-www-form-urlencoded"]["schema"]["required"] == [
        "username",
        "password",
    ]
    assert {"401", "422", "429"} <= set(login["responses"])
