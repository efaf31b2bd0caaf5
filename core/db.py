"""The async engine, the read and write session factories and the per-request sessions."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
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
logger = logging.getLogger(__name__)

# A LISTEN connection is pinged this often, and given this long to answer, so that a silently
# dead one (no FIN ever came, or a frozen server process) is given up within 3 s and whatever
# trusted its notifications is bypassed; after a loss it is re-opened this long after.
LISTEN_PING_S = 1.0
LISTEN_PING_TIMEOUT_S = 1.5
APPLICATION_NAME = "tpm-finance-crm"
# PostgreSQL's default level, asked for by write sessions (the engine's own is autocommit).
WRITE_ISOLATION = "READ COMMITTED"
# What a long read (an export) asks for: every statement of its transaction sees one snapshot.
SNAPSHOT_ISOLATION = "REPEATABLE READ"
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
        # Each statement on its own by default: what reads want, at no cost per checkout. Write
        # sessions ask for a transaction (transactional() below), and pay the option instead.
        isolation_level="AUTOCOMMIT",
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
    event.listen(engine.sync_engine, "do_connect", _connect_or_raise_dbapi_error)
    event.listen(engine.sync_engine, "checkout", _discard_closed_connection)
    return engine


def _connect_or_raise_dbapi_error(
    dialect: Dialect, _record: Any, cargs: list[Any], cparams: dict[str, Any]
) -> Any:
    """Open a connection; whatever stops it is raised as the dialect's OperationalError.

    SQLAlchemy translates the driver's errors while a statement runs, but not while it
    connects: a refused socket, a timeout, or a server that answers the handshake with an
    error (starting up, out of slots, database closed to connections) would escape as the
    driver's own exceptions. Raised as a DBAPI error instead, SQLAlchemy wraps it like any
    other (sqlalchemy.exc.OperationalError, its SQLSTATE kept), so one handler classifies them.
    """
    try:
        return dialect.connect(*cargs, **cparams)
    except Exception as exc:
        dbapi: Any = dialect.loaded_dbapi
        if isinstance(exc, dbapi.Error):
            raise
        error = dbapi.OperationalError(f"{type(exc).__name__}: {exc}")
        error.sqlstate = error.pgcode = getattr(exc, "sqlstate", None)
        raise error from exc


def _discard_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout hook: a connection the server closed (restart, idle kill) is replaced.

    asyncpg notices the server's end of the socket as soon as the event loop reads it, so this
    check needs no round trip; DisconnectionError makes the pool retry with a new connection.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("connection closed by the server")


class AsyncReadSession(AsyncSession):
    """A read-only request's session: each statement runs in autocommit, no BEGIN or COMMIT.

    Under READ COMMITTED every statement takes its own snapshot even inside a transaction, so
    a read loses nothing by running outside one, and saves two round trips per request.
    """


class AsyncWriteSession(AsyncSession):
    """A writing request's session: one transaction, committed before the response is sent."""


class AsyncSnapshotSession(AsyncSession):
    """A long read's session (an export): one read-only REPEATABLE READ transaction on a
    connection of its own, so rows read in batches all come from the same snapshot."""


SessionT = TypeVar("SessionT", bound=AsyncSession)
Bind = AsyncEngine | AsyncConnection


def _sessionmaker(bind: Bind, session_class: type[SessionT]) -> async_sessionmaker[SessionT]:
    return async_sessionmaker(bind, class_=session_class, expire_on_commit=False, autoflush=False)


def transactional(engine: AsyncEngine) -> AsyncEngine:
    """`engine` with its connections in a transaction (BEGIN ... COMMIT), on the same pool.

    The engine itself runs each statement on its own (autocommit), the cheapest way for reads:
    set as an execution option on every checkout instead, autocommit cost each read about a
    quarter of its CPU (SQLAlchemy's joined event dispatch, see docs/adr/0004). Writes take the
    option: their BEGIN and COMMIT round trips dwarf it.
    """
    return engine.execution_options(isolation_level=WRITE_ISOLATION)


def create_sessionmaker(bind: Bind) -> async_sessionmaker[AsyncWriteSession]:
    """Write sessions on `bind`: one transaction each (an engine is made transactional)."""
    if isinstance(bind, AsyncEngine):
        bind = transactional(bind)
    return _sessionmaker(bind, AsyncWriteSession)


def create_read_sessionmaker(bind: Bind) -> async_sessionmaker[AsyncReadSession]:
    """Read sessions on `bind`; an engine's connections are in autocommit (create_engine)."""
    return _sessionmaker(bind, AsyncReadSession)


class Database:
    """The engine (one pool) and the two session factories for the app's lifetime.

    Set up in the lifespan. Request code gets its sessions from `sessionmaker` (writes) and
    `read_sessionmaker` (reads) only, never from the engine, so both can be pointed elsewhere.
    """

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._write_engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncWriteSession] | None = None
        self._read_sessionmaker: async_sessionmaker[AsyncReadSession] | None = None
        self._snapshot_sessionmaker: async_sessionmaker[AsyncSnapshotSession] | None = None
        # The one LISTEN task, the handlers of each channel and of the connection's state.
        self._listeners: list[asyncio.Task[None]] = []
        self._channels: dict[str, list[Callable[[str], None]]] = {}
        self._state_handlers: list[Callable[[bool], None]] = []
        self._listen_driver: Any = None

    def configure(self, settings: Settings, url: str | None = None) -> None:
        self._engine = create_engine(settings, url)
        # Same pool: the write engine only runs a checked-out connection in a transaction.
        self._write_engine = transactional(self._engine)
        self._sessionmaker = create_sessionmaker(self._write_engine)
        self._read_sessionmaker = create_read_sessionmaker(self._engine)
        snapshots = self._engine.execution_options(
            isolation_level=SNAPSHOT_ISOLATION, postgresql_readonly=True
        )
        self._snapshot_sessionmaker = _sessionmaker(snapshots, AsyncSnapshotSession)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database is not configured")
        return self._engine

    @property
    def write_engine(self) -> AsyncEngine:
        """The engine with transactions, for code outside a request that needs one."""
        if self._write_engine is None:
            raise RuntimeError("Database is not configured")
        return self._write_engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncWriteSession]:
        """Sessions for writing requests: one transaction each."""
        if self._sessionmaker is None:
            raise RuntimeError("Database is not configured")
        return self._sessionmaker

    @property
    def read_sessionmaker(self) -> async_sessionmaker[AsyncReadSession]:
        """Sessions for read-only requests: each statement runs in autocommit."""
        if self._read_sessionmaker is None:
            raise RuntimeError("Database is not configured")
        return self._read_sessionmaker

    @property
    def snapshot_sessionmaker(self) -> async_sessionmaker[AsyncSnapshotSession]:
        """Sessions for long reads: one read-only repeatable-read transaction each."""
        if self._snapshot_sessionmaker is None:
            raise RuntimeError("Database is not configured")
        return self._snapshot_sessionmaker

    def listen(
        self,
        channel: str,
        on_message: Callable[[str], None],
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        """Hear `channel` on the process's one LISTEN connection, opened by the first call and
        kept until dispose(): however many channels, one connection per process.

        `on_state(True)` once listening, `on_state(False)` as soon as the connection is lost
        (and at shutdown): whatever a caller cached on the strength of these notifications
        must not be trusted while none can arrive. The connection is re-opened after a loss.
        """
        self._channels.setdefault(channel, []).append(on_message)
        if on_state is not None:
            self._state_handlers.append(on_state)
        if not self._listeners:
            self._listeners.append(asyncio.create_task(self._listen()))
        elif self._listen_driver is not None:
            # Registered at start-up, channels are subscribed when the connection opens; one
            # added later is subscribed by opening it again (its handlers hear the loss).
            self._listen_driver.terminate()

    def _set_listening(self, listening: bool) -> None:
        for on_state in self._state_handlers:
            on_state(listening)

    def _dispatch(self, channel: str, payload: str) -> None:
        for on_message in self._channels.get(channel, ()):
            on_message(payload)

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
                logger.warning("Lost the LISTEN connection, reconnecting")
            except Exception as exc:
                # Any failure means the same thing: not listening, try again shortly.
                logger.warning("Cannot LISTEN (%r), retrying", exc)
            await asyncio.sleep(LISTEN_RETRY_S)

    async def _listen_once(self) -> None:
        """LISTEN on every registered channel, on one dedicated connection, until it is lost."""
        pooled = await self.engine.raw_connection()
        driver: Any = pooled.driver_connection
        pooled.detach()  # its own connection for good, never handed back to the pool
        lost = asyncio.Event()
        try:
            # Told apart from the pool's connections in pg_stat_activity. A plain SET is safe
            # here, and simpler than a second engine with its own server_settings: the
            # connection left the pool for good above and is terminated, never handed back,
            # so no other borrower can inherit the setting.
            await driver.execute(f"SET application_name = '{APPLICATION_NAME} listener'")
            driver.add_termination_listener(lambda _connection: lost.set())
            for channel in list(self._channels):
                await driver.add_listener(
                    channel,
                    lambda _connection, _pid, channel, payload: self._dispatch(channel, payload),
                )
            self._listen_driver = driver
            self._set_listening(True)
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTEN_PING_S)
                if not lost.is_set():
                    # A timeout raises out of here: the connection is then given up as lost.
                    await asyncio.wait_for(driver.execute("SELECT 1"), LISTEN_PING_TIMEOUT_S)
        finally:
            self._listen_driver = None
            self._set_listening(False)
            driver.terminate()

    async def dispose(self) -> None:
        for task in self._listeners:
            # Python 3.11's wait_for hands back the awaited result when the cancellation comes
            # just as it completes (a ping answered), and the cancellation is lost: awaiting the
            # task once could then wait for ever. Cancelled again until it ends.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=LISTEN_PING_S)
        self._listeners = []
        self._channels = {}
        self._state_handlers = []
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._write_engine = None
        self._sessionmaker = None
        self._read_sessionmaker = None
        self._snapshot_sessionmaker = None

    @contextlib.contextmanager
    def sessions_on(self, connection: AsyncConnection) -> Iterator[None]:
        """For the block, every session (read, write, snapshot) runs on `connection`, each inside
        a SAVEPOINT of the transaction the caller holds there.

        What the sessions commit is only released into that transaction, so the caller can undo
        all of it with one rollback: how the tests isolate themselves without emptying tables.
        """
        write, read, snapshot = (
            self.sessionmaker,
            self.read_sessionmaker,
            self.snapshot_sessionmaker,
        )

        def on_connection(maker: async_sessionmaker[Any]) -> async_sessionmaker[Any]:
            # The app's own session class and options; only where they run differs.
            options = {**maker.kw, "bind": connection, "join_transaction_mode": "create_savepoint"}
            return async_sessionmaker(class_=maker.class_, **options)

        self._sessionmaker, self._read_sessionmaker = on_connection(write), on_connection(read)
        self._snapshot_sessionmaker = on_connection(snapshot)
        try:
            yield
        finally:
            self._sessionmaker, self._read_sessionmaker = write, read
            self._snapshot_sessionmaker = snapshot


db = Database()


async def get_read_session() -> AsyncIterator[AsyncReadSession]:
    """The request's read session; its connection (if it took one) goes back at the end."""
    session = db.read_sessionmaker()
    try:
        yield session
    finally:
        # A session that ran no statement holds no connection: nothing to hand back. One that
        # did holds no transaction either (autocommit), so closing it sends nothing and never
        # suspends: a cancellation cannot interrupt it, and the connection is back in the pool
        # before any other request runs (a shielded close task, as __aexit__ makes, would keep
        # it out for a trip through the event loop; see docs/adr/0004).
        if session.in_transaction():
            await session.close()


# The same, outside FastAPI's dependencies (a caller the cache does not know: api.deps).
read_session = contextlib.asynccontextmanager(get_read_session)


async def get_write_session() -> AsyncIterator[AsyncWriteSession]:
    """The request's write session: committed on success (before the response, with the
    dependency's function scope), rolled back on any error."""
    async with db.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
