import re
from datetime import date, datetime, time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from models.task import TaskPriority, TaskStatus
from schemas.common import (
    PG_INT_MAX,
    InputModel,
    Integer,
    LongText,
    ReadModel,
    RowId,
    StrictBool,
    StrictDate,
    Title,
    bounded_str,
    omittable,
)


def _hh_mm(value: time) -> str:
    return value.strftime("%H:%M")


def _strict_hh_mm(value: Any) -> Any:
    """HH:MM only: no seconds, no zone (a wall-clock time in Paris), no number. A time
    object is the column's value, read back."""
    if isinstance(value, time) or (isinstance(value, str) and _HH_MM.fullmatch(value)):
        return value
    raise PydanticCustomError("due_time", "due_time must be a time of day as HH:MM")


_HH_MM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")

# HH:MM, Europe/Paris wall-clock time; read back in the same form.
DueTime = Annotated[
    time,
    BeforeValidator(_strict_hh_mm),
    WithJsonSchema({"type": "string", "pattern": f"^{_HH_MM.pattern}$"}),
    PlainSerializer(_hh_mm, return_type=str, when_used="json"),
]


class TaskCreate(InputModel):
    title: Title
    description: LongText | None = None
    due_date: StrictDate
    due_time: DueTime | None = None
    priority: TaskPriority = TaskPriority.normale
    status: TaskStatus = TaskStatus.a_faire
    # The creator when left out.
    assignee_id: RowId | None = None
    investor_id: RowId | None = None
    interaction_id: RowId | None = None


class TaskUpdate(InputModel):
    title: Title = omittable()
    description: LongText | None = None
    due_date: StrictDate = omittable()
    due_time: DueTime | None = None
    priority: TaskPriority = omittable()
    status: TaskStatus = omittable()
    assignee_id: RowId = omittable()
    investor_id: RowId | None = None
    interaction_id: RowId | None = None


SnoozeDays = Annotated[int, Integer(ge=1, le=90)]


class TaskSnooze(InputModel):
    """Exactly one of `days` (from the due date, or from today for an overdue task) and
    `until` (a date, today or later)."""

    days: SnoozeDays | None = None
    until: StrictDate | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "TaskSnooze":
        if (self.days is None) == (self.until is None):
            raise ValueError("send exactly one of days and until")
        return self


class TaskRead(ReadModel):
    id: int
    title: str
    description: str | None
    due_date: date
    due_time: DueTime | None
    priority: TaskPriority
    status: TaskStatus
    assignee_id: int | None
    investor_id: int | None
    interaction_id: int | None
    source: str
    created_by: int | None
    completed_at: datetime | None
    created_at: datetime
    updated_at: datetime


# `me` (the caller) or a user id.
AssigneeRef = Annotated[
    str,
    Field(pattern=r"^(?:me|[1-9][0-9]{0,9})$", description="A user id or `me` (the caller)"),
]
DueWindow = Literal["today", "overdue", "week", "later"]
TaskSort = Literal["due_date", "-due_date", "priority", "created_at"]


class TaskFilters(BaseModel):
    """Optional list filters; none is applied unless sent. Date windows are computed on the
    Paris calendar: `overdue` = open and due before today, `today`, `week` = the 7 days after
    today, `later` = after those."""

    assignee_id: AssigneeRef | None = None
    status: list[TaskStatus] | None = None
    priority: TaskPriority | None = None
    investor_id: int | None = Field(default=None, ge=1, le=PG_INT_MAX)
    due: DueWindow | None = None
    due_from: StrictDate | None = None
    due_to: StrictDate | None = None


class TaskSummary(BaseModel):
    """The caller's open tasks: overdue, due today, due in the 7 days after today, all."""

    overdue: int
    today: int
    week: int
    open: int


DelayDays = Annotated[int, Integer(ge=0, le=90)]


class FollowUpRuleUpdate(InputModel):
    enabled: StrictBool = omittable()
    delay_days: DelayDays = omittable()
    # `{investor}` stands for the investor's name.
    title: Title = omittable()
    priority: TaskPriority = omittable()


class FollowUpRuleRead(ReadModel):
    key: str
    trigger: str
    enabled: bool
    delay_days: int
    title: str
    priority: TaskPriority


RuleKey = bounded_str(64, min_length=1)
