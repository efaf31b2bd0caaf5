"""Tasks and notifications (issue 18), on the bench cluster in a database of its own.

    .venv/bin/python -m bench.notifications [--streams 500] [--notifications 200]
        [--tasks 1000000] [--requests 200]                  (also run by `make bench`)

- Reads, through one API process (uvicorn, as bench/run.py serves it), sequentially, each user
  in turn: `GET /tasks?assignee_id=me&due=today` with TASKS tasks over 50 users (six years of
  due dates around today; target p95 < 20 ms), `GET /notifications/unread-count` with 2,000
  notifications per user, a tenth unread (target < 5 ms), and, for information, the unfiltered
  `GET /tasks` (its total counts the whole table); then the morning digest's one query for
  every user (services/digest.py), timed on a connection of the bench's own.
- The stream: the API process holds STREAMS open streams, ten per user; notifications are then
  committed one at a time, by plain SQL on a connection of the bench's own (as another API
  process or the worker would), each for a random user. Delivery latency: from the commit's
  return to the event read on each of that user's streams; p50 / p99 over all of them (target:
  p99 < 1 s). The streams' heartbeat is left at its default.
"""

import argparse
import asyncio
import os
import random
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import date

import asyncpg
import httpx
from pydantic import SecretStr
from sqlalchemy.dialects import postgresql

from bench.cluster import Cluster, start_cluster
from bench.run import UVICORN, nearest_rank, write_latest
from core.config import PROJECT_ROOT, settings
from core.migrations import upgrade_to_head
from core.security import create_access_token, hash_password
from services.digest import due_tasks_statement

DATABASE = "bench_notifications"
STREAMS_PER_USER = 10
SECRET = "bench-secret-key-not-used-anywhere-else-0123456789"  # noqa: S105
PORT = 8765
RESULTS = PROJECT_ROOT / "bench" / "results" / "notifications.md"
TASK_USERS = 50
# Due dates from three years before today to three years after it: a user's day holds a few.
TASK_DAYS = 6 * 365
NOTIFICATIONS_PER_USER = 2_000
UNREAD_EVERY = 10
WARMUP_REQUESTS = 20
DIGEST_RUNS = 5


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


async def seed_tasks(conn: asyncpg.Connection, user_ids: list[int], tasks: int) -> None:
    """TASKS tasks, each given to one of the users in turn, a quarter of them done."""
    await conn.execute(
        "INSERT INTO tasks (title, due_date, priority, status, assignee_id, created_by, "
        "completed_at) "
        "SELECT 'Relancer ' || n, current_date - $3 / 2 + ((n::bigint * 7919) % $3)::int, "
        "(ARRAY['basse', 'normale', 'haute', 'urgente'])[1 + n % 4], "
        "CASE WHEN n % 4 = 0 THEN 'terminee' ELSE 'a_faire' END, "
        "($1::int[])[1 + n % cardinality($1::int[])], ($1::int[])[1 + n % cardinality($1::int[])], "
        "CASE WHEN n % 4 = 0 THEN now() END "
        "FROM generate_series(1, $2) AS n",
        user_ids,
        tasks,
        TASK_DAYS,
    )


async def seed_notifications(conn: asyncpg.Connection, user_ids: list[int]) -> None:
    """NOTIFICATIONS_PER_USER per user, one in UNREAD_EVERY unread."""
    await conn.execute(
        "INSERT INTO notifications (user_id, kind, title, created_at, read_at) "
        "SELECT u, 'task_due', 'Rappel ' || n, now() - n * interval '1 minute', "
        "CASE WHEN n % $3 <> 0 THEN now() END "
        "FROM unnest($1::int[]) AS u, generate_series(1, $2) AS n",
        user_ids,
        NOTIFICATIONS_PER_USER,
        UNREAD_EVERY,
    )


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


async def read_latencies(
    http: httpx.AsyncClient, tokens: list[str], path: str, requests: int
) -> list[float]:
    """ms per GET of `path`, one request at a time, each user in turn, after a warm-up."""
    samples = []
    for n in range(WARMUP_REQUESTS + requests):
        headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
        started = time.perf_counter()
        response = await http.get(f"http://127.0.0.1:{PORT}{path}", headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code} {response.text}")
        if n >= WARMUP_REQUESTS:
            samples.append(elapsed)
    return samples


async def digest_query_ms(conn: asyncpg.Connection) -> list[float]:
    """ms per run of the morning digest's query for every user (the one the job runs)."""
    sql = str(
        due_tasks_statement(date.today()).compile(
            dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
            compile_kwargs={"literal_binds": True},
        )
    )
    samples = []
    for _ in range(DIGEST_RUNS):
        started = time.perf_counter()
        await conn.fetch(sql)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def latency_rows(label: str, samples: list[float], target: str) -> list[str]:
    return [
        f"| {label} p50 | {nearest_rank(samples, 0.5):.1f} ms | |",
        f"| {label} p95 | {nearest_rank(samples, 0.95):.1f} ms | {target} |",
    ]


async def measure(
    cluster: Cluster, streams: int, notifications: int, task_count: int, requests: int
) -> str:
    conn = await asyncpg.connect(cluster.dsn(DATABASE))
    users = await seed_users(conn, max(TASK_USERS, streams // STREAMS_PER_USER))
    user_ids = [user_id for user_id, _ in users]
    await seed_tasks(conn, user_ids, task_count)
    await seed_notifications(conn, user_ids)
    await conn.execute("ANALYZE")
    stream_users = users[: max(1, streams // STREAMS_PER_USER)]
    server = api_process(cluster)
    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_healthy()
        signing = settings.model_copy(update={"secret_key": SecretStr(SECRET)})
        tokens = [
            create_access_token(user_id, stamp, uuid.uuid4(), signing)[0]
            for user_id, stamp in users[:TASK_USERS]
        ]
        async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as http:
            today = await read_latencies(
                http, tokens, "/api/v1/tasks?assignee_id=me&due=today", requests
            )
            unread = await read_latencies(
                http, tokens, "/api/v1/notifications/unread-count", requests
            )
            unfiltered = await read_latencies(http, tokens, "/api/v1/tasks", requests)
        digest = await digest_query_ms(conn)
        limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), limits=limits) as http:
            opened: list[Stream] = []
            for n in range(streams):
                user_id, stamp = stream_users[n % len(stream_users)]
                token, _ = create_access_token(user_id, stamp, uuid.uuid4(), signing)
                stream, ready = Stream(user_id, {}), asyncio.Event()
                tasks.append(asyncio.create_task(hold_stream(http, token, stream, ready)))
                await asyncio.wait_for(ready.wait(), 30)
                opened.append(stream)
            rng = random.Random(18)
            sent: dict[int, tuple[int, float]] = {}
            for _ in range(notifications):
                user_id = rng.choice(stream_users)[0]
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
            "## Tasks and notifications",
            "",
            f"{task_count:,} tasks over {TASK_USERS} users, {NOTIFICATIONS_PER_USER:,} "
            f"notifications per user; {requests} sequential requests each, through one API "
            "process.",
            "",
            "| Measure | Value | Target |",
            "|---|---:|---:|",
            *latency_rows("GET /tasks?assignee_id=me&due=today", today, "< 20 ms"),
            *latency_rows("GET /notifications/unread-count", unread, "< 5 ms"),
            *latency_rows("GET /tasks (no filter, total of the whole table)", unfiltered, ""),
            f"| morning digest query, every user (max of {DIGEST_RUNS}) | {max(digest):.1f} ms | |",
            "",
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
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    cluster = start_cluster()
    try:
        cluster.ensure_database(DATABASE)
        upgrade_to_head(cluster.url(DATABASE))
        report = asyncio.run(
            measure(cluster, args.streams, args.notifications, args.tasks, args.requests)
        )
    finally:
        cluster.stop()
    RESULTS.write_text(report)
    print(report)
    write_latest()


if __name__ == "__main__":
    main()
