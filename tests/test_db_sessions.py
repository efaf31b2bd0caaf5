"""The per-request database machinery: reads outside a transaction and writes inside one, no
connection left checked out, connections the server closed replaced before a request meets
them, and Database.read_row handing back a clean pool after an error."""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from httpx import AsyncClient, Response
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool

import services.investors
from core.db import db
from schemas.common import PG_INT_MAX
from services.investors import InvestorService
from tests.conftest import engine_event
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
    assert response.json() == {
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
        await client.get(detail, headers=headers),  # read_row only: the session stays unused
        await client.get(INVESTORS, headers=headers),  # the session runs statements
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


# --- Database.read_row ----------------------------------------------------------------------


@contextmanager
def invalidated_connections() -> Iterator[list[Any]]:
    """The DBAPI connections the pool invalidates meanwhile."""
    invalidated: list[Any] = []

    def record(dbapi_connection: Any, _record: Any, _exception: Any) -> None:
        invalidated.append(dbapi_connection)

    with engine_event("invalidate", record):
        yield invalidated


async def test_read_row_discards_its_connection_after_an_error(app: object) -> None:
    # A fresh pool: a connection an earlier test left dead would be discarded (and counted)
    # at checkout, before the statement under test even runs.
    await db.engine.dispose()
    with invalidated_connections() as invalidated, pytest.raises(asyncpg.DivisionByZeroError):
        await db.read_row("SELECT 1/0")
    assert len(invalidated) == 1
    assert invalidated[0].driver_connection.is_closed()
    assert pool().checkedout() == 0
    row = await db.read_row("SELECT 1 AS one")
    assert row is not None
    assert dict(row) == {"one": 1}


async def test_read_row_discards_its_connection_when_cancelled(app: object) -> None:
    with invalidated_connections() as invalidated:
        sleeping = asyncio.create_task(db.read_row("SELECT pg_sleep(5)"))
        conn = await connect_directly()
        try:
            for _ in range(200):
                running = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND query = 'SELECT pg_sleep(5)' "
                    "AND state = 'active'",
                    APPLICATION_NAME,
                )
                if running:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the statement never started")
        finally:
            await conn.close()
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
    assert len(invalidated) == 1
    assert pool().checkedout() == 0
    row = await db.read_row("SELECT 2 AS two")
    assert row is not None
    assert dict(row) == {"two": 2}


async def test_a_broken_statement_in_read_row_is_a_json_500_not_an_outage(
    client: AsyncClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in hand-written SQL (say, a column a migration renamed) must not pass for a
    # database outage: it is a 500, logged with its traceback.
    investor = await make_investor(client, headers, name="Amundi")
    detail = f"{INVESTORS}/{investor['id']}"
    with monkeypatch.context() as patch:
        patch.setattr(services.investors, "_DETAIL_SQL", "SELECT $1::int / 0 AS id")
        response = await client.get(detail, headers=headers)
    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "Internal server error", "code": "internal_error"}
    assert pool().checkedout() == 0
    assert assert_ok(await client.get(detail, headers=headers))["name"] == "Amundi"
