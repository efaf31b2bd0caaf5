"""The async engine, the session factory and the per-request transaction."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from starlette.requests import Request

from core.config import Settings


class _HideFetchedRows(logging.Filter):
    """SQLAlchemy logs every fetched row at DEBUG: rows hold password hashes and client data."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Row %r":
            record.args = ("[row hidden]",)
        return True


_ROW_FILTER = _HideFetchedRows()
logger = logging.getLogger(__name__)

# A LISTEN connection is checked this often, so that a silently dead one (no FIN ever came)
# is noticed; after a loss it is re-opened this long after.
LISTEN_PING_S = 10.0
APPLICATION_NAME = "tpm-finance-crm"
LISTEN_RETRY_S = 1.0


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    """One pooled asyncpg engine; every connection carries the statement timeout."""
    database_url = url or settings.database_url
    if database_url is None:
        raise RuntimeError("DATABASE_URL is not set and no embedded server was started")
    logging.getLogger("sqlalchemy.engine.Engine").addFilter(_ROW_FILTER)  # once: same object
    engine = create_async_engine(
        database_url,
        echo=settings.database_echo,
        # SQL logs and error messages never show bound values (hashes, personal data).
        hide_parameters=True,
        # No pool_pre_ping: with asyncpg it costs three round trips (BEGIN, ping, ROLLBACK) on
        # every request. Connections the server closed are dropped at checkout instead (below),
        # and any other dead connection fails its request with a 503 and is replaced.
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=10,
        connect_args={
            "timeout": 5,
            "server_settings": {
                "statement_timeout": str(settings.database_statement_timeout_ms),
                "application_name": APPLICATION_NAME,
                # Timestamps built in SQL (e.g. JSON aggregates) come out in UTC like the rest.
                "timezone": "UTC",
            },
        },
    )
    event.listen(engine.sync_engine, "checkout", _discard_closed_connection)
    return engine


def _discard_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout hook: a connection the server closed (restart, idle kill) is replaced.

    asyncpg notices the server's end of the socket as soon as the event loop reads it, so this
    check needs no round trip; DisconnectionError makes the pool retry with a new connection.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("connection closed by the server")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class Database:
    """Holds the engine and session factory for the app's lifetime (set up in the lifespan)."""

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._read_sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._listeners: list[asyncio.Task[None]] = []

    def configure(self, settings: Settings, url: str | None = None) -> None:
        self._engine = create_engine(settings, url)
        self._sessionmaker = create_sessionmaker(self._engine)
        # Same pool, no BEGIN/COMMIT: under READ COMMITTED every statement takes its own
        # snapshot even inside a transaction, so a read-only request loses nothing by running
        # its statements outside one, and saves two round trips.
        self._read_sessionmaker = create_sessionmaker(
            self._engine.execution_options(isolation_level="AUTOCOMMIT")
        )

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

    @property
    def read_sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Sessions for read-only requests: each statement runs in autocommit."""
        if self._read_sessionmaker is None:
            raise RuntimeError("Database is not configured")
        return self._read_sessionmaker

    async def read_row(self, sql: str, *args: object) -> Mapping[str, Any] | None:
        """One row of hand-written SQL, run by asyncpg itself on a pooled connection.

        For the reads behind nearly every request (the caller's account, an investor's page):
        no session, no statement compilation, no ORM result processing, which were most of
        their cost. The statement runs on its own, outside the request's transaction, so it
        must never be the read a write depends on. asyncpg prepares it once per connection.
        """
        pooled = await self.engine.raw_connection()
        driver: Any = pooled.driver_connection
        try:
            row: Mapping[str, Any] | None = await driver.fetchrow(sql, *args)
        except BaseException:
            # Failed or cancelled mid-statement: its state is unknown, never reuse it.
            pooled.invalidate()
            raise
        pooled.close()
        return row

    def listen(
        self,
        channel: str,
        on_message: Callable[[str], None],
        on_state: Callable[[bool], None],
    ) -> None:
        """Keep a dedicated connection LISTENing on `channel` until dispose().

        `on_state(True)` once listening, `on_state(False)` as soon as the connection is lost
        (and at shutdown): whatever a caller cached on the strength of these notifications
        must not be trusted while none can arrive. The connection is re-opened after a loss.
        """
        task = asyncio.create_task(self._listen(channel, on_message, on_state))
        self._listeners.append(task)

    async def _listen(
        self,
        channel: str,
        on_message: Callable[[str], None],
        on_state: Callable[[bool], None],
    ) -> None:
        while True:
            try:
                await self._listen_once(channel, on_message, on_state)
                logger.warning("Lost the LISTEN connection on %s, reconnecting", channel)
            except Exception as exc:
                # Any failure means the same thing: not listening, try again shortly.
                logger.warning("Cannot LISTEN on %s (%r), retrying", channel, exc)
            await asyncio.sleep(LISTEN_RETRY_S)

    async def _listen_once(
        self,
        channel: str,
        on_message: Callable[[str], None],
        on_state: Callable[[bool], None],
    ) -> None:
        """LISTEN on one dedicated connection until it is lost."""
        pooled = await self.engine.raw_connection()
        driver: Any = pooled.driver_connection
        pooled.detach()  # its own connection for good, never handed back to the pool
        lost = asyncio.Event()
        try:
            # Told apart from the pool's connections in pg_stat_activity.
            await driver.execute(f"SET application_name = '{APPLICATION_NAME} listener'")
            driver.add_termination_listener(lambda _connection: lost.set())
            await driver.add_listener(
                channel, lambda _connection, _pid, _channel, payload: on_message(payload)
            )
            on_state(True)
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTEN_PING_S)
                if not lost.is_set():
                    await asyncio.wait_for(driver.execute("SELECT 1"), LISTEN_PING_S)
        finally:
            on_state(False)
            driver.terminate()

    async def dispose(self) -> None:
        for task in self._listeners:
            task.cancel()
        for task in self._listeners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listeners = []
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._sessionmaker = None
        self._read_sessionmaker = None

    @contextlib.contextmanager
    def sessions_on(self, connection: AsyncConnection) -> Iterator[None]:
        """For the block, every session (read and write) runs on `connection`, each inside a
        SAVEPOINT of the transaction the caller holds there.

        What the sessions commit is only released into that transaction, so the caller can undo
        all of it with one rollback: how the tests isolate themselves without emptying tables.
        """
        write, read = self.sessionmaker, self.read_sessionmaker

        def on_connection(maker: async_sessionmaker[Any]) -> async_sessionmaker[Any]:
            # The app's own session class and options; only where they run differs.
            options = {**maker.kw, "bind": connection, "join_transaction_mode": "create_savepoint"}
            return async_sessionmaker(class_=maker.class_, **options)

        self._sessionmaker, self._read_sessionmaker = on_connection(write), on_connection(read)
        try:
            yield
        finally:
            self._sessionmaker, self._read_sessionmaker = write, read


db = Database()

# HTTP's safe methods: their routes only read, so their statements need no transaction.
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; a writing request runs in one transaction, committed before
    the response is sent, and rolled back on any error."""
    if request.method in READ_ONLY_METHODS:
        session = db.read_sessionmaker()
        try:
            yield session
        finally:
            # Only a session that ran a statement holds a connection to hand back, and the
            # hottest reads never touch theirs (Database.read_row). __aexit__ is the close
            # that completes even if the request is cancelled meanwhile.
            if session.in_transaction():
                await session.__aexit__(None, None, None)
        return
    async with db.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
