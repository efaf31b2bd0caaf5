"""Cron-like schedules, declared in code, each slot run once whatever the number of workers.

A schedule names a job type and a cron expression in TIMEZONE's wall-clock time. Every worker
evaluates every schedule; the slot is claimed by inserting its row in `schedule_runs` (primary
key: schedule and slot) in the transaction that enqueues the job, so only one worker's insert
wins. Slots are wall-clock times: 02:30 is one slot on the day clocks go back (02:30 happens
twice) and on the day they go forward (02:30 never happens; it runs at 03:30, the instant
zoneinfo maps it to). After downtime only the latest missed slot runs.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import BaseModel
from sqlalchemy import exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from core.db import Database
from core.jobs import JobRegistry
from models.job import ScheduleRun

logger = logging.getLogger("tpm_crm.schedules")

# A worker looks again at least this often, so a schedule added by a deployment, a clock
# change or a lost wake-up costs at most this delay.
MAX_SLEEP_S = 60.0


class Clock(Protocol):
    """What the scheduler knows of time: injectable, so tests move it without sleeping."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    cron: str
    job_type: str
    payload: Callable[[], BaseModel] = field(compare=False)

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.cron):
            raise ValueError(f"schedule {self.name!r}: invalid cron expression {self.cron!r}")


class ScheduleRegistry:
    def __init__(self) -> None:
        self._schedules: dict[str, Schedule] = {}

    def add(self, schedule: Schedule) -> Schedule:
        if schedule.name in self._schedules:
            raise ValueError(f"schedule {schedule.name!r} is already declared")
        self._schedules[schedule.name] = schedule
        return schedule

    def __iter__(self) -> Iterator[Schedule]:
        return iter(list(self._schedules.values()))


# Every schedule of the application, declared at import of the module that owns it
# (worker/tasks.py imports them all).
schedules = ScheduleRegistry()


def slot_instant(slot: datetime, tz: ZoneInfo) -> datetime:
    """When a wall-clock slot happens: the first of two on a repeated hour, and the offset
    before the change for a skipped one (02:30 on the spring day is 03:30 summer time)."""
    return slot.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _clock_change(now: datetime, tz: ZoneInfo) -> timedelta:
    """How far wall clocks in `tz` moved forward over the day before `now` (back: negative)."""
    offset = now.astimezone(tz).utcoffset() or timedelta(0)
    return offset - ((now - timedelta(days=1)).astimezone(tz).utcoffset() or timedelta(0))


def latest_due_slot(cron: str, now: datetime, tz: ZoneInfo) -> datetime:
    """The latest wall-clock slot (naive, in `tz`) whose instant is not after `now`."""
    local = now.astimezone(tz).replace(tzinfo=None)
    # Just after clocks went back (the second 02:15), slots up to the hour they repeat (02:30)
    # are past already: the walk starts as far ahead as the clocks moved back.
    back = max(-_clock_change(now, tz), timedelta(0))
    # croniter walks naive wall-clock times: each local time is one slot, whatever DST does.
    slots = croniter(cron, local + back + timedelta(microseconds=1))
    while True:
        slot: datetime = slots.get_prev(datetime)
        if slot_instant(slot, tz) <= now:
            return slot


def next_slot_instant(cron: str, now: datetime, tz: ZoneInfo) -> datetime:
    """The instant of the first slot after `now`."""
    local = now.astimezone(tz).replace(tzinfo=None)
    # Just after clocks went forward, a skipped slot happens at a wall-clock time later than
    # itself (02:30 at 03:30): the walk starts as far back as the clocks jumped.
    slots = croniter(cron, local - max(_clock_change(now, tz), timedelta(0)))
    while True:
        slot: datetime = slots.get_next(datetime)
        instant = slot_instant(slot, tz)
        if instant > now:
            return instant


class Scheduler:
    """Claims each schedule's due slot and enqueues its job, in one transaction per slot."""

    def __init__(
        self,
        database: Database,
        registry: ScheduleRegistry,
        job_registry: JobRegistry,
        *,
        timezone: str,
        clock: Clock | None = None,
    ) -> None:
        self.db = database
        self.registry = registry
        self.job_registry = job_registry
        self.tz = ZoneInfo(timezone)
        self.clock = clock or SystemClock()
        for schedule in registry:
            job_registry.get(schedule.job_type)  # fails at start for an unknown job type

    async def tick(self) -> list[int]:
        """Enqueue the job of every schedule whose latest due slot nobody claimed yet.

        A schedule seen for the first time starts from now: its current slot is recorded
        without running, so that a deployment does not fire every schedule at once.
        """
        from services.jobs import JobService

        now = self.clock.now()
        enqueued: list[int] = []
        for schedule in self.registry:
            slot = latest_due_slot(schedule.cron, now, self.tz)
            async with self.db.sessionmaker() as session, session.begin():
                known = await session.scalar(
                    select(exists().where(ScheduleRun.schedule == schedule.name))
                )
                claim = (
                    pg_insert(ScheduleRun)
                    .values(schedule=schedule.name, slot=slot)
                    .on_conflict_do_nothing()
                    .returning(ScheduleRun.slot)
                )
                if (await session.execute(claim)).first() is None or not known:
                    continue
                job_id = await JobService(session).enqueue(schedule.job_type, schedule.payload())
                await session.execute(
                    update(ScheduleRun)
                    .where(ScheduleRun.schedule == schedule.name, ScheduleRun.slot == slot)
                    .values(job_id=job_id)
                )
                enqueued.append(job_id)
                logger.info("Schedule %s: slot %s queued as job %s", schedule.name, slot, job_id)
        return enqueued

    def seconds_to_next(self) -> float:
        now = self.clock.now()
        waits = [
            (next_slot_instant(s.cron, now, self.tz) - now).total_seconds() for s in self.registry
        ]
        return max(0.0, min([MAX_SLEEP_S, *waits]))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:
                # The database is away: the next tick claims what this one could not.
                logger.warning("Scheduler tick failed (%r), again shortly", exc)
            sleeper = asyncio.ensure_future(self.clock.sleep(self.seconds_to_next()))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, stopper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
