"""Abuse cases from the OWASP API Security Top 10 (2023) that no entity test owns: mass
assignment, leaked hashes, function-level authorisation, page size, token validity window and
statement timeout (CORS and security headers live in test_config and test_service_surface).
Routes are walked from the app and its OpenAPI document, so a new route is covered as is."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from httpx import AsyncClient
from jose import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import JWT_AUDIENCE, JWT_ISSUER, settings
from core.db import db
from core.policy import POLICY, Action
from models import Base
from services.jobs import JobService
from services.users import UserService
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, error_of
from tests.factories import USER_PASSWORD, first_admin_id, scalar
from worker.tasks import PurgePayload

FORBIDDEN_TO_USERS = {
    "detail": "Not allowed for the user role: only an admin may manage users",
    "code": "forbidden",
}

API = "/api/v1"
FORGED_ID = 777_777
FORGED_TIME = "2001-02-03T04:05:06Z"
FORGED_HASH = "$argon2id$v=19$m=65536,t=3,p=4$forged$forged"

# A valid body for every request body schema of the API. A new schema must be added here, so
# the mass-assignment walk below cannot silently skip an operation.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "LoginJSON": {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
    "AnonymizeRequest": {"entity": "contact", "id": 1},
    "PasswordChange": {"current_password": USER_PASSWORD, "new_password": "another-pass-123"},
    "RefreshRequest": {"refresh_token": "a-refresh-token-as-issued-at-login-0123456"},
    "UserCreate": {
        "email": "new@crm.test",
        "full_name": "New User",
        "password": "quiet-orbit-lamp-62",
    },
    "UserUpdate": {"full_name": "Renamed"},
    "MeUpdate": {"full_name": "Renamed"},
    "PasswordResetRequestBody": {"email": "user@crm.test"},
    "PasswordResetConfirm": {"token": "A" * 43, "new_password": "quiet-orbit-lamp-62"},
    "InvestorCreate": {"name": "Forged Capital"},
    "InvestorUpdate": {"name": "Renamed Capital"},
    "ContactCreate": {"name": "Paul Durand"},
    "ContactUpdate": {"name": "Paul Renamed"},
    "InteractionCreate": {"type": "email", "date": "2024-03-01"},
    "InteractionUpdate": {"subject": "Renamed"},
    "KpiUpsert": {"year": 2024, "month": 3, "rdv_count": 1},
    "KpiUpdate": {"rdv_count": 2},
    "TwoFactorEnable": {"code": "123456"},
    "TwoFactorDisable": {"password": USER_PASSWORD, "code": "123456"},
    "TaskCreate": {"title": "Rappeler Jeanne", "due_date": "2026-11-30"},
    "TaskUpdate": {"priority": "haute"},
    "TaskSnooze": {"days": 2},
    "FollowUpRuleUpdate": {"delay_days": 4},
    "PreferencesUpdate": {"daily_digest": False},
}

# Columns the server owns; `role`/`is_admin` are only legitimate in the admin's user bodies.
SERVER_OWNED = {
    "id": FORGED_ID,
    "created_at": FORGED_TIME,
    "updated_at": FORGED_TIME,
    "hashed_password": FORGED_HASH,
    "created_by": FORGED_ID,
    "changed_by": FORGED_ID,
    "investor_id": FORGED_ID,
    "is_admin": True,
    "role": "admin",
}


def _openapi() -> dict[str, Any]:
    from main import app

    return app.openapi()


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in _openapi()["paths"].items()
        for method, operation in item.items()
    ]


def _body_schema_name(operation: dict[str, Any]) -> str | None:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    return str(schema.get("$ref", "").rsplit("/", 1)[-1] or schema.get("title"))


def _schema_properties(name: str) -> set[str]:
    schemas = _openapi()["components"]["schemas"]
    return set(schemas[name].get("properties", {})) if name in schemas else set()


async def _seed(client: AsyncClient, admin: dict[str, str], user_id: int) -> dict[str, int]:
    """One row of every entity, created through the API, the investor owned by the user;
    returns the path parameters."""
    investor = await client.post(
        f"{API}/investors", json={"name": "Acme", "owner_id": user_id}, headers=admin
    )
    assert investor.status_code == 201, investor.text
    investor_id = investor.json()["id"]
    contact = await client.post(
        f"{API}/contacts/investor/{investor_id}", json={"name": "Jeanne"}, headers=admin
    )
    assert contact.status_code == 201, contact.text
    interaction = await client.post(
        f"{API}/interactions/investor/{investor_id}",
        json={"type": "appel", "date": "2024-01-15"},
        headers=admin,
    )
    assert interaction.status_code == 201, interaction.text
    kpi = await client.post(
        f"{API}/kpis/investor/{investor_id}",
        json={"year": 2024, "month": 1, "rdv_count": 2},
        headers=admin,
    )
    assert kpi.status_code == 201, kpi.text
    # A job the admin caused: the user may not read it (403), unlike the job list (its own).
    async with db.sessionmaker() as session, session.begin():
        job_id = await JobService(session).enqueue(
            "jobs.purge", PurgePayload(), created_by=await first_admin_id()
        )
    # A task given to the user, which it may change.
    task = await client.post(
        f"{API}/tasks",
        json={"title": "Rappeler", "due_date": "2026-11-30", "assignee_id": user_id},
        headers=admin,
    )
    assert task.status_code == 201, task.text
    import_id = await scalar(
        "INSERT INTO imports (entity, mode, on_duplicate, file_format, filename, outcome, "
        "created_by) VALUES ('investor', 'dry_run', 'error', 'csv', 'a.csv', 'succeeded', :by) "
        "RETURNING id",
        by=await first_admin_id(),
    )
    return {
        "job_id": job_id,
        "task_id": task.json()["id"],
        "key": "stage_client",
        "import_id": import_id,
        "investor_id": investor_id,
        "contact_id": contact.json()["id"],
        "interaction_id": interaction.json()["id"],
        "kpi_id": kpi.json()["id"],
        "user_id": user_id,
        "year": 2024,
        "month": 1,
        "file_format": "csv",
        "entity": "investor",
    }


async def _table_ids(session: AsyncSession) -> dict[str, set[Any]]:
    ids = {}
    for table in Base.metadata.sorted_tables:
        # The counter tables have no id: their whole rows stand for it.
        key = "id" if "id" in table.c else "t::text"
        rows = await session.execute(text(f"SELECT {key} FROM {table.name} t"))
        ids[table.name] = set(rows.scalars().all())
    await session.rollback()
    return ids


# --- mass assignment ------------------------------------------------------------------------


async def test_every_request_body_schema_has_a_valid_example() -> None:
    names = {_body_schema_name(op) for _, _, op in _operations()} - {None}
    assert names == set(VALID_BODIES)


async def test_server_owned_fields_are_rejected_on_every_body_and_never_applied(
    client: AsyncClient,
    session: AsyncSession,
    admin_headers: dict[str, str],
    user_id: int,
    user_headers: dict[str, str],
) -> None:
    params = await _seed(client, admin_headers, user_id)
    before = await _table_ids(session)
    attempts = 0
    for method, path, operation in _operations():
        name = _body_schema_name(operation)
        if name is None:
            continue
        # Admin-only bodies are sent by the admin; every other one by a regular user.
        admin_only = path.startswith((f"{API}/users", f"{API}/gdpr", f"{API}/follow-up-rules"))
        headers = admin_headers if admin_only else user_headers
        for field, value in SERVER_OWNED.items():
            if field in _schema_properties(name):
                continue  # a field the schema documents is not mass assignment
            body = {**VALID_BODIES[name], field: value}
            response = await client.request(
                method, path.format(**params), json=body, headers=headers
            )
            assert response.status_code == 422, (method, path, field, response.text)
            # The only error is the forged field: the rest of the body was valid.
            errors = response.json()["detail"]
            assert [(e["loc"], e["type"]) for e in errors] == [
                (["body", field], "extra_forbidden")
            ], (method, path, field, errors)
            attempts += 1
    assert attempts > 50

    assert await _table_ids(session) == before
    forged = await session.execute(
        text(
            "SELECT (SELECT count(*) FROM users WHERE role = 'admin'),"
            " (SELECT count(*) FROM users WHERE hashed_password = :hash),"
            " (SELECT count(*) FROM interactions WHERE created_by = :id),"
            " (SELECT count(*) FROM investors WHERE created_at < '2002-01-01'"
            "   OR updated_at < '2002-01-01')"
        ),
        {"hash": FORGED_HASH, "id": FORGED_ID},
    )
    assert tuple(forged.one()) == (1, 0, 0, 0)


async def test_a_user_cannot_make_themself_admin(
    client: AsyncClient, session: AsyncSession, user_id: int, user_headers: dict[str, str]
) -> None:
    own = await client.put(
        f"{API}/users/{user_id}", json={"role": "admin", "is_active": True}, headers=user_headers
    )
    assert own.status_code == 403
    assert error_of(own) == {
        "detail": "Not allowed for the user role: only an admin may manage users",
        "code": "forbidden",
    }
    created = await client.post(
        f"{API}/users",
        json={"email": "evil@crm.test", "full_name": "Evil", "password": "evil-pass-1"}
        | {"role": "admin"},
        headers=user_headers,
    )
    assert created.status_code == 403
    password = await client.put(
        f"{API}/auth/me/password",
        json={"current_password": USER_PASSWORD, "new_password": "x" * 12, "role": "admin"},
        headers=user_headers,
    )
    assert password.status_code == 422

    me = await client.get(f"{API}/auth/me", headers=user_headers)
    assert (me.json()["role"], me.json()["is_admin"]) == ("user", False)
    rows = await session.execute(text("SELECT email, role FROM users ORDER BY id"))
    assert [tuple(row) for row in rows] == [(ADMIN_EMAIL, "admin"), ("user@crm.test", "user")]


# --- no password or hash in any response ----------------------------------------------------


async def test_no_get_response_contains_a_password_or_a_hash(
    client: AsyncClient,
    admin_headers: dict[str, str],
    user_id: int,
    user_headers: dict[str, str],
) -> None:
    params = await _seed(client, admin_headers, user_id)
    crawled = 0
    for method, path, _ in _operations():
        if method != "GET":
            continue
        url = path.format(**params)
        if "{" in url:
            raise AssertionError(f"no value for a path parameter of {path}")
        query = {"q": "acme"} if path.endswith("/search") else {}
        if path.endswith("/gdpr/export"):
            # The export of an account: its hash stays out of it too.
            query = {"email": "user@crm.test"}
        for role, headers in (("admin", admin_headers), ("user", user_headers)):
            response = await client.get(url, params=query, headers=headers)
            admin_only = path.startswith(
                (
                    f"{API}/users",
                    f"{API}/jobs/",
                    f"{API}/trash",
                    f"{API}/audit",
                    f"{API}/gdpr",
                    f"{API}/exports",
                    f"{API}/imports/templates",
                    f"{API}/imports",
                )
            )
            expected = 403 if role == "user" and admin_only else 200
            assert response.status_code == expected, (role, url, response.text)
            assert "password" not in response.text.lower(), (role, url)
            assert "$argon2" not in response.text, (role, url)
            crawled += 1
    assert crawled >= 40


# --- function-level authorisation ------------------------------------------------------------


def _api_routes() -> list[tuple[str, str, bool]]:
    """(method, full path, admin only) of every API route, walked from the app itself: admin
    only = user administration in the permission policy."""
    from main import app

    routes = []
    # FastAPI keeps included routers unflattened: the contexts carry the full paths.
    for route in iter_route_contexts(app.routes):
        path, methods = route.path, route.methods
        if isinstance(path, str) and path.startswith(API) and methods:
            for method in methods:
                rule = POLICY[(method, str(route.path_format).removeprefix(API))]
                routes.append((method, path, rule.action is Action.manage_users))
    return sorted(routes)


async def test_every_admin_route_is_forbidden_to_a_regular_user(
    client: AsyncClient, session: AsyncSession, user_id: int, user_headers: dict[str, str]
) -> None:
    routes = [(method, path) for method, path, admin_only in _api_routes() if admin_only]
    user_routes = {(m, path) for m, path, _ in _api_routes() if path.startswith(f"{API}/users")}
    assert len(user_routes) == 6
    assert user_routes <= set(routes)
    for method, path in routes:
        url = path.replace("{user_id:id}", str(user_id))
        body = VALID_BODIES["UserCreate"] if method in ("POST", "PUT") else None
        response = await client.request(method, url, json=body, headers=user_headers)
        assert response.status_code == 403, (method, path, response.text)
        assert error_of(response) == {
            "detail": "Not allowed for the user role: only an admin may manage users",
            "code": "forbidden",
        }

    rows = await session.execute(text("SELECT id, email, full_name, role FROM users ORDER BY id"))
    assert [tuple(row)[1:] for row in rows] == [
        (ADMIN_EMAIL, "Administrator", "admin"),
        ("user@crm.test", "User", "user"),
    ]


# --- resource consumption -------------------------------------------------------------------


async def test_page_size_is_capped_on_every_list(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int
) -> None:
    params = await _seed(client, admin_headers, user_id)
    lists = [
        path
        for method, path, operation in _operations()
        if method == "GET" and any(p["name"] == "limit" for p in operation.get("parameters", []))
    ]
    assert len(lists) >= 7
    for path in lists:
        url = path.format(**params)
        query = {"q": "acme"} if path.endswith("/search") else {}
        too_big = await client.get(url, params=query | {"limit": 201}, headers=admin_headers)
        assert too_big.status_code == 422, (path, too_big.text)
        assert [e["loc"] for e in too_big.json()["detail"]] == [["query", "limit"]]
        largest = await client.get(url, params=query | {"limit": 200}, headers=admin_headers)
        assert largest.status_code == 200, (path, largest.text)
        assert largest.json()["limit"] == 200


async def test_every_connection_carries_the_configured_statement_timeout(
    session: AsyncSession,
) -> None:
    value = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
    assert value == f"{settings.database_statement_timeout_ms // 1000}s"


@pytest.mark.committing
async def test_a_cancelled_slow_query_answers_503_json_and_frees_the_connection(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow_list(self: UserService, **_: Any) -> tuple[list[Any], int]:
        # The same server-side cap as production, shortened for this transaction only.
        await self.session.execute(text("SET LOCAL statement_timeout = 100"))
        await self.session.execute(text("SELECT pg_sleep(30)"))
        raise AssertionError("the statement timeout did not fire")

    monkeypatch.setattr(UserService, "list", slow_list)
    response = await client.get(f"{API}/users", headers=admin_headers)
    assert response.status_code == 503
    assert error_of(response) == {
        "detail": "The request took too long and was cancelled",
        "code": "service_unavailable",
    }
    monkeypatch.undo()

    # Every pooled connection still works and none kept the shortened timeout.
    for _ in range(settings.database_pool_size + 1):
        again = await client.get(f"{API}/users", headers=admin_headers)
        assert again.status_code == 200
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar_one() == "10s"


# --- broken authentication: the validity window -----------------------------------------------


async def test_a_token_that_is_not_yet_valid_is_refused(client: AsyncClient, user_id: int) -> None:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "iat": int(now.timestamp()),
        "nbf": int((now + timedelta(hours=1)).timestamp()),
        "exp": int((now + timedelta(hours=2)).timestamp()),
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "typ": "access",
    }
    token = jwt.encode(claims, settings.signing_key(), algorithm=settings.jwt_algorithm)
    response = await client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert error_of(response) == {"detail": "Invalid or expired token", "code": "invalid_token"}
    assert response.headers["www-authenticate"] == "Bearer"
