"""The job queue's figures (issue 14), measured on the bench cluster in a database of its own.

    .venv/bin/python -m bench.jobs          (also run by `make bench`)

- throughput: N no-op jobs queued, then one worker process (`python -m bench.jobs --worker`,
  WORKER_CONCURRENCY as in production) drains them; jobs/s = N / (last finish - first start);
- enqueue-to-start latency with an idle queue: one job at a time, from its commit to its
  `started_at` (LISTEN/NOTIFY wakes the worker; no polling), p50 / p95;
- what enqueueing adds to a request: the median time of a write transaction (one interaction
  inserted, committed) with and without one job enqueued in it.
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from datetime import date

from pydantic import BaseModel
from sqlalchemy import text

from bench.cluster import Cluster, start_cluster
from bench.run import nearest_rank, write_latest
from core.config import PROJECT_ROOT, settings
from core.db import Database
from core.jobs import JobContext, RetryPolicy, job_types
from core.migrations import upgrade_to_head

DATABASE = "bench_jobs"
THROUGHPUT_JOBS = 5_000
LATENCY_SAMPLES = 200
OVERHEAD_SAMPLES = 400
# A second throughput figure with more jobs in flight per worker, to show how it scales.
WIDE_CONCURRENCY = 16
RESULTS = PROJECT_ROOT / "bench" / "results" / "jobs.md"


class NoOp(BaseModel):
    n: int = 0


@job_types.register("bench.noop", NoOp, retry=RetryPolicy(max_attempts=1))
async def noop(_: NoOp, __: JobContext) -> None:
    """Nothing: what is measured is the queue's own cost per job."""


async def enqueue_many(database: Database, count: int) -> None:
    from services.jobs import JobService

    async with database.sessionmaker() as session, session.begin():
        service = JobService(session)
        for n in range(count):
            await service.enqueue("bench.noop", NoOp(n=n))


async def wait_all_finished(database: Database, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        async with database.read_sessionmaker() as session:
            left = await session.scalar(
                text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
            )
        if left == 0:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the worker did not drain the queue in time")


async def throughput(database: Database, cluster: Cluster, concurrency: int) -> float:
    """Queued first, then one worker drains them: its throughput, not the enqueuer's."""
    async with database.sessionmaker() as session, session.begin():
        await session.execute(text("TRUNCATE jobs, pgqueuer, pgqueuer_log CASCADE"))
    await enqueue_many(database, THROUGHPUT_JOBS)
    worker = worker_process(cluster, concurrency)
    try:
        await wait_all_finished(database, 600)
    finally:
        worker.terminate()
        worker.wait(30)
    async with database.read_sessionmaker() as reader:
        first, last = (
            await reader.execute(text("SELECT min(started_at), max(finished_at) FROM jobs"))
        ).one()
    return float(THROUGHPUT_JOBS / (last - first).total_seconds())


async def start_latency(database: Database) -> list[float]:
    from services.jobs import JobService

    samples = []
    for n in range(LATENCY_SAMPLES):
        async with database.sessionmaker() as session:
            job_id = await JobService(session).enqueue("bench.noop", NoOp(n=n))
            await session.commit()
            committed = await session.scalar(text("SELECT clock_timestamp()"))
        while True:
            async with database.read_sessionmaker() as session:
                started = await session.scalar(
                    text("SELECT started_at FROM jobs WHERE id = :id"), {"id": job_id}
                )
            if started is not None:
                break
            await asyncio.sleep(0.002)
        samples.append(max(0.0, (started - committed).total_seconds() * 1000))
        await asyncio.sleep(0.05)  # idle queue again
    return samples


async def request_overhead(database: Database) -> tuple[float, float]:
    """Median ms of a write transaction without and with an enqueue, interleaved."""
    from services.jobs import JobService

    async with database.sessionmaker() as session, session.begin():
        investor_id = await session.scalar(
            text("INSERT INTO investors (name) VALUES ('Bench jobs') RETURNING id")
        )
    plain: list[float] = []
    enqueuing: list[float] = []
    insert = text(
        "INSERT INTO interactions (investor_id, type, date, subject) "
        "VALUES (:investor, 'appel', :day, 'bench')"
    )
    for n in range(OVERHEAD_SAMPLES):
        with_job = n % 2 == 1
        started = time.perf_counter()
        async with database.sessionmaker() as session, session.begin():
            await session.execute(insert, {"investor": investor_id, "day": date(2026, 1, 5)})
            if with_job:
                await JobService(session).enqueue("bench.noop", NoOp(n=n))
        elapsed = (time.perf_counter() - started) * 1000
        (enqueuing if with_job else plain).append(elapsed)
    return statistics.median(plain), statistics.median(enqueuing)


def worker_process(cluster: Cluster, concurrency: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WORKER_CONCURRENCY": str(concurrency),
        "DATABASE_URL": cluster.url(DATABASE),
        "SECRET_KEY": "bench-secret-key-not-used-anywhere-else-0123456789",
        "LOG_FORMAT": "text",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bench.jobs", "--worker"], cwd=PROJECT_ROOT, env=env
    )


async def measure(cluster: Cluster) -> str:
    url = cluster.url(DATABASE)
    settings.database_url = url
    database = Database()
    database.configure(settings)
    try:
        async with database.sessionmaker() as session, session.begin():
            await session.execute(text("TRUNCATE jobs, pgqueuer, pgqueuer_log CASCADE"))
        worker = worker_process(cluster, settings.worker_concurrency)
        try:
            await asyncio.sleep(3)  # started and listening
            latencies = await start_latency(database)
        finally:
            worker.terminate()
            worker.wait(30)
        rates = {
            concurrency: await throughput(database, cluster, concurrency)
            for concurrency in (settings.worker_concurrency, WIDE_CONCURRENCY)
        }
        plain, enqueuing = await request_overhead(database)
    finally:
        await database.dispose()
    return "\n".join(
        [
            "## Job queue",
            "",
            "One worker process, no-op job; WORKER_CONCURRENCY at its default, then wider "
            "(PgQueuer claims half of it per batch).",
            "",
            "| Measure | Value | Target |",
            "|---|---:|---:|",
            *[
                f"| throughput ({THROUGHPUT_JOBS:,} jobs), WORKER_CONCURRENCY={concurrency} "
                f"| {rate:,.0f} jobs/s | >= 500 jobs/s |"
                for concurrency, rate in rates.items()
            ],
            f"| enqueue-to-start p50, idle queue | {nearest_rank(latencies, 0.5):.1f} ms | |",
            f"| enqueue-to-start p95, idle queue | {nearest_rank(latencies, 0.95):.1f} ms "
            "| < 100 ms |",
            f"| write transaction, median | {plain:.2f} ms | |",
            f"| same with one job enqueued, median | {enqueuing:.2f} ms "
            f"(+{enqueuing - plain:.2f} ms) | <= +2 ms |",
            "",
        ]
    )


def run_worker_process() -> None:
    from worker.__main__ import main

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker_process()
        return
    cluster = start_cluster()
    try:
        cluster.ensure_database(DATABASE)
        upgrade_to_head(cluster.url(DATABASE))
        report = asyncio.run(measure(cluster))
    finally:
        cluster.stop()
    RESULTS.write_text(report)
    print(report)
    write_latest()


if __name__ == "__main__":
    main()
