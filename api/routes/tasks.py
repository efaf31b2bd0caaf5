"""Tasks: what each user has to do, by when (some made by the follow-up rules)."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentUser, IdPath, PageParams, TaskReader, TaskWriter
from api.responses import AUTHENTICATED, errors
from schemas.common import Page
from schemas.task import (
    TaskCreate,
    TaskFilters,
    TaskRead,
    TaskSnooze,
    TaskSort,
    TaskSummary,
    TaskUpdate,
)

router = APIRouter(prefix="/tasks", tags=["tasks"])


@router.get("", response_model=Page[TaskRead], responses=errors(*AUTHENTICATED))
async def list_tasks(
    user: CurrentUser,
    tasks: TaskReader,
    page: PageParams,
    filters: Annotated[TaskFilters, Query()],
    sort: Annotated[TaskSort, Query(description="Sort key, `-` for descending")] = "due_date",
) -> Page[TaskRead]:
    """List tasks by due date (the most urgent first within a day), filtered by assignee
    (`me`), status (repeatable), priority, investor and due window (Paris calendar)."""
    items, total = await tasks.list_tasks(
        filters, sort=sort, skip=page.skip, limit=page.limit, caller_id=user.id
    )
    return page.of(TaskRead, items, total)


@router.get("/summary", response_model=TaskSummary, responses=errors(*AUTHENTICATED))
async def task_summary(user: CurrentUser, tasks: TaskReader) -> TaskSummary:
    """The caller's open tasks: overdue, due today, due in the next 7 days, in all."""
    return await tasks.summary(user.id)


@router.get("/{task_id:id}", response_model=TaskRead, responses=errors(*AUTHENTICATED, 404))
async def read_task(task_id: IdPath, _: CurrentUser, tasks: TaskReader) -> TaskRead:
    """Read a task."""
    return TaskRead.model_validate(await tasks.get(task_id))


@router.post(
    "",
    response_model=TaskRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(*AUTHENTICATED),
)
async def create_task(body: TaskCreate, user: CurrentUser, tasks: TaskWriter) -> TaskRead:
    """Create a task, given to the caller unless `assignee_id` names someone else."""
    return TaskRead.model_validate(await tasks.create_task(body, caller_id=user.id))


@router.put("/{task_id:id}", response_model=TaskRead, responses=errors(*AUTHENTICATED, 404, 409))
@router.patch("/{task_id:id}", response_model=TaskRead, responses=errors(*AUTHENTICATED, 404, 409))
async def update_task(
    task_id: IdPath, body: TaskUpdate, user: CurrentUser, tasks: TaskWriter
) -> TaskRead:
    """Update a task (only the fields sent change); `terminee` sets `completed_at`."""
    return TaskRead.model_validate(await tasks.update_task(task_id, body, caller_id=user.id))


@router.post(
    "/{task_id:id}/complete", response_model=TaskRead, responses=errors(*AUTHENTICATED, 404)
)
async def complete_task(task_id: IdPath, _: CurrentUser, tasks: TaskWriter) -> TaskRead:
    """Mark a task done (a task already done stays as it is)."""
    return TaskRead.model_validate(await tasks.complete(task_id))


@router.post(
    "/{task_id:id}/snooze", response_model=TaskRead, responses=errors(*AUTHENTICATED, 404, 409)
)
async def snooze_task(
    task_id: IdPath, body: TaskSnooze, _: CurrentUser, tasks: TaskWriter
) -> TaskRead:
    """Move an open task's due date by `days` (from today when overdue) or to `until`."""
    return TaskRead.model_validate(await tasks.snooze(task_id, body))


@router.delete(
    "/{task_id:id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(*AUTHENTICATED, 404)
)
async def delete_task(task_id: IdPath, user: CurrentUser, tasks: TaskWriter) -> None:
    """Move a task to the trash."""
    await tasks.delete(await tasks.get(task_id, for_update=True), deleted_by=user.id)
