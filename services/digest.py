"""The morning round, at 08:00 Europe/Paris every day: the `task_due` and `task_overdue`
notifications, then, on business days only, one digest email per user with tasks overdue or
due today (docs/taches-relances.md, docs/adr/0018-jours-feries.md)."""

import functools
import logging
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import holidays
from pydantic import BaseModel, ValidationError
from sqlalchemy import Select, delete, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core import clock
from core.email import OutgoingEmail
from core.jobs import JobContext, RetryPolicy, job_types
from core.schedules import Schedule, schedules
from models.investor import Investor
from models.notification import DigestDelivery
from models.task import OPEN_STATUSES, Task
from models.user import User
from services.digest_email import Digest, DigestTask, digest_email
from services.emails import send_later
from services.jobs import JobService
from services.task_reminders import TaskReminderService

logger = logging.getLogger(__name__)

MORNING_JOB = "tasks.morning"
MORNING_SCHEDULE = "tasks.morning.daily"
# 08:00 on the TIMEZONE wall clock (Europe/Paris), summer and winter alike.
MORNING_CRON = "0 8 * * *"
# The tasks one digest lists at most: today's first, then the latest overdue ones; older ones
# are left to the API's overdue list, which the email points to.
DIGEST_TASK_LIMIT = 100
# The claims only stop a second run of the same day: a week covers any retry.
CLAIMS_KEPT_DAYS = 7


@functools.cache
def _french_public_holidays(year: int) -> holidays.HolidayBase:
    # National calendar: Alsace-Moselle's two extra days (Good Friday, 26 December) are not
    # holidays for a Paris office.
    return holidays.country_holidays("FR", years=year)


def is_business_day(day: date) -> bool:
    """Monday to Friday, and not a French public holiday."""
    return day.weekday() < 5 and day not in _french_public_holidays(day.year)


def due_tasks_statement(day: date) -> Select[Any]:
    """Every digest's tasks: per active user with the digest on, their open tasks due on `day`
    or before, today's first, at most DIGEST_TASK_LIMIT + 1 each."""
    # Per user, a walk of ix_tasks_open_assignee_id_due_date down from `day`, stopped at
    # the limit: a user's years of overdue tasks are never all read.
    due = (
        select(
            Task.id,
            Task.title,
            Task.due_date,
            Task.due_time,
            Task.priority,
            Task.priority_rank,
            Task.investor_id,
        )
        .where(
            Task.assignee_id == User.id,
            Task.status.in_(OPEN_STATUSES),
            Task.due_date <= day,
            Task.deleted_at.is_(None),
        )
        .order_by(Task.due_date.desc(), Task.priority_rank, Task.id)
        .limit(DIGEST_TASK_LIMIT + 1)
        .lateral("due")
    )
    return (
        select(
            User.id.label("user_id"),
            User.email,
            User.full_name,
            due.c.id,
            due.c.title,
            due.c.due_date,
            due.c.due_time,
            due.c.priority,
            Investor.name.label("investor"),
        )
        .select_from(User)
        .join(due, true())
        .outerjoin(Investor, Investor.id == due.c.investor_id)
        .where(User.is_active.is_(True), User.daily_digest.is_(True))
        .order_by(User.id, due.c.due_date, due.c.priority_rank, due.c.id)
    )


class DigestService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def due_digests(self, day: date) -> list[Digest]:
        """Each active user with the digest on and an open task overdue or due on `day`, with
        those tasks (at most DIGEST_TASK_LIMIT each): one query for every user."""
        digests: dict[int, Digest] = {}
        for row in await self.session.execute(due_tasks_statement(day)):
            digest = digests.get(row.user_id)
            if digest is None:
                digest = digests[row.user_id] = Digest(row.user_id, row.email, row.full_name, day)
            task = DigestTask(
                row.id, row.title, row.due_date, row.due_time, row.priority, row.investor
            )
            (digest.today if task.due_date == day else digest.overdue).append(task)
        for digest in digests.values():
            if len(digest.overdue) + len(digest.today) > DIGEST_TASK_LIMIT:
                # The row past the limit is the last one the walk read: the oldest overdue
                # task, or the least urgent of today's when today alone fills the list.
                if digest.overdue:
                    digest.overdue.pop(0)
                else:
                    digest.today.pop()
                digest.truncated = True
        return list(digests.values())

    async def send_digests(self, day: date) -> int:
        """Queue the digest of `day` to each user who has one and was not sent it yet (one
        email job each, so that a failed delivery is retried alone); how many were queued."""
        emails: dict[int, OutgoingEmail] = {}
        for digest in await self.due_digests(day):
            try:
                emails[digest.user_id] = digest_email(digest)
            except ValidationError:
                logger.warning("No digest for user %s: their address takes no mail", digest.user_id)
        claimed = await self._claim(list(emails), day)
        job_ids: list[dict[str, Any]] = []
        for user_id in claimed:
            job_id = await send_later(JobService(self.session), emails[user_id])
            job_ids.append({"user_id": user_id, "day": day, "job_id": job_id})
        if job_ids:
            # ORM bulk UPDATE by primary key: one executemany for every claim.
            await self.session.execute(update(DigestDelivery), job_ids)
        await self.session.execute(
            delete(DigestDelivery).where(DigestDelivery.day < day - timedelta(CLAIMS_KEPT_DAYS))
        )
        return len(claimed)

    async def _claim(self, user_ids: Sequence[int], day: date) -> list[int]:
        """The users among these whose digest of `day` this run is the first to claim."""
        if not user_ids:
            return []
        stmt = (
            pg_insert(DigestDelivery)
            .values([{"user_id": user_id, "day": day} for user_id in user_ids])
            .on_conflict_do_nothing()
            .returning(DigestDelivery.user_id)
        )
        return sorted((await self.session.execute(stmt)).scalars())


class MorningPayload(BaseModel):
    # The day of the slot, fixed when it is queued: a retry after midnight still tells of it.
    day: date


@job_types.register(MORNING_JOB, MorningPayload, retry=RetryPolicy(max_attempts=5))
async def morning_round(payload: MorningPayload, context: JobContext) -> None:
    """The day's task reminders, and on business days the digest emails."""
    await TaskReminderService(context.session).notify_due_tasks(payload.day)
    if is_business_day(payload.day):
        await DigestService(context.session).send_digests(payload.day)


def _today() -> MorningPayload:
    return MorningPayload(day=clock.today())


schedules.add(Schedule(MORNING_SCHEDULE, MORNING_CRON, MORNING_JOB, _today))
