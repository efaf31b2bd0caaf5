"""Tasks: what each user has to do, by when, and about which investor."""

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import clock
from core.exceptions import ConflictError, InvalidFieldError, NotFoundError
from models.interaction import Interaction
from models.notification import NotificationKind
from models.task import OPEN_STATUSES, Task, TaskStatus
from models.trash import TrashEntity
from models.user import User
from schemas.common import PG_INT_MAX
from schemas.task import TaskCreate, TaskFilters, TaskSnooze, TaskSummary, TaskUpdate
from services.base import BaseService
from services.notifications import NotificationService

if TYPE_CHECKING:
    from services.investors import InvestorService


def task_link(task_id: int) -> str:
    """The API path of a task, which notifications and the digest point to."""
    return f"/api/v1/tasks/{task_id}"


# `week`: the days after today up to this many; `later`: after them.
WEEK_DAYS = 7


class InvalidAssignee(InvalidFieldError):
    code = "invalid_assignee"
    message = "The assignee must be an active user"


class UnknownInvestor(InvalidFieldError):
    code = "unknown_investor"
    message = "No investor has this id (or it is in the trash)"


class UnknownInteraction(InvalidFieldError):
    code = "unknown_interaction"
    message = "No interaction has this id (or it is in the trash)"


class InteractionNotOfInvestor(InvalidFieldError):
    code = "interaction_not_of_investor"
    message = "The interaction belongs to another investor"


class InvalidSnooze(InvalidFieldError):
    code = "invalid_snooze"
    message = "A task cannot be snoozed to a date before today"


class TaskFinished(ConflictError):
    code = "task_finished"
    message = "This task is finished (done or cancelled): reopen it before moving its due date"


class FollowUpAlreadyOpen(ConflictError):
    code = "follow_up_already_open"
    message = (
        "The investor already has an open task from the same follow-up rule: finish or cancel "
        "that one first"
    )


class TaskService(BaseService[Task, TaskCreate, TaskUpdate]):
    model = Task
    sort_fields: ClassVar = {
        "due_date": Task.due_date,
        "priority": Task.priority_rank,
        "created_at": Task.created_at,
    }
    default_sort = "due_date"
    not_found_message = "Task not found"
    # A `user` changes the tasks given to it and those it wrote.
    owner_columns = (Task.assignee_id, Task.created_by)
    entity = TrashEntity.task
    audit_investor_key = "investor_id"

    def order_by(self, sort: str | None) -> list[ColumnElement[Any]]:
        """By due date, the most urgent first within a day, then id (ix_tasks_*_due_date)."""
        key = sort or self.default_sort
        if key == "due_date":
            return [Task.due_date.asc(), Task.priority_rank.asc(), Task.id.asc()]
        if key == "-due_date":
            return [Task.due_date.desc(), Task.priority_rank.desc(), Task.id.desc()]
        return super().order_by(key)

    async def list_tasks(
        self, filters: TaskFilters, *, sort: str, skip: int, limit: int, caller_id: int
    ) -> tuple[list[Task], int]:
        """A page of tasks matching the filters, with the total. `me` is the caller."""
        return await self.list(
            where=self._filters(filters, caller_id), sort=sort, skip=skip, limit=limit
        )

    def _filters(self, filters: TaskFilters, caller_id: int) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if filters.assignee_id is not None:
            where.append(Task.assignee_id == _user_ref(filters.assignee_id, caller_id))
        if filters.status:
            where.append(Task.status.in_(filters.status))
        if filters.priority is not None:
            where.append(Task.priority == filters.priority)
        if filters.investor_id is not None:
            where.append(Task.investor_id == filters.investor_id)
        if filters.due is not None:
            where += _due_window(filters.due, clock.today())
        if filters.due_from is not None:
            where.append(Task.due_date >= filters.due_from)
        if filters.due_to is not None:
            where.append(Task.due_date <= filters.due_to)
        return where

    async def summary(self, user_id: int) -> TaskSummary:
        """The user's open tasks: how many are overdue, due today, due this week, in all."""
        today = clock.today()
        week_end = today + timedelta(days=WEEK_DAYS)
        stmt = select(
            func.count().filter(Task.due_date < today),
            func.count().filter(Task.due_date == today),
            func.count().filter(Task.due_date > today, Task.due_date <= week_end),
            func.count(),
        ).where(Task.assignee_id == user_id, Task.status.in_(OPEN_STATUSES), *self.live())
        overdue, due_today, week, open_ = (await self.session.execute(stmt)).one()
        return TaskSummary(overdue=overdue, today=due_today, week=week, open=open_)

    async def list_for_investor(
        self, investor_id: int, *, skip: int, limit: int
    ) -> tuple[list[Task], int]:
        """Every task about an investor, any status, by due date; 404 when it is missing."""
        await _investors(self.session).ensure_exists(investor_id)
        return await self.list(where=[Task.investor_id == investor_id], skip=skip, limit=limit)

    async def create_task(self, data: TaskCreate, *, caller_id: int) -> Task:
        """Create a task (given to its creator unless the body names someone else)."""
        assignee_id = data.assignee_id or caller_id
        await self._check_assignee(assignee_id)
        investor_id = await self._check_links(data.investor_id, data.interaction_id)
        values = data.model_copy(update={"assignee_id": assignee_id, "investor_id": investor_id})
        task = await self.create(
            values,
            created_by=caller_id,
            completed_at=clock.now() if data.status is TaskStatus.terminee else None,
        )
        await self.announce_assignment(task, caller_id)
        return task

    async def update_task(self, task_id: int, data: TaskUpdate, *, caller_id: int) -> Task:
        """Partial update; finishing sets `completed_at`, reopening clears it."""
        task = await self.get(task_id, for_update=True)
        sent = data.model_fields_set
        reassigned = "assignee_id" in sent and data.assignee_id != task.assignee_id
        if reassigned and data.assignee_id is not None:
            await self._check_assignee(data.assignee_id)
        if sent & {"investor_id", "interaction_id"}:
            investor_id = data.investor_id if "investor_id" in sent else task.investor_id
            interaction_id = (
                data.interaction_id if "interaction_id" in sent else task.interaction_id
            )
            linked = await self._check_links(investor_id, interaction_id)
            data = data.model_copy(update={"investor_id": linked})
            sent = sent | {"investor_id"}
        for field in sent - {"status"}:
            setattr(task, field, getattr(data, field))
        if "status" in sent and data.status is not None:
            _set_status(task, data.status)
        # Reopening a rule's task, or moving it to another investor, may meet the open one
        # the same rule made since (uq_tasks_open_rule_investor).
        async with self.integrity_guard(unique=FollowUpAlreadyOpen):
            await self.save(task)
        if reassigned:
            await self.announce_assignment(task, caller_id)
        return task

    async def complete(self, task_id: int) -> Task:
        """Mark the task done (again: nothing changes)."""
        task = await self.get(task_id, for_update=True)
        _set_status(task, TaskStatus.terminee)
        await self.save(task)
        return task

    async def snooze(self, task_id: int, data: TaskSnooze) -> Task:
        """Move an open task's due date: `days` after its due date (after today when it is
        overdue), or to `until`; 409 task_finished, 422 invalid_snooze for a past date."""
        task = await self.get(task_id, for_update=True)
        if task.status not in OPEN_STATUSES:
            raise TaskFinished()
        today = clock.today()
        if data.until is not None:
            if data.until < today:
                raise InvalidSnooze("body", "until")
            task.due_date = data.until
        elif data.days is not None:
            task.due_date = max(task.due_date, today) + timedelta(days=data.days)
        await self.save(task)
        return task

    async def announce_assignment(self, task: Task, actor_id: int | None) -> None:
        """Where a task given to someone by someone else is announced to them (`task_assigned`),
        in the assignment's transaction: the one call site of that notification."""
        if task.assignee_id is None or task.assignee_id == actor_id:
            return
        await NotificationService(self.session).notify(
            [task.assignee_id],
            NotificationKind.task_assigned,
            task.title,
            link=task_link(task.id),
            actor_id=actor_id,
        )

    async def _check_assignee(self, user_id: int) -> None:
        """422 invalid_assignee unless an active user (share-locked: not deleted meanwhile)."""
        stmt = select(User.is_active).where(User.id == user_id).with_for_update(read=True)
        if not (await self.session.execute(stmt)).scalar_one_or_none():
            raise InvalidAssignee("body", "assignee_id")

    async def _check_links(self, investor_id: int | None, interaction_id: int | None) -> int | None:
        """The investor the task is about: the one named, or the interaction's; 422 when either
        is unknown (or in the trash), or when the interaction is about another investor."""
        if interaction_id is not None:
            stmt = select(Interaction.investor_id).where(
                Interaction.id == interaction_id, Interaction.deleted_at.is_(None)
            )
            about = (await self.session.execute(stmt)).scalar_one_or_none()
            if about is None:
                raise UnknownInteraction("body", "interaction_id")
            if investor_id is not None and investor_id != about:
                raise InteractionNotOfInvestor("body", "interaction_id")
            investor_id = about
        if investor_id is not None:
            # Locked (key share): the investor cannot go to the trash before this transaction
            # ends, so no live task is left on a trashed investor.
            try:
                await _investors(self.session).ensure_exists(investor_id, lock=True)
            except NotFoundError:
                raise UnknownInvestor("body", "investor_id") from None
        return investor_id


def _investors(session: AsyncSession) -> "InvestorService":
    # Imported here: services.investors builds on this module (its stage rules make tasks).
    from services.investors import InvestorService

    return InvestorService(session)


def _set_status(task: Task, status: TaskStatus) -> None:
    """The status, and the completion time that goes with it (kept when already done)."""
    if status is TaskStatus.terminee and task.status is not TaskStatus.terminee:
        task.completed_at = clock.now()
    elif status is not TaskStatus.terminee:
        task.completed_at = None
    task.status = status


def _due_window(window: str, today: date) -> list[ColumnElement[bool]]:
    """The due-date clauses of a window of the Paris calendar."""
    week_end = today + timedelta(days=WEEK_DAYS)
    if window == "overdue":
        return [Task.due_date < today, Task.status.in_(OPEN_STATUSES)]
    if window == "today":
        return [Task.due_date == today]
    if window == "week":
        return [Task.due_date > today, Task.due_date <= week_end]
    return [Task.due_date > week_end]


def _user_ref(ref: str, caller_id: int) -> int:
    """The user id an `assignee_id` filter names (`me`: the caller); an id too large for the
    column names nobody (0: ids start at 1)."""
    if ref == "me":
        return caller_id
    value = int(ref)
    return value if value <= PG_INT_MAX else 0
