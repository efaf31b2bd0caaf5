"""The per-request database machinery: reads outside a transaction and writes inside one, no
connection left checked out, connections the server closed replaced before a request meets
them, errors met while connecting classified like any other, and one way to the database."""

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool

import services.investors
from core.config import PROJECT_ROOT, settings
from core.db import create_engine, db, get_write_session
from core.exceptions import sqlstate
from main import app as fastapi_app
from schemas.common import PG_INT_MAX
from services.investors import InvestorService
from tests.conftest import error_of
from tests.factories import INVESTORS, insert_investor, make_investor, scalar

# These tests count, kill and replace the pool's connections.
pytestmark = pytest.mark.committing

ME = "/api/v1/auth/me"
APPLICATION_NAME = "tpm-finance-crm"


@pytest.fixture
async def headers(session: AsyncSession, admin_headers: dict[str, str]) -> dict[str, str]:
    """The admin's Authorization header, with the fixture session's connection handed back:
    these tests count and kill the pool's connections."""
    await session.close()
    return admin_headers


def pool() -> QueuePool:
    engine_pool = db.engine.pool
    assert isinstance(engine_pool, QueuePool)
    return engine_pool


def assert_ok(response: Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


# --- transactions ---------------------------------------------------------------------------


async def test_a_write_failing_half_way_leaves_nothing(
    client: AsyncClient,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    investor_id = await insert_investor("Amundi")
    stage_before = await scalar("SELECT pipeline_stage::text FROM investors")
    move = InvestorService.move_to_next_stage

    async def move_for_an_unknown_user(
        self: InvestorService, investor_id: int, *, changed_by: int
    ) -> Any:
        # The stage is updated first, then its history row fails its foreign key.
        return await move(self, investor_id, changed_by=PG_INT_MAX)

    monkeypatch.setattr(InvestorService, "move_to_next_stage", move_for_an_unknown_user)
    response = await client.put(f"{INVESTORS}/{investor_id}/move-to-next-stage", headers=headers)
    assert response.status_code == 409, response.text
    assert error_of(response) == {
        "detail": "A referenced record does not exist or is still in use",
        "code": "conflict",
    }
    assert await scalar("SELECT pipeline_stage::text FROM investors") == stage_before
    assert await scalar("SELECT count(*) FROM investor_stage_changes") == 0


# --- pool -----------------------------------------------------------------------------------


async def test_no_connection_stays_checked_out_after_requests(
    client: AsyncClient, headers: dict[str, str]
) -> None:
    investor = await make_investor(client, headers, name="Amundi", email="ir@amundi.com")
    detail = f"{INVESTORS}/{investor['id']}"
    responses = [
        await client.get(detail, headers=headers),  # on the read session's connection
        await client.get(INVESTORS, headers=headers),  # through the read session
        await client.get(f"{INVESTORS}/{PG_INT_MAX}", headers=headers),
        await client.get(f"{INVESTORS}/abc", headers=headers),
        await client.get(INVESTORS, params={"limit": 0}, headers=headers),
        await client.get(INVESTORS, headers={"Authorization": "Bearer not.a.token"}),
        await client.post(INVESTORS, json={"name": "Lazard"}, headers=headers),
        await client.post(
            INVESTORS, json={"name": "Other", "email": "IR@amundi.com"}, headers=headers
        ),
    ]
    assert [r.status_code for r in responses] == [200, 200, 404, 422, 422, 401, 201, 409]
    assert pool().checkedout() == 0


# --- connections the server closed ----------------------------------------------------------


async def connect_directly() -> asyncpg.Connection:
    """A connection of the test's own to the test database, outside the app's pool."""
    url = make_url(db.engine.url).set(drivername="postgresql")
    return await asyncpg.connect(url.render_as_string(hide_password=False))


async def terminate_app_connections() -> int:
    """Kill the server end of every connection of the app, as a restart or an idle kill does."""
    conn = await connect_directly()
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database() "
            "AND pid <> pg_backend_pid()",
            APPLICATION_NAME,
        )
        for _ in range(200):
            remaining = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = current_database()",
                APPLICATION_NAME,
            )
            if remaining == 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the terminated backends did not exit")
    finally:
        await conn.close()
    # The backends are gone; let the event loop read the closed sockets, as it would between
    # requests in the server.
    for _ in range(3):
        await asyncio.sleep(0.2)
    return len(killed)


async def test_connections_the_server_closed_are_replaced_before_a_request_uses_them(
    client: AsyncClient, headers: dict[str, str]
) -> None:
    investor = await make_investor(client, headers, name="Amundi")
    warm = await asyncio.gather(*(client.get(INVESTORS, headers=headers) for _ in range(8)))
    assert [r.status_code for r in warm] == [200] * 8
    pooled = pool().checkedin()
    assert pooled >= 2, "the concurrent requests did not open several connections"

    assert await terminate_app_connections() == pooled

    # Every pooled connection is dead: each request below would meet one without the hook.
    listed = assert_ok(await client.get(INVESTORS, headers=headers))
    assert [item["name"] for item in listed["items"]] == ["Amundi"]
    detail = assert_ok(await client.get(f"{INVESTORS}/{investor['id']}", headers=headers))
    assert detail["name"] == "Amundi"
    me = assert_ok(await client.get(ME, headers=headers))
    assert me["role"] == "admin"
    again = await asyncio.gather(*(client.get(INVESTORS, headers=headers) for _ in range(8)))
    assert [r.status_code for r in again] == [200] * 8
    assert pool().checkedout() == 0


# --- errors --------------------------------------------------------------------------------


async def test_a_broken_read_statement_is_a_json_500_not_an_outage(
    client: AsyncClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in a statement (say, a column a migration renamed) must not pass for a database
    # outage: it is a 500, logged with its traceback, and the pool stays clean.
    investor = await make_investor(client, headers, name="Amundi")
    detail = f"{INVESTORS}/{investor['id']}"
    with monkeypatch.context() as patch:
        patch.setattr(services.investors, "_DETAIL", text("SELECT :investor_id / 0 AS id"))
        response = await client.get(detail, headers=headers)
    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert error_of(response) == {"detail": "Internal server error", "code": "internal_error"}
    assert pool().checkedout() == 0
    assert assert_ok(await client.get(detail, headers=headers))["name"] == "Amundi"


async def test_a_server_refusing_the_connection_raises_a_wrapped_error_with_its_sqlstate(
    app: object,
) -> None:
    # The driver raises errors met while connecting as they are, outside SQLAlchemy's
    # wrappers; the engine wraps them like any other, so one handler classifies them.
    url = make_url(db.engine.url).set(database="crm_no_such_database")
    error = await connect_error(url.render_as_string(hide_password=False))
    assert sqlstate(error) == "3D000"  # invalid_catalog_name


async def test_a_refused_socket_raises_a_wrapped_error_without_sqlstate(app: object) -> None:
    error = await connect_error("postgresql+asyncpg://postgres@127.0.0.1:1/crm")
    assert sqlstate(error) is None
    assert isinstance(getattr(error.orig, "__cause__", None), OSError)


# --- one way to the database ----------------------------------------------------------------

APPLICATION_PACKAGES = ("api", "core", "models", "schemas", "services")
# core/db.py alone uses the driver's own API: asyncpg's listeners for the LISTEN connection,
# and its socket state in the pool's checkout check. It never imports the driver.
# The LISTEN helper, and the job queue's one adapter (issue 12 §3 allows exactly these two).
DRIVER_MODULES = {"core/db.py", "core/queue.py"}


def _application_modules() -> Iterator[Path]:
    yield PROJECT_ROOT / "main.py"
    for package in APPLICATION_PACKAGES:
        yield from sorted((PROJECT_ROOT / package).rglob("*.py"))


def _driver_uses(tree: ast.AST) -> list[str]:
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            uses += [alias.name for alias in node.names if alias.name.split(".")[0] == "asyncpg"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncpg":
            uses.append(node.module or "")
        elif isinstance(node, ast.Attribute) and node.attr == "driver_connection":
            uses.append("driver_connection")
    return uses


def test_no_application_module_reaches_the_driver_directly() -> None:
    found = {
        str(path.relative_to(PROJECT_ROOT)): uses
        for path in _application_modules()
        if (uses := _driver_uses(ast.parse(path.read_text(), str(path))))
    }
    assert set(found) <= DRIVER_MODULES, found
    assert "asyncpg" not in found.get("core/db.py", []), "core/db.py imports asyncpg"


# --- sessions by route ----------------------------------------------------------------------


def _calls(dependant: Dependant) -> set[object]:
    """Every callable `dependant` depends on, however deep."""
    calls: set[object] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        calls.add(current.call)
        pending.extend(current.dependencies)
    return calls


# Reads that write their own audit entry (GDPR export, spreadsheet exports): it commits with
# the request, before the answer, like any write's.
AUDITED_READS = {
    "/gdpr/export",
    "/exports/investor.{file_format}",
    "/exports/contact.{file_format}",
    "/exports/interaction.{file_format}",
    "/exports/kpi.{file_format}",
}


def test_reads_take_the_read_session_and_writes_the_write_session() -> None:
    # Routers included with a prefix are not flattened into app.routes.
    routes = [
        route.original_route
        for route in iter_route_contexts(fastapi_app.routes)
        if isinstance(route.original_route, APIRoute)
    ]
    assert len(routes) > 30
    for route in routes:
        calls = _calls(route.dependant)
        if (route.methods or set()) <= {"GET", "HEAD"} and route.path not in AUDITED_READS:
            assert get_write_session not in calls, route.path
        else:
            assert get_write_session in calls, (route.methods, route.path)


async def connect_error(url: str) -> OperationalError:
    """What connecting to `url` with the application's engine settings raises."""
    engine = create_engine(settings, url)
    try:
        with pytest.raises(OperationalError) as raised:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    return raised.value
