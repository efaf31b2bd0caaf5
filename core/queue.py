"""The one adapter between the application and PgQueuer (docs/adr/0008-file-de-taches.md).

PgQueuer moves jobs: its table, `FOR UPDATE SKIP LOCKED` claims, heartbeats, LISTEN/NOTIFY,
retries with a delay. The application's `jobs` table says what the Jobs API shows. Enqueueing
hands PgQueuer the asyncpg connection of the caller's write session, so that the job exists if
and only if the caller's transaction commits. The worker runs PgQueuer's QueueManager on a
connection of its own, and each job's handler in a write session of the application's pool.
"""

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
from pgqueuer.adapters.persistence.qb import (
    QueryBuilderEnvironment,
    QueryQueueBuilder,
    QuerySchedulerBuilder,
)
from pgqueuer.adapters.persistence.queries import Queries
from pgqueuer.core.executors import AbstractEntrypointExecutor, EntrypointExecutorParameters
from pgqueuer.core.qm import QueueManager
from pgqueuer.domain import errors as pgq_errors
from pgqueuer.domain import models as pgq_models
from pgqueuer.domain import types as pgq_types
from pydantic import BaseModel, ValidationError
from sqlalchemy import CursorResult, Table, Update, bindparam, delete, func, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import Database
from core.jobs import JobContext, JobRegistry, JobType, PermanentJobError
from models.job import Job, JobStatus

logger = logging.getLogger("tpm_crm.jobs")

# Built once: each builds its settings from the environment (PGQUEUER_* variables).
_QBE = QueryBuilderEnvironment()
_QBQ = QueryQueueBuilder()
_QBS = QuerySchedulerBuilder()

LAST_ERROR_MAX_CHARS = 4000
# A new job wakes the workers at once (PgQueuer's NOTIFY on INSERT); a retry only moves a row's
# `execute_after` (an UPDATE, which PgQueuer's trigger does not announce), so an idle worker
# also looks again this often: a retry or a job handed back at shutdown waits at most this long
# past its time.
IDLE_POLL_S = 1.0
RECONNECT_DELAY_S = (0.5, 1.0, 2.0, 5.0)


def _queries(driver_connection: Any) -> Queries:
    return Queries(AsyncpgDriver(driver_connection), qbe=_QBE, qbq=_QBQ, qbs=_QBS)


async def _session_queries(session: AsyncSession) -> Queries:
    """PgQueuer on the session's own connection, inside its open transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    # SQLAlchemy sends BEGIN with the session's first statement: before it, a statement sent
    # straight to the driver would commit on its own, and a worker could pick the job before
    # the rest of the transaction exists, or after it rolled back.
    if not driver.is_in_transaction():
        raise RuntimeError("a job is enqueued after a write in the same transaction")
    return _queries(driver)


async def push(session: AsyncSession, job_type: str, job_id: int) -> None:
    """Put job `job_id` on PgQueuer's queue, in the session's transaction (which must already
    have written, e.g. the `jobs` row)."""
    queries = await _session_queries(session)
    await queries.enqueue(job_type, str(job_id).encode())


async def withdraw(session: AsyncSession, job_id: int) -> None:
    """Take a job's queued rows off PgQueuer's queue, in the session's transaction (a cancel):
    found by their payload, the job's id (the queue holds live jobs only)."""
    queries = await _session_queries(session)
    rows = await session.execute(
        text(
            "SELECT id FROM pgqueuer WHERE status = 'queued' "
            "AND payload = convert_to(:job_id, 'UTF8')"
        ),
        {"job_id": str(job_id)},
    )
    queue_ids = [pgq_types.JobId(queue_id) for queue_id in rows.scalars()]
    if queue_ids:
        await queries.mark_job_as_cancelled(queue_ids)


async def purge_queue_log(session: AsyncSession, days: int) -> int:
    """Delete PgQueuer's own log rows older than `days`, once folded into its statistics."""
    result = await session.execute(
        text(
            "DELETE FROM pgqueuer_log WHERE aggregated "
            "AND created < now() - make_interval(days => :days)"
        ),
        {"days": days},
    )
    return _rows_affected(result)


def _rows_affected(result: object) -> int:
    """The row count of a DELETE run through a session (typed as a plain Result)."""
    return int(getattr(result, "rowcount", 0) or 0)


def error_summary(exc: BaseException) -> str:
    """The error and where it was raised: type, message, file:line of each frame; no locals."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"
        for frame in reversed(frames[-5:])
    )
    summary = f"{type(exc).__name__}: {exc}"
    if where:
        summary += f"\n  at {where}"
    return summary[:LAST_ERROR_MAX_CHARS]


class _Superseded(Exception):
    """A later attempt took this job over (the heartbeat timed out): this one must not commit."""


_JOBS: Table = Job.__table__  # type: ignore[assignment]
# The worker's statements, built once (each job runs several; building costs more than running).
_START = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.status.in_((JobStatus.queued, JobStatus.running)),
    )
    .values(
        status=JobStatus.running,
        attempts=_JOBS.c.attempts + 1,
        started_at=func.coalesce(_JOBS.c.started_at, func.now()),
    )
    .returning(_JOBS.c.attempts, _JOBS.c.max_attempts, _JOBS.c.payload, _JOBS.c.created_by)
)


def _this_attempt() -> Update:
    """An update of the job's row while this attempt is still the current one."""
    return update(_JOBS).where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.status == JobStatus.running,
        _JOBS.c.attempts == bindparam("attempt"),
    )


_SUCCEED = _this_attempt().values(
    status=JobStatus.succeeded, progress=100, last_error=None, finished_at=func.now()
)
_FAIL = _this_attempt().values(
    status=JobStatus.failed, last_error=bindparam("error"), finished_at=func.now()
)
_RETRY_LATER = _this_attempt().values(status=JobStatus.queued, last_error=bindparam("error"))
_GIVE_BACK = _this_attempt().values(status=JobStatus.queued, attempts=_JOBS.c.attempts - 1)
# A pick past the last attempt is not an attempt: the count stays at max_attempts.
_GIVE_UP = _this_attempt().values(
    status=JobStatus.failed,
    attempts=_JOBS.c.attempts - 1,
    last_error="The worker stopped during the last attempt",
    finished_at=func.now(),
)
_PROGRESS = _this_attempt().values(progress=bindparam("percent"))


class JobRunner:
    """Runs one pick of one job: the `jobs` row's bookkeeping around the handler."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self.stopping = False
        self._running: set[asyncio.Future[None]] = set()

    def stop_now(self) -> None:
        """The grace is over: cancel the handlers still running (their attempts are given back)."""
        self.stopping = True
        for task in list(self._running):
            task.cancel()

    async def _execute(self, stmt: Any, params: dict[str, Any]) -> CursorResult[Any]:
        """One statement, committed on its own (the engine's connections are in autocommit)."""
        async with self.db.engine.connect() as connection:
            return await connection.execute(stmt, params)

    async def _finish(self, job_id: int, attempt: int, error: str) -> None:
        await self._execute(_FAIL, {"job_id": job_id, "attempt": attempt, "error": error})

    async def _handle(self, spec: JobType[Any], payload: BaseModel, row: Any, job_id: int) -> None:
        """The handler and the succeeded mark, in one transaction."""
        mine = {"job_id": job_id, "attempt": row.attempts}

        async def report(percent: int) -> None:
            await self._execute(_PROGRESS, {**mine, "percent": percent})

        async with self.db.sessionmaker() as session:
            context = JobContext(
                job_id=job_id,
                attempt=row.attempts,
                created_by=row.created_by,
                session=session,
                report_progress=report,
            )
            await spec.handler(payload, context)
            connection = await session.connection()
            if (await connection.execute(_SUCCEED, mine)).rowcount != 1:
                await session.rollback()
                raise _Superseded()
            await session.commit()

    async def _until_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work`; False if the worker's grace ran out first (the work is then cancelled)."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.stopping and task.cancelled() and not (current and current.cancelling()):
                return False
            raise
        finally:
            self._running.discard(task)
        return True

    async def run(self, spec: JobType[Any], job_id: int) -> None:
        row = (await self._execute(_START, {"job_id": job_id})).first()
        if row is None:
            return  # finished (a retry of a pick whose effect committed), cancelled or purged
        attempt = row.attempts
        if attempt > row.max_attempts:
            # Earlier attempts were picked and never finished: their worker died each time.
            await self._execute(_GIVE_UP, {"job_id": job_id, "attempt": attempt})
            return
        try:
            payload = spec.payload_model.model_validate(row.payload)
        except ValidationError as exc:
            logger.warning("Job %s (%s) has an invalid payload: failed", job_id, spec.name)
            await self._finish(job_id, attempt, f"Invalid payload: {exc}")
            return
        try:
            finished = await self._until_stopped(self._handle(spec, payload, row, job_id))
        except _Superseded:
            return
        except Exception as exc:
            await self._failed(spec, job_id, attempt, row.max_attempts, exc)
            return
        if not finished:
            # Shutdown, not failure: the attempt is given back and the job queued again now.
            await self._execute(_GIVE_BACK, {"job_id": job_id, "attempt": attempt})
            raise pgq_errors.RetryRequested(delay=timedelta(0), reason="worker stopping")

    async def _failed(
        self, spec: JobType[Any], job_id: int, attempt: int, max_attempts: int, exc: Exception
    ) -> None:
        summary = error_summary(exc)
        if isinstance(exc, PermanentJobError) or attempt >= max_attempts:
            logger.warning(
                "Job %s (%s) failed after %d attempt(s): %s",
                job_id,
                spec.name,
                attempt,
                summary.splitlines()[0],
            )
            await self._finish(job_id, attempt, summary)
            return
        delay = spec.retry.delay(attempt)
        logger.info(
            "Job %s (%s) attempt %d failed, retried in %.1f s: %s",
            job_id,
            spec.name,
            attempt,
            delay.total_seconds(),
            summary.splitlines()[0],
        )
        await self._execute(_RETRY_LATER, {"job_id": job_id, "attempt": attempt, "error": summary})
        raise pgq_errors.RetryRequested(delay=delay, reason=summary.splitlines()[0])


class _Executor(AbstractEntrypointExecutor):
    """PgQueuer's executor for one job type: the queue row's payload is the `jobs` id."""

    def __init__(self, spec: JobType[Any], runner: JobRunner) -> None:
        super().__init__(
            EntrypointExecutorParameters(
                concurrency_limit=0, func=self.execute, on_failure="delete"
            )
        )
        self.spec = spec
        self.runner = runner

    async def execute(self, job: pgq_models.Job, context: pgq_models.Context) -> None:
        if job.payload is None or not job.payload.isdigit():
            logger.error("Queue row %s (%s) names no job: dropped", job.id, job.entrypoint)
            return
        job_id = int(job.payload)
        try:
            await self.runner.run(self.spec, job_id)
        except pgq_errors.RetryRequested:
            raise
        except Exception as exc:
            # The bookkeeping itself failed (a statement timed out, the database went away).
            # PgQueuer would drop the row (on_failure="delete") and lose the job: queue it again.
            delay = RECONNECT_DELAY_S[min(job.attempts, len(RECONNECT_DELAY_S) - 1)]
            reason = error_summary(exc).splitlines()[0]
            logger.warning("Job %s (%s) queued again: %s", job_id, self.spec.name, reason)
            raise pgq_errors.RetryRequested(timedelta(seconds=delay), reason) from exc


class Worker:
    """Runs the registered job types until `stop` is set, reconnecting after any loss.

    On `stop`: no new job is taken; running ones get `grace_s` to finish, then are cancelled
    and handed back to the queue (their attempt not counted).
    """

    def __init__(
        self,
        database: Database,
        registry: JobRegistry,
        *,
        concurrency: int,
        heartbeat_timeout_s: float,
        grace_s: float,
    ) -> None:
        self.db = database
        self.registry = registry
        self.concurrency = concurrency
        self.heartbeat_timeout = timedelta(seconds=heartbeat_timeout_s)
        self.grace_s = grace_s
        self.runner = JobRunner(database)
        self._manager: QueueManager | None = None
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self._on_stop(stop))
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._run_once(stop)
                    failures = 0
                except Exception as exc:
                    delay = RECONNECT_DELAY_S[min(failures, len(RECONNECT_DELAY_S) - 1)]
                    failures += 1
                    logger.warning(
                        "Worker lost its queue connection (%r), again in %s s", exc, delay
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            watcher.cancel()

    async def _on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self._manager is not None:
            self._manager.shutdown.set()
        await asyncio.sleep(self.grace_s)
        self.runner.stop_now()

    def _manager_for(self, driver_connection: Any) -> QueueManager:
        manager = QueueManager(_queries(driver_connection))
        for spec in self.registry:
            manager.register_executor(spec.name, _Executor(spec, self.runner))
        return manager

    async def _run_once(self, stop: asyncio.Event) -> None:
        pooled = await self.db.engine.raw_connection()
        driver: Any = pooled.driver_connection
        pooled.detach()  # PgQueuer's for good (LISTEN, claims, heartbeats); never pooled again
        try:
            manager = self._manager_for(driver)
            self._manager = manager
            if stop.is_set():
                return
            batch = max(1, self.concurrency // 2)
            self.ready.set()
            await manager.run(
                dequeue_timeout=timedelta(seconds=IDLE_POLL_S),
                batch_size=batch,
                max_concurrent_tasks=max(self.concurrency, 2 * batch),
                heartbeat_timeout=self.heartbeat_timeout,
                shutdown_on_listener_failure=True,
            )
            if not stop.is_set():
                raise ConnectionError("the queue's listener stopped answering")
        finally:
            self.ready.clear()
            self._manager = None
            with contextlib.suppress(Exception):
                driver.terminate()


async def delete_finished_jobs(session: AsyncSession, days: int) -> int:
    """Delete jobs finished more than `days` ago (JOB_RETENTION_DAYS)."""
    result = await session.execute(
        delete(Job).where(
            Job.status.in_((JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)),
            Job.finished_at < func.now() - timedelta(days=days),
        )
    )
    return _rows_affected(result)
