"""Running the worker: the job queue and the scheduler side by side until told to stop."""

import asyncio
import contextlib
import logging

from core.config import Settings
from core.db import Database
from core.jobs import JobRegistry, job_types
from core.queue import Worker
from core.schedules import Clock, Scheduler, ScheduleRegistry, schedules
from worker import tasks

logger = logging.getLogger("tpm_crm.worker")

# Imported for its effect: the application's job types and schedules are registered.
APPLICATION_TASKS = tasks


async def run_worker(
    database: Database,
    settings: Settings,
    stop: asyncio.Event,
    *,
    grace_s: float | None = None,
    registry: JobRegistry = job_types,
    schedule_registry: ScheduleRegistry = schedules,
    clock: Clock | None = None,
) -> None:
    """Run jobs and schedules on `database` until `stop` is set, then drain (grace) and return."""
    queue_worker = Worker(
        database,
        registry,
        concurrency=settings.worker_concurrency,
        heartbeat_timeout_s=settings.job_heartbeat_timeout_seconds,
        grace_s=settings.worker_shutdown_grace_seconds if grace_s is None else grace_s,
    )
    scheduler = Scheduler(
        database, schedule_registry, registry, timezone=settings.timezone, clock=clock
    )
    logger.info(
        "Worker started: %d job type(s), %d schedule(s), concurrency %d",
        len(list(registry)),
        len(list(schedule_registry)),
        settings.worker_concurrency,
    )
    scheduling = asyncio.create_task(scheduler.run(stop))
    try:
        await queue_worker.run(stop)
    finally:
        scheduling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduling
    logger.info("Worker stopped")
