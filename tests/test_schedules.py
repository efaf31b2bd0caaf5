"""Schedules: each wall-clock slot runs once (across daylight-saving changes and whatever the
number of schedulers), only the latest missed slot after downtime, and time that the tests move
through an injected clock instead of sleeping."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.config import settings
from core.db import Database, db
from core.jobs import UnknownJobTypeError, job_types
from core.schedules import (
    Schedule,
    Scheduler,
    ScheduleRegistry,
    latest_due_slot,
    next_slot_instant,
)
from tests.factories import fetch
from worker.tasks import PurgePayload

PARIS = ZoneInfo("Europe/Paris")
DAILY_0230 = "30 2 * * *"
# A job type that exists in the application: the scheduler only enqueues it here, never runs it.
JOB_TYPE = "jobs.purge"


class FakeClock:
    """A clock that stands still until the test moves it.

    sleep() records when the scheduler asked to wake up, then returns once the test has moved
    the clock to that instant or past it.
    """

    def __init__(self, now: datetime) -> None:
        self.current = now
        self.wake_ups: asyncio.Queue[datetime] = asyncio.Queue()
        self._moved = asyncio.Condition()

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        wake_up = self.current + timedelta(seconds=seconds)
        self.wake_ups.put_nowait(wake_up)
        async with self._moved:
            await self._moved.wait_for(lambda: self.current >= wake_up)

    async def move_to(self, instant: datetime) -> None:
        async with self._moved:
            self.current = instant
            self._moved.notify_all()


def registry_of(*schedules: Schedule) -> ScheduleRegistry:
    registry = ScheduleRegistry()
    for schedule in schedules:
        registry.add(schedule)
    return registry


def scheduler(clock: FakeClock, *schedules: Schedule, database: Database = db) -> Scheduler:
    return Scheduler(
        database,
        registry_of(*schedules),
        job_types,
        timezone="Europe/Paris",
        clock=clock,
    )


def daily(name: str = "test.daily") -> Schedule:
    return Schedule(name, DAILY_0230, JOB_TYPE, PurgePayload)


async def claimed_slots(name: str) -> list[tuple[datetime, int | None]]:
    rows = await fetch(
        "SELECT slot, job_id FROM schedule_runs WHERE schedule = :name ORDER BY slot", name=name
    )
    return [(row.slot, row.job_id) for row in rows]


def paris_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=PARIS)


def utc(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def every_five_minutes(start: datetime, end: datetime) -> Iterator[datetime]:
    instant = start
    while instant < end:
        yield instant
        instant += timedelta(minutes=5)


# 2026-03-29: at 02:00 CET (01:00 UTC) clocks go to 03:00 CEST, so 02:30 never happens.
# 2026-10-25: at 03:00 CEST (01:00 UTC) clocks go back to 02:00 CET, so 02:30 happens twice.


@pytest.mark.parametrize(
    ("now", "slot"),
    [
        # Spring: the skipped 02:30 is due at 03:30 summer time (01:30 UTC), not before.
        (utc(2026, 3, 29, 0, 59), datetime(2026, 3, 28, 2, 30)),
        (utc(2026, 3, 29, 1, 0), datetime(2026, 3, 28, 2, 30)),
        (utc(2026, 3, 29, 1, 29, 59), datetime(2026, 3, 28, 2, 30)),
        (utc(2026, 3, 29, 1, 30), datetime(2026, 3, 29, 2, 30)),
        (utc(2026, 3, 29, 22, 0), datetime(2026, 3, 29, 2, 30)),
        # Autumn: the first 02:30 (00:30 UTC) is the slot; the second one is the same slot.
        (utc(2026, 10, 25, 0, 29), datetime(2026, 10, 24, 2, 30)),
        (utc(2026, 10, 25, 0, 30), datetime(2026, 10, 25, 2, 30)),
        (utc(2026, 10, 25, 1, 15), datetime(2026, 10, 25, 2, 30)),
        (utc(2026, 10, 25, 1, 30), datetime(2026, 10, 25, 2, 30)),
        (utc(2026, 10, 25, 1, 45), datetime(2026, 10, 25, 2, 30)),
        (utc(2026, 10, 26, 1, 29), datetime(2026, 10, 25, 2, 30)),
        (utc(2026, 10, 26, 1, 30), datetime(2026, 10, 26, 2, 30)),
    ],
)
def test_latest_due_slot_around_daylight_saving_changes(now: datetime, slot: datetime) -> None:
    assert latest_due_slot(DAILY_0230, now, PARIS) == slot


@pytest.mark.parametrize(
    ("now", "instant"),
    [
        (utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 1, 30)),
        # Already summer time on the wall clock (03:00 to 03:29), the skipped slot still to come.
        (utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30)),
        (utc(2026, 3, 29, 1, 15), utc(2026, 3, 29, 1, 30)),
        (utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)),
        (utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30)),
        # During the repeated hour, the second 02:30 is not another slot.
        (utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),
        (utc(2026, 10, 25, 1, 15), utc(2026, 10, 26, 1, 30)),
        (utc(2026, 10, 25, 1, 30), utc(2026, 10, 26, 1, 30)),
    ],
)
def test_next_slot_instant_around_daylight_saving_changes(now: datetime, instant: datetime) -> None:
    assert next_slot_instant(DAILY_0230, now, PARIS) == instant


@pytest.mark.parametrize(
    ("change_day", "slot_instant"),
    [
        (date(2026, 3, 29), utc(2026, 3, 29, 1, 30)),  # 03:30 summer time
        (date(2026, 10, 25), utc(2026, 10, 25, 0, 30)),  # the first 02:30, summer time
    ],
    ids=["spring-forward", "fall-back"],
)
async def test_a_daily_0230_schedule_runs_once_on_a_daylight_saving_day(
    change_day: date, slot_instant: datetime
) -> None:
    """Ticks every five minutes through the day, from its local midnight to the next one."""
    start = paris_midnight(change_day).astimezone(UTC)
    end = paris_midnight(change_day + timedelta(days=1)).astimezone(UTC)
    clock = FakeClock(start)
    schedule = daily()
    ticking = scheduler(clock, schedule)
    runs: list[datetime] = []
    for instant in every_five_minutes(start, end):
        await clock.move_to(instant)
        runs += [instant] * len(await ticking.tick())

    assert runs == [slot_instant]
    (job_id,) = (job.id for job in await fetch("SELECT id FROM jobs"))
    day_before = change_day - timedelta(days=1)
    assert await claimed_slots(schedule.name) == [
        (datetime(day_before.year, day_before.month, day_before.day, 2, 30), None),  # first sight
        (datetime(change_day.year, change_day.month, change_day.day, 2, 30), job_id),
    ]


async def test_first_sight_records_the_current_slot_and_downtime_catches_up_once() -> None:
    clock = FakeClock(utc(2026, 5, 4, 12, 0))
    schedule = daily()
    ticking = scheduler(clock, schedule)

    assert await ticking.tick() == []
    assert await ticking.tick() == []
    assert await claimed_slots(schedule.name) == [(datetime(2026, 5, 4, 2, 30), None)]

    # Three days down: the slots of the 5th, 6th and 7th were missed; the latest alone runs.
    await clock.move_to(utc(2026, 5, 7, 15, 0))
    (job_id,) = await ticking.tick()
    assert await ticking.tick() == []
    assert await claimed_slots(schedule.name) == [
        (datetime(2026, 5, 4, 2, 30), None),
        (datetime(2026, 5, 7, 2, 30), job_id),
    ]
    (job,) = await fetch("SELECT type, status FROM jobs")
    assert (job.type, job.status) == (JOB_TYPE, "queued")


async def test_back_during_the_repeated_hour_catches_up_that_days_slot_only() -> None:
    clock = FakeClock(utc(2026, 10, 23, 12, 0))
    schedule = daily()
    ticking = scheduler(clock, schedule)
    assert await ticking.tick() == []

    # Down until 02:15 winter time, the second one: the day's 02:30 (00:30 UTC) is past.
    await clock.move_to(utc(2026, 10, 25, 1, 15))
    (job_id,) = await ticking.tick()
    for later in (utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 1, 45)):
        await clock.move_to(later)
        assert await ticking.tick() == []
    assert await claimed_slots(schedule.name) == [
        (datetime(2026, 10, 23, 2, 30), None),
        (datetime(2026, 10, 25, 2, 30), job_id),
    ]


@pytest.fixture
async def second_database(database_url: str) -> AsyncIterator[Database]:
    """A database object of its own: another engine, another pool, other connections."""
    other = Database()
    other.configure(settings, database_url)
    try:
        yield other
    finally:
        await other.dispose()


@pytest.mark.committing
async def test_two_schedulers_on_two_connections_run_each_slot_once(
    second_database: Database,
) -> None:
    minutely = [Schedule(f"test.minutely.{n}", "* * * * *", JOB_TYPE, PurgePayload) for n in (1, 2)]
    clock = FakeClock(utc(2026, 5, 4, 12, 0, 30))
    first = scheduler(clock, *minutely)
    second = scheduler(clock, *minutely, database=second_database)

    slots = 8
    enqueued: list[int] = []
    for minute in range(slots + 1):
        await clock.move_to(utc(2026, 5, 4, 12, minute, 30))
        for _ in range(2):  # a second look at the same instant finds the slot taken
            mine, theirs = await asyncio.gather(first.tick(), second.tick())
            enqueued += mine + theirs

    # Minute 0 is the first sight (recorded, not run); every later minute runs once a schedule.
    assert len(enqueued) == len(set(enqueued)) == slots * len(minutely)
    for schedule in minutely:
        claims = await claimed_slots(schedule.name)
        assert [slot for slot, _ in claims] == [
            datetime(2026, 5, 4, 14, minute) for minute in range(slots + 1)
        ]
        assert claims[0][1] is None
        assert all(job_id is not None for _, job_id in claims[1:])
    jobs = await fetch("SELECT id FROM jobs ORDER BY id")
    assert sorted(enqueued) == [job.id for job in jobs]


async def test_run_sleeps_until_the_next_slot_then_enqueues_and_stops_when_told() -> None:
    clock = FakeClock(utc(2026, 5, 4, 12, 0, 20))
    schedule = Schedule("test.minutely", "* * * * *", JOB_TYPE, PurgePayload)
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler(clock, schedule).run(stop))
    try:
        # First sight at 14:00:20 Paris time, then asleep until the next minute.
        assert await asyncio.wait_for(clock.wake_ups.get(), 10) == utc(2026, 5, 4, 12, 1)
        assert await claimed_slots(schedule.name) == [(datetime(2026, 5, 4, 14, 0), None)]

        await clock.move_to(utc(2026, 5, 4, 12, 1))
        assert await asyncio.wait_for(clock.wake_ups.get(), 10) == utc(2026, 5, 4, 12, 2)
        claims = await claimed_slots(schedule.name)
        assert [slot for slot, _ in claims] == [
            datetime(2026, 5, 4, 14, 0),
            datetime(2026, 5, 4, 14, 1),
        ]
        assert claims[1][1] is not None
        assert await fetch("SELECT id FROM jobs") == [(claims[1][1],)]

        stop.set()
        await asyncio.wait_for(running, 10)  # while asleep until 12:02, the clock standing still
    finally:
        running.cancel()


@pytest.mark.parametrize("cron", ["61 2 * * *", "30 2 * *", "every day", "", "30 25 * * *"])
def test_an_invalid_cron_expression_is_refused_at_declaration(cron: str) -> None:
    with pytest.raises(ValueError, match="invalid cron expression"):
        Schedule("test.invalid", cron, JOB_TYPE, PurgePayload)


def test_a_schedule_of_an_unknown_job_type_is_refused_at_start() -> None:
    unknown = Schedule("test.unknown", DAILY_0230, "no.such.job", PurgePayload)
    with pytest.raises(UnknownJobTypeError):
        scheduler(FakeClock(utc(2026, 5, 4, 12, 0)), unknown)


def test_a_schedule_name_is_declared_once() -> None:
    registry = registry_of(daily())
    with pytest.raises(ValueError, match="already declared"):
        registry.add(daily())
