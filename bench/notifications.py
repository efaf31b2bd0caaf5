"""The notification stream's figures (issue 18), on the bench cluster in a database of its own.

    .venv/bin/python -m bench.notifications [--streams 500] [--notifications 200]

One API process (uvicorn, as bench/run.py serves it) holds STREAMS open streams, ten per user;
notifications are then committed one at a time, by plain SQL on a connection of the bench's
own (as another API process or the worker would), each for a random user. Delivery latency:
from the commit's return to the event read on each of that user's streams; p50 / p99 over all
of them (target: p99 < 1 s). The streams' heartbeat is left at its default.
"""

import argparse
import asyncio
import os
import random
import subprocess
import time
import uuid
from dataclasses import dataclass

import asyncpg
import httpx
from pydantic import SecretStr

from bench.cluster import Cluster, start_cluster
from bench.run import UVICORN, nearest_rank
from core.config import PROJECT_ROOT, settings
from core.migrations import upgrade_to_head
from core.security import create_access_token, hash_password

DATABASE = "bench_notifications"
STREAMS_PER_USER = 10
SECRET = "bench-secret-key-not-used-anywhere-else-0123456789"  # noqa: S105
PORT = 8765
RESULTS = PROJECT_ROOT / "bench" / "results" / "notifications.md"


@dataclass
class Stream:
    user_id: int
    # Event id -> when it was read (perf_counter).
    received: dict[int, float]


async def hold_stream(
    http: httpx.AsyncClient, token: str, stream: Stream, ready: asyncio.Event
) -> None:
    """Read one stream until cancelled, noting when each notification event arrives."""
    headers = {"Authorization": f"Bearer {token}"}
    async with http.stream(
        "GET", f"http://127.0.0.1:{PORT}/api/v1/notifications/stream", headers=headers
    ) as response:
        response.raise_for_status()
        event_id: int | None = None
        async for line in response.aiter_lines():
            if line.startswith(": open"):
                ready.set()
            elif line.startswith("id: "):
                event_id = int(line[4:])
            elif line == "" and event_id is not None:
                stream.received[event_id] = time.perf_counter()
                event_id = None


async def seed_users(conn: asyncpg.Connection, users: int) -> list[tuple[int, uuid.UUID]]:
    await conn.execute("TRUNCATE users RESTART IDENTITY CASCADE")
    digest = hash_password("bench-password-123")
    rows = await conn.fetch(
        "INSERT INTO users (email, full_name, hashed_password, role) "
        "SELECT 'bench' || g || '@crm.test', 'Bench ' || g, $1, 'user' "
        "FROM generate_series(1, $2) AS g RETURNING id, security_stamp",
        digest,
        users,
    )
    return [(row["id"], row["security_stamp"]) for row in rows]


def api_process(cluster: Cluster) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": cluster.url(DATABASE),
        "SECRET_KEY": SECRET,
        "RUN_WORKER": "false",
        "LOG_FORMAT": "text",
        "NOTIFICATION_STREAM_MAX_SECONDS": "3600",
    }
    return subprocess.Popen([*UVICORN, "--port", str(PORT), "main:app"], cwd=PROJECT_ROOT, env=env)


async def wait_healthy() -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                if (await http.get(f"http://127.0.0.1:{PORT}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the API did not start")


async def measure(cluster: Cluster, streams: int, notifications: int) -> str:
    conn = await asyncpg.connect(cluster.dsn(DATABASE))
    users = await seed_users(conn, max(1, streams // STREAMS_PER_USER))
    server = api_process(cluster)
    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_healthy()
        signing = settings.model_copy(update={"secret_key": SecretStr(SECRET)})
        limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), limits=limits) as http:
            opened: list[Stream] = []
            for n in range(streams):
                user_id, stamp = users[n % len(users)]
                token, _ = create_access_token(user_id, stamp, uuid.uuid4(), signing)
                stream, ready = Stream(user_id, {}), asyncio.Event()
                tasks.append(asyncio.create_task(hold_stream(http, token, stream, ready)))
                await asyncio.wait_for(ready.wait(), 30)
                opened.append(stream)
            rng = random.Random(18)
            sent: dict[int, tuple[int, float]] = {}
            for _ in range(notifications):
                user_id = rng.choice(users)[0]
                notification_id = await conn.fetchval(
                    "INSERT INTO notifications (user_id, kind, title) "
                    "VALUES ($1, 'report_ready', 'Rapport prêt') RETURNING id",
                    user_id,
                )
                sent[notification_id] = (user_id, time.perf_counter())
                await asyncio.sleep(0.02)
            await asyncio.sleep(2)
        latencies, lost = [], 0
        for notification_id, (user_id, committed) in sent.items():
            for stream in opened:
                if stream.user_id != user_id:
                    continue
                if notification_id in stream.received:
                    latencies.append((stream.received[notification_id] - committed) * 1000)
                else:
                    lost += 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.terminate()
        server.wait(30)
        await conn.close()
    if not latencies:
        raise SystemExit("no notification was delivered")
    return "\n".join(
        [
            "## Notification stream",
            "",
            f"One API process, {streams} open streams ({STREAMS_PER_USER} per user), "
            f"{notifications} notifications committed one at a time.",
            "",
            "| Measure | Value | Target |",
            "|---|---:|---:|",
            f"| deliveries | {len(latencies):,} (lost: {lost}) | none lost |",
            f"| delivery p50 | {nearest_rank(latencies, 0.5):.1f} ms | |",
            f"| delivery p99 | {nearest_rank(latencies, 0.99):.1f} ms | < 1000 ms |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--notifications", type=int, default=200)
    args = parser.parse_args()
    cluster = start_cluster()
    try:
        cluster.ensure_database(DATABASE)
        upgrade_to_head(cluster.url(DATABASE))
        report = asyncio.run(measure(cluster, args.streams, args.notifications))
    finally:
        cluster.stop()
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
