"""The async engine, the session factory and the per-request transaction."""

import logging
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.config import Settings


class _HideFetchedRows(logging.Filter):
    """SQLAlchemy logs every fetched row at DEBUG: rows hold password hashes and client data."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Row %r":
            record.args = ("[row hidden]",)
        return True


_ROW_FILTER = _HideFetchedRows()


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    """One pooled asyncpg engine; every connection carries the statement timeout."""
    database_url = url or settings.database_url
    if database_url is None:
        raise RuntimeError("DATABASE_URL is not set and no embedded server was started")
    logging.getLogger("sqlalchemy.engine.Engine").addFilter(_ROW_FILTER)  # once: same object
    return create_async_engine(
        database_url,
        echo=settings.database_echo,
        # SQL logs and error messages never show bound values (hashes, personal data).
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=10,
        connect_args={
            "timeout": 5,
            "server_settings": {
                "statement_timeout": str(settings.database_statement_timeout_ms),
                "application_name": "tpm-finance-crm",
                # Timestamps built in SQL (e.g. JSON aggregates) come out in UTC like the rest.
                "timezone": "UTC",
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class Database:
    """Holds the engine and session factory for the app's lifetime (set up in the lifespan)."""

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None

    def configure(self, settings: Settings, url: str | None = None) -> None:
        self._engine = create_engine(settings, url)
        self._sessionmaker = create_sessionmaker(self._engine)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database is not configured")
        return self._engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self._sessionmaker is None:
            raise RuntimeError("Database is not configured")
        return self._sessionmaker

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._sessionmaker = None


db = Database()


async def get_session() -> AsyncIterator[AsyncSession]:
    """One session and one transaction per request, committed before the response is sent."""
    async with db.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
