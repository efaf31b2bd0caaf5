"""The morning reminders of tasks: `task_due` the morning a task is due, `task_overdue` the
morning after, each told once to the task's assignee (services/digest.py runs them daily)."""

from datetime import date, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models.investor import Investor
from models.notification import NotificationKind
from models.task import OPEN_STATUSES, Task
from models.user import User
from services.notifications import Notice, NotificationService
from services.tasks import task_link


def french_date(day: date) -> str:
    return f"{day:%d/%m/%Y}"


class TaskReminderService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def notify_due_tasks(self, day: date) -> int:
        """Tell each active assignee of an open task due on `day` (task_due) or the day before
        (task_overdue); a second run of the same day tells nobody again. How many were told."""
        yesterday = day - timedelta(days=1)
        # Two days of ix_tasks_due_date: the whole company's reminders in one read.
        stmt = (
            select(Task.id, Task.title, Task.due_date, User.id, Investor.name)
            .join(User, User.id == Task.assignee_id)
            .outerjoin(Investor, Investor.id == Task.investor_id)
            .where(
                Task.due_date.between(yesterday, day),
                Task.status.in_(OPEN_STATUSES),
                Task.deleted_at.is_(None),
                User.is_active.is_(True),
            )
            .order_by(Task.due_date, Task.id)
        )
        notices: list[Notice] = []
        for task_id, title, due_date, assignee_id, investor in await self.session.execute(stmt):
            about = None if investor is None else f"Investisseur : {investor}"
            if due_date == day:
                kind, heading, body = NotificationKind.task_due, "À faire aujourd'hui", about
            else:
                kind, heading = NotificationKind.task_overdue, "En retard"
                body = "\n".join(
                    line for line in (f"Échéance dépassée : {french_date(due_date)}", about) if line
                )
            notices.append(
                Notice(
                    user_id=assignee_id,
                    kind=kind,
                    title=f"{heading} : {title}",
                    body=body,
                    link=task_link(task_id),
                    # The due date in the key: a task snoozed to a later day is told again then.
                    dedup_key=f"{kind.value}:{task_id}:{due_date.isoformat()}",
                )
            )
        return await NotificationService(self.session).notify_once(notices)
