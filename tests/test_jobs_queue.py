"""The job queue (issue 14): enqueue in the caller's transaction, retries, permanent errors, an
effect that committed never completed twice, a real worker killed (SIGKILL) or stopped (SIGTERM)
mid-job, a database restart, PgQueuer's frozen schema, and the purge of finished jobs.

The job types are the "test.*" ones of tests/worker_process.py; a worker runs them in this
process, or as a real `python -m` process where signals matter."""

import asyncio
import importlib.util
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import pytest
from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
from pgqueuer.adapters.persistence.queries import Queries
from pgqueuer.adapters.persistence.schema_ddl import render_install
from pgqueuer.core.qm import QueueManager
from pgqueuer.domain.settings import DBSettings
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import PROJECT_ROOT, settings
from core.db import APPLICATION_NAME, Database, db
from core.jobs import RetryPolicy, UnknownJobTypeError, job_types
from core.queue import JobRunner, push
from models.job import Job, JobStatus
from services.jobs import JobService
from tests.conftest import connection_as
from tests.factories import execute, fetch, first_admin_id, scalar
from tests.worker_process import (
    SECRET_CANARY,
    EffectPayload,
    FlakyPayload,
    at_gate,
    effects,
    enqueue,
    finished,
    job_row,
    output_of,
    until,
    worker_in_process,
    worker_subprocess,
)
from worker import tasks

# How long the tests let a worker handle a signal, or take a job it should not: margins for a
# busy machine, not measurements.
SIGNAL_HANDLED_S = 1.5
WOULD_BE_PICKED_S = 2.0
EXIT_LIMIT_S = 20.0

QUEUE_ROWS_SQL = "SELECT count(*) FROM pgqueuer"


def new_marker() -> str:
    return f"job-effect-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def closed_gate(marker: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Holds the gated job of `marker` at its gate (tests/worker_process.py) until the yielded
    function is called, or the block ends."""
    async with connection_as("owner") as gate:
        await gate.execute(text("SELECT pg_advisory_lock(hashtext(:m))"), {"m": marker})
        await gate.commit()

        async def open_gate() -> None:
            await gate.execute(text("SELECT pg_advisory_unlock(hashtext(:m))"), {"m": marker})
            await gate.commit()

        yield open_gate


async def queue_row_gone(queue_id: int) -> bool:
    return not await fetch("SELECT 1 FROM pgqueuer WHERE id = :id", id=queue_id)


async def exit_code(process: subprocess.Popen[bytes], log: Path) -> int:
    try:
        return await asyncio.to_thread(process.wait, EXIT_LIMIT_S)
    except subprocess.TimeoutExpired:
        message = f"the worker still runs {EXIT_LIMIT_S} s later\n{output_of(log)}"
        raise AssertionError(message) from None


# Transactional enqueue


class AbandonedRequestError(Exception):
    """What makes the caller's transaction roll back."""


@pytest.mark.committing
async def test_a_job_exists_if_and_only_if_the_enqueuing_transaction_commits() -> None:
    with pytest.raises(AbandonedRequestError):
        async with db.sessionmaker() as session, session.begin():
            await JobService(session).enqueue("test.effect", EffectPayload(marker="undone"))
            # Written in this transaction, on its connection; invisible to any other.
            assert await session.scalar(text(QUEUE_ROWS_SQL)) == 1
            assert await scalar(QUEUE_ROWS_SQL) == 0
            raise AbandonedRequestError
    assert await scalar("SELECT count(*) FROM jobs") == 0
    assert await scalar(QUEUE_ROWS_SQL) == 0

    admin = await first_admin_id()
    job_id = await enqueue("test.effect", EffectPayload(marker="kept"), created_by=admin)

    [row] = await fetch(
        "SELECT j.id, j.type, j.status, j.attempts, j.max_attempts, j.payload, j.created_by, "
        "q.entrypoint, q.payload AS queue_payload, q.status AS queue_status "
        "FROM jobs j JOIN pgqueuer q ON q.payload = convert_to(j.id::text, 'UTF8')"
    )
    assert row.id == job_id
    assert (row.type, row.status, row.attempts, row.max_attempts) == ("test.effect", "queued", 0, 5)
    assert row.payload == {"marker": "kept", "gated": False}
    assert row.created_by == admin
    assert (row.entrypoint, row.queue_status) == ("test.effect", "queued")
    assert row.queue_payload == str(job_id).encode()


class OtherPayload(BaseModel):
    marker: str


async def test_enqueue_refuses_an_unknown_type_and_a_payload_of_another_model(
    session: AsyncSession,
) -> None:
    service = JobService(session)
    with pytest.raises(UnknownJobTypeError):
        await service.enqueue("test.unknown", EffectPayload(marker="x"))
    with pytest.raises(TypeError, match="EffectPayload"):
        await service.enqueue("test.effect", OtherPayload(marker="x"))
    assert await session.scalar(text("SELECT count(*) FROM jobs")) == 0


# Retries


def test_retry_delays_grow_exponentially_up_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, first_delay_s=10.0, max_delay_s=100.0)
    steps = {1: 10.0, 2: 20.0, 3: 40.0, 4: 80.0, 5: 100.0, 9: 100.0}
    for attempt, step in steps.items():
        draws = [policy.delay(attempt).total_seconds() for _ in range(1000)]
        assert all(step / 2 <= draw <= step for draw in draws), attempt
        # Spread over the whole half-step: jobs that failed together are retried apart.
        assert min(draws) < step * 0.55, attempt
        assert max(draws) > step * 0.95, attempt
        assert len(set(draws)) > 900, attempt


@pytest.mark.committing
async def test_a_job_failing_twice_then_succeeding_ends_succeeded_at_its_third_attempt() -> None:
    marker = new_marker()
    async with worker_in_process(db):
        job_id = await enqueue("test.flaky", FlakyPayload(marker=marker, failures=2))
        job = await finished(job_id)
    assert job.status == "succeeded", job.last_error
    assert (job.attempts, job.max_attempts, job.progress) == (3, 3, 100)
    assert job.last_error is None
    assert await effects(marker) == 1
    # Two retries went through PgQueuer (re-queued with a delay), then its row was done with.
    retried = await scalar(
        "SELECT count(*) FROM pgqueuer_log WHERE entrypoint = 'test.flaky' AND status = 'queued' "
        "AND traceback IS NOT NULL"
    )
    assert retried == 2
    assert await scalar(QUEUE_ROWS_SQL) == 0


@pytest.mark.committing
async def test_a_job_failing_at_every_attempt_is_kept_failed_with_its_error_and_no_secret() -> None:
    marker = new_marker()
    async with worker_in_process(db):
        job_id = await enqueue("test.flaky", FlakyPayload(marker=marker, failures=100))
        job = await finished(job_id)
    assert job.status == "failed"
    assert (job.attempts, job.max_attempts) == (3, 3)
    assert job.finished_at is not None
    message, _, where = job.last_error.partition("\n")
    assert message == f"FlakyJobError: attempt 3 of {marker} failed"
    assert "worker_process.py:" in where
    assert "in fail_then_write_effect" in where
    # The failing frame held the secret in two locals: neither reached the row.
    assert SECRET_CANARY not in job.last_error
    assert "_secret" not in job.last_error
    assert await effects(marker) == 0


# Permanent errors


@pytest.mark.committing
async def test_a_payload_the_handler_cannot_validate_fails_at_once() -> None:
    # enqueue() validates its payload: an older release's row, say, arrives through the queue.
    async with db.sessionmaker() as session, session.begin():
        job = Job(
            type="test.effect", status=JobStatus.queued, payload={"colour": 1}, max_attempts=5
        )
        session.add(job)
        await session.flush()
        await push(session, job.type, job.id)
    async with worker_in_process(db):
        done = await finished(job.id)
    assert (done.status, done.attempts) == ("failed", 1)
    assert done.last_error.startswith("Invalid payload: 1 validation error for EffectPayload")
    assert "marker\n  Field required" in done.last_error
    assert await scalar(QUEUE_ROWS_SQL) == 0


@pytest.mark.committing
async def test_a_permanent_error_fails_the_job_at_once() -> None:
    marker = new_marker()
    async with worker_in_process(db):
        job_id = await enqueue("test.permanent", EffectPayload(marker=marker))
        job = await finished(job_id)
    assert (job.status, job.attempts, job.max_attempts) == ("failed", 1, 3)
    assert job.last_error.startswith(f"PermanentJobError: {marker} cannot be processed\n  at ")


# An effect that committed is never completed again


@pytest.mark.committing
async def test_a_job_picked_again_after_its_effect_committed_is_not_run_again() -> None:
    marker = new_marker()
    async with worker_in_process(db, heartbeat_timeout_s=1):
        job_id = await enqueue("test.effect", EffectPayload(marker=marker))
        done = await finished(job_id)
        assert done.status == "succeeded"
        # PgQueuer deletes the finished queue row after the handler's commit, in its own time.
        first_queue_id = done.queue_id
        await until(lambda: queue_row_gone(first_queue_id), "the first queue row deleted")
        done = await job_row(job_id)
        # As if the worker had died between the handler's commit and PgQueuer's bookkeeping:
        # the queue row still picked by a dead worker, its heartbeat long stale.
        queue_id = await scalar(
            "INSERT INTO pgqueuer (priority, entrypoint, payload, status, queue_manager_id, "
            "heartbeat) VALUES (0, 'test.effect', :payload, 'picked', gen_random_uuid(), "
            "now() - interval '1 hour') RETURNING id",
            payload=str(job_id).encode(),
        )
        await until(lambda: queue_row_gone(queue_id), "the stale queue row taken again")
    assert await job_row(job_id) == done
    assert await effects(marker) == 1


@pytest.mark.committing
async def test_a_job_whose_worker_died_during_its_last_attempt_is_failed_not_run_again() -> None:
    marker = new_marker()
    job_id = await enqueue("test.effect", EffectPayload(marker=marker))
    # Its last attempt started on a worker that died: queue row picked, heartbeat long stale.
    await execute(
        "UPDATE jobs SET status = 'running', attempts = max_attempts WHERE id = :id", id=job_id
    )
    await execute(
        "UPDATE pgqueuer SET status = 'picked', queue_manager_id = gen_random_uuid(), "
        "heartbeat = now() - interval '1 hour' WHERE id = :id",
        id=(await job_row(job_id)).queue_id,
    )
    async with worker_in_process(db):
        job = await finished(job_id)
    assert (job.status, job.last_error) == ("failed", "The worker stopped during the last attempt")
    assert job.attempts == job.max_attempts
    assert await effects(marker) == 0


@pytest.mark.committing
async def test_an_attempt_superseded_while_it_ran_cannot_commit() -> None:
    marker = new_marker()
    async with closed_gate(marker) as open_gate, worker_in_process(db, heartbeat_timeout_s=30):
        job_id = await enqueue("test.effect", EffectPayload(marker=marker, gated=True))
        await at_gate(job_id)
        # Another worker took the job over meanwhile (this one's heartbeat had timed out).
        await execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = :id", id=job_id)
        await open_gate()
        queue_id = (await job_row(job_id)).queue_id
        await until(lambda: queue_row_gone(queue_id), "the superseded attempt over")
    job = await job_row(job_id)
    assert (job.status, job.attempts, job.finished_at) == ("running", 2, None)
    assert await effects(marker) == 0


# A real worker killed or stopped


@pytest.mark.committing
async def test_a_job_whose_worker_was_killed_runs_again_on_another_worker_once(
    database_url: str, tmp_path: Path
) -> None:
    marker, log = new_marker(), tmp_path / "worker.log"
    async with closed_gate(marker) as open_gate:
        job_id = await enqueue("test.effect", EffectPayload(marker=marker, gated=True))
        with worker_subprocess(database_url, log) as first:
            await at_gate(job_id, log)
            first.send_signal(signal.SIGKILL)
            assert await exit_code(first, log) == -signal.SIGKILL
        killed = await job_row(job_id)
        assert (killed.status, killed.attempts) == ("running", 1)
        await open_gate()
        with worker_subprocess(database_url, log) as second:
            job = await finished(job_id, log)
            second.send_signal(signal.SIGTERM)
            assert await exit_code(second, log) == 0
    assert job.status == "succeeded", output_of(log)
    assert job.attempts == 2
    # The killed attempt's effect was rolled back with its connection; the next one committed.
    assert await effects(marker) == 1


@pytest.mark.committing
async def test_sigterm_lets_the_running_job_finish_and_takes_no_new_one(
    database_url: str, tmp_path: Path
) -> None:
    running, waiting, log = new_marker(), new_marker(), tmp_path / "worker.log"
    async with closed_gate(running) as open_gate:
        first = await enqueue("test.effect", EffectPayload(marker=running, gated=True))
        with worker_subprocess(database_url, log, WORKER_SHUTDOWN_GRACE_SECONDS="10") as worker:
            await at_gate(first, log)
            worker.send_signal(signal.SIGTERM)
            await asyncio.sleep(SIGNAL_HANDLED_S)
            # A worker still taking jobs would take this one now (it has a free slot).
            second = await enqueue("test.effect", EffectPayload(marker=waiting))
            await asyncio.sleep(WOULD_BE_PICKED_S)
            await open_gate()
            assert await exit_code(worker, log) == 0
    done = await job_row(first)
    assert (done.status, done.attempts) == ("succeeded", 1), output_of(log)
    assert await effects(running) == 1
    left = await job_row(second)
    assert (left.status, left.attempts, left.started_at) == ("queued", 0, None)
    assert await scalar("SELECT status::text FROM pgqueuer WHERE id = :id", id=left.queue_id) == (
        "queued"
    )
    assert await effects(waiting) == 0


@pytest.mark.committing
async def test_sigterm_hands_a_job_outlasting_the_grace_back_to_the_queue(
    database_url: str, tmp_path: Path
) -> None:
    marker, log = new_marker(), tmp_path / "worker.log"
    async with closed_gate(marker) as open_gate:
        job_id = await enqueue("test.effect", EffectPayload(marker=marker, gated=True))
        with worker_subprocess(database_url, log, WORKER_SHUTDOWN_GRACE_SECONDS="1") as worker:
            await at_gate(job_id, log)
            worker.send_signal(signal.SIGTERM)
            # The job would wait at its gate for a minute: the grace cuts it short.
            assert await exit_code(worker, log) == 0
        handed_back = await job_row(job_id)
        assert (handed_back.status, handed_back.attempts) == ("queued", 0), output_of(log)
        queue_status = await scalar(
            "SELECT status::text FROM pgqueuer WHERE id = :id", id=handed_back.queue_id
        )
        assert queue_status == "queued"
        assert await effects(marker) == 0
        await open_gate()
        with worker_subprocess(database_url, log) as second:
            job = await finished(job_id, log)
            second.send_signal(signal.SIGTERM)
            assert await exit_code(second, log) == 0
    assert (job.status, job.attempts) == ("succeeded", 1), output_of(log)
    assert await effects(marker) == 1


# A database restart


async def terminate_app_connections() -> int:
    """Kill the server end of every connection of the application, as a restart does."""
    async with connection_as("superuser") as conn:
        # With a timeout, pg_terminate_backend waits until the backend has exited.
        killed = await conn.scalar(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) "
                "FROM pg_stat_activity "
                "WHERE application_name LIKE :app || '%' AND datname = current_database()"
            ),
            {"app": APPLICATION_NAME},
        )
    # Let the event loop read the closed sockets, as a server would between requests.
    for _ in range(3):
        await asyncio.sleep(0.2)
    return int(killed or 0)


@pytest.mark.committing
async def test_the_worker_reconnects_after_a_database_restart_and_loses_no_job() -> None:
    running, later = new_marker(), new_marker()
    async with worker_in_process(db, heartbeat_timeout_s=2):
        async with closed_gate(running) as open_gate:
            first = await enqueue("test.effect", EffectPayload(marker=running, gated=True))
            await at_gate(first)
            # The queue's own connection and the running job's, at least.
            assert await terminate_app_connections() >= 2
            await open_gate()
        second = await enqueue("test.effect", EffectPayload(marker=later))
        first_done, second_done = await finished(first), await finished(second)

        async def queue_emptied() -> bool:
            # PgQueuer deletes a finished job's row in a buffered flush of its own: one that
            # met the terminated connection is retried by the reconnected worker.
            return bool(await scalar(QUEUE_ROWS_SQL) == 0)

        await until(queue_emptied, "the queue's rows deleted")
    assert (first_done.status, first_done.attempts) == ("succeeded", 2), first_done.last_error
    assert (second_done.status, second_done.attempts) == ("succeeded", 1)
    assert (await effects(running), await effects(later)) == (1, 1)


@pytest.mark.committing
async def test_a_job_whose_bookkeeping_the_database_refuses_is_queued_again_not_lost(
    database_url: str,
) -> None:
    marker = new_marker()
    job_id = await enqueue("test.effect", EffectPayload(marker=marker))
    queue_id = (await job_row(job_id)).queue_id
    # A worker whose statements give up quickly, as on a database too busy to answer.
    impatient = Database()
    impatient.configure(
        settings.model_copy(update={"database_statement_timeout_ms": 200}), database_url
    )

    async def first_pick_over() -> bool:
        # PgQueuer logs a pick's end: done, failed, or queued again (with its reason).
        ended = await fetch(
            "SELECT 1 FROM pgqueuer_log WHERE job_id = :id AND (status <> 'queued' "
            "OR traceback IS NOT NULL) AND status <> 'picked'",
            id=queue_id,
        )
        return bool(ended)

    try:
        async with connection_as("owner") as locker:
            # The job's row is locked: marking it started times out.
            await locker.execute(text("SELECT FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
            async with worker_in_process(impatient):
                await until(first_pick_over, "the first pick over")
                await locker.rollback()
                job = await finished(job_id)
    finally:
        await impatient.dispose()
    assert (job.status, job.attempts) == ("succeeded", 1), job.last_error
    assert await effects(marker) == 1


# PgQueuer's schema, frozen in migration 0011


def migration_0011() -> ModuleType:
    path = PROJECT_ROOT / "alembic" / "versions" / "0011_job_queue.py"
    spec = importlib.util.spec_from_file_location("migration_0011", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_0011_holds_pgqueuers_schema_as_the_pinned_release_renders_it() -> None:
    provenance, _, schema = render_install(DBSettings()).partition("\n")
    assert provenance.startswith("-- pgqueuer ")
    assert migration_0011().PGQUEUER_SCHEMA.strip() == schema.strip()


async def test_pgqueuer_finds_its_structure_in_the_migrated_database(session: AsyncSession) -> None:
    connection = await (await session.connection()).get_raw_connection()
    await QueueManager(Queries(AsyncpgDriver(connection.driver_connection))).verify_structure()

    # The check has teeth: without an index PgQueuer needs, it refuses to start.
    async with connection_as("owner") as owner:
        raw = await owner.get_raw_connection()
        manager = QueueManager(Queries(AsyncpgDriver(raw.driver_connection)))
        await owner.execute(text("DROP INDEX pgqueuer_picked_slot_idx"))
        with pytest.raises(RuntimeError, match="pgqueuer_picked_slot_idx"):
            await manager.verify_structure()
        await owner.rollback()


# Purge


# The runner commits its bookkeeping on connections of its own, as a worker does.
@pytest.mark.committing
async def test_the_purge_job_deletes_jobs_finished_before_the_retention_and_keeps_the_rest(
    session: AsyncSession,
) -> None:
    days = settings.job_retention_days
    rows = {
        "old succeeded": ("succeeded", days + 1, True),
        "old failed": ("failed", days + 15, True),
        "old cancelled": ("cancelled", days + 1, True),
        "recent succeeded": ("succeeded", days - 1, False),
        "recent failed": ("failed", 1, False),
        "old queued": ("queued", None, False),
        "old running": ("running", None, False),
    }
    ids = {}
    for name, (status, finished_days_ago, _) in rows.items():
        ids[name] = await scalar(
            "INSERT INTO jobs (type, status, payload, max_attempts, created_at, finished_at) "
            "VALUES ('test.effect', :status, '{}', 1, now() - make_interval(days => :old), "
            "now() - make_interval(days => :days)) RETURNING id",
            status=status,
            old=days + 60,
            days=finished_days_ago,
        )
    await execute(
        "INSERT INTO pgqueuer_log (job_id, status, priority, entrypoint, aggregated, created) "
        "VALUES (1, 'successful', 0, 'a', true, now() - make_interval(days => :old)), "
        "(2, 'successful', 0, 'b', false, now() - make_interval(days => :old)), "
        "(3, 'successful', 0, 'c', true, now() - make_interval(days => :recent))",
        old=days + 1,
        recent=days - 1,
    )
    purge = await JobService(session).enqueue("jobs.purge", tasks.PurgePayload())
    await session.commit()

    await JobRunner(db).run(job_types.get("jobs.purge"), purge)

    assert (await job_row(purge)).status == "succeeded", await job_row(purge)
    kept = {row.id for row in await fetch("SELECT id FROM jobs")}
    assert kept == {ids[name] for name, (*_, purged) in rows.items() if not purged} | {purge}
    log = await fetch("SELECT entrypoint FROM pgqueuer_log WHERE entrypoint IN ('a', 'b', 'c')")
    assert sorted(row.entrypoint for row in log) == ["b", "c"]
