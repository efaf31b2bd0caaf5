"""Job types for the queue's tests, the helpers that enqueue, read and wait for them, and the two
ways tests run them: a `Worker` in the test's own process, or `python -m tests.worker_process`,
the real worker (`python -m worker`, signals included) with these job types registered as well.

The types are named "test.*" and registered in the application's registry, at import: by the
test modules (to enqueue them) and by the subprocess (to run them). The effect of a job is an
investor named after its marker, written in the handler's transaction: no table exists for tests.

A gated job holds its effect, uncommitted, until the test opens the gate: an advisory lock on
`hashtext(marker)` that the test holds on a connection of its own. Investors keep counters
(docs/adr/0001): the effects of two running jobs wait for each other, so a test holds at most
one job at its gate while another job runs.
"""

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import Row, text

from core.config import PROJECT_ROOT
from core.db import Database, db
from core.jobs import JobContext, PermanentJobError, RetryPolicy, job_types
from core.queue import Worker
from models.job import FINISHED_STATUSES, JobStatus
from services.jobs import JobService

# Retries come back within a fraction of a second: the tests wait for attempts, not backoff.
QUICK_RETRY = RetryPolicy(max_attempts=3, first_delay_s=0.05, max_delay_s=0.2)
# Enough attempts for a job to survive a worker killed under it, or a database restart.
PATIENT_RETRY = RetryPolicy(max_attempts=5, first_delay_s=0.05, max_delay_s=0.2)
# The progress a gated job shows while it waits: its effect is written, not committed.
AT_GATE = 50
GATE_LIMIT_S = 60.0
GATE_POLL_S = 0.05
# Held in a local variable of a failing handler: it must never reach `jobs.last_error`.
SECRET_CANARY = "canary-7f3e9a-not-for-last-error"

EFFECTS_SQL = "SELECT count(*) FROM investors WHERE name = :marker"
JOB_SQL = (
    "SELECT id, type, status, attempts, max_attempts, progress, last_error, "
    "created_by, created_at, started_at, finished_at, "
    # The job's row on PgQueuer's queue, whose payload is the job's id.
    "(SELECT max(q.id) FROM pgqueuer q WHERE q.payload = convert_to(jobs.id::text, 'UTF8')) "
    "AS queue_id FROM jobs WHERE id = :id"
)
# Waiting for an outcome, not timing it: generous on a busy machine.
WAIT_LIMIT_S = 30.0
POLL_S = 0.05


class EffectPayload(BaseModel):
    marker: str = Field(min_length=1, max_length=100)
    gated: bool = False


class FlakyPayload(BaseModel):
    marker: str = Field(min_length=1, max_length=100)
    # The first `failures` attempts raise; the next one writes the effect.
    failures: int = Field(ge=0, le=100)


class FlakyJobError(RuntimeError):
    """A test handler's planned failure."""


class GateNeverOpenedError(RuntimeError):
    """The test never opened the gate: the job fails instead of hanging on."""


async def _write_effect(marker: str, context: JobContext) -> None:
    await context.session.execute(
        text("INSERT INTO investors (name) VALUES (:name)"), {"name": marker}
    )


async def _pass_gate(marker: str, context: JobContext) -> None:
    await context.set_progress(AT_GATE)
    deadline = asyncio.get_running_loop().time() + GATE_LIMIT_S
    gate = text("SELECT pg_try_advisory_xact_lock(hashtext(:marker))")
    while not (await context.session.execute(gate, {"marker": marker})).scalar_one():
        if asyncio.get_running_loop().time() > deadline:
            raise GateNeverOpenedError(marker)
        await asyncio.sleep(GATE_POLL_S)


@job_types.register("test.effect", EffectPayload, retry=PATIENT_RETRY)
async def write_effect(payload: EffectPayload, context: JobContext) -> None:
    """The effect, then (if gated) the wait for the test, in the transaction that marks it done."""
    await _write_effect(payload.marker, context)
    if payload.gated:
        await _pass_gate(payload.marker, context)


@job_types.register("test.flaky", FlakyPayload, retry=QUICK_RETRY)
async def fail_then_write_effect(payload: FlakyPayload, context: JobContext) -> None:
    # Locals of the failing frame, as a handler holds a credential to call a service.
    _credential = SecretStr(SECRET_CANARY)
    _secret = _credential.get_secret_value()
    if context.attempt <= payload.failures:
        raise FlakyJobError(f"attempt {context.attempt} of {payload.marker} failed")
    await _write_effect(payload.marker, context)


@job_types.register("test.permanent", EffectPayload, retry=QUICK_RETRY)
async def refuse(payload: EffectPayload, context: JobContext) -> None:
    raise PermanentJobError(f"{payload.marker} cannot be processed")


async def enqueue(job_type: str, payload: BaseModel, *, created_by: int | None = None) -> int:
    """Queue a job as a request does (JobService, committed with its transaction); its id."""
    async with db.sessionmaker() as session, session.begin():
        return await JobService(session).enqueue(job_type, payload, created_by=created_by)


async def job_row(job_id: int) -> Row[Any]:
    """The job's `jobs` row as it is now."""
    async with db.sessionmaker() as session, session.begin():
        return (await session.execute(text(JOB_SQL), {"id": job_id})).one()


async def effects(marker: str) -> int:
    """How many times a job's effect committed."""
    async with db.sessionmaker() as session, session.begin():
        return int((await session.execute(text(EFFECTS_SQL), {"marker": marker})).scalar_one())


def output_of(log: Path | None) -> str:
    """What a worker subprocess wrote, for a failure's message."""
    return log.read_text(errors="replace") if log and log.exists() else ""


async def until(check: Callable[[], Awaitable[bool]], what: str, log: Path | None = None) -> None:
    """Poll `check` until it holds; past WAIT_LIMIT_S fail, with the worker's log if any."""
    deadline = asyncio.get_running_loop().time() + WAIT_LIMIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not after {WAIT_LIMIT_S} s\n{output_of(log)}")
        await asyncio.sleep(POLL_S)


async def finished(job_id: int, log: Path | None = None) -> Row[Any]:
    """The job's row once it has succeeded, failed or been cancelled."""

    async def done() -> bool:
        return (await job_row(job_id)).status in FINISHED_STATUSES

    await until(done, f"job {job_id} finished", log)
    return await job_row(job_id)


async def at_gate(job_id: int, log: Path | None = None) -> None:
    """Once the gated job waits at its gate (its effect written, not committed)."""

    async def waiting() -> bool:
        row = await job_row(job_id)
        return bool(row.status == JobStatus.running and row.progress == AT_GATE)

    await until(waiting, f"job {job_id} at its gate", log)


@contextlib.asynccontextmanager
async def worker_in_process(
    database: Database, *, heartbeat_timeout_s: float = 2.0, grace_s: float = 1.0
) -> AsyncIterator[Worker]:
    """A worker on `database` in this event loop, stopped (and awaited) when the block ends."""
    stop = asyncio.Event()
    worker = Worker(
        database,
        job_types,
        concurrency=2,
        heartbeat_timeout_s=heartbeat_timeout_s,
        grace_s=grace_s,
    )
    running = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)


@contextlib.contextmanager
def worker_subprocess(
    database_url: str, log: Path, *, module: str = "tests.worker_process", **settings: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m <module>` (a worker launcher: this one by default) on the database, its output
    appended to `log`; killed when the block ends if the test has not stopped it. `settings` are
    environment variables."""
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WORKER_CONCURRENCY": "2",
        "JOB_HEARTBEAT_TIMEOUT_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


if __name__ == "__main__":
    from worker.__main__ import main

    asyncio.run(main())
