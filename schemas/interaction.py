from datetime import date, datetime
from typing import Annotated

from pydantic import BaseModel, Field

from models.interaction import InteractionType
from schemas.common import (
    PG_INT_MAX,
    InputModel,
    Integer,
    LongText,
    ReadModel,
    RowId,
    ShortText,
    StrictDate,
    omittable,
)

ContactId = RowId
DurationMinutes = Annotated[int, Integer(ge=0, le=1440)]


class InteractionCreate(InputModel):
    contact_id: ContactId | None = None
    type: InteractionType
    date: StrictDate
    duration_minutes: DurationMinutes | None = None
    subject: ShortText | None = None
    notes: LongText | None = None


class InteractionUpdate(InputModel):
    contact_id: ContactId | None = None
    type: InteractionType = omittable()
    date: StrictDate = omittable()
    duration_minutes: DurationMinutes | None = None
    subject: ShortText | None = None
    notes: LongText | None = None


class InteractionRead(ReadModel):
    id: int
    investor_id: int
    contact_id: int | None
    type: InteractionType
    date: date
    duration_minutes: int | None
    subject: str | None
    notes: str | None
    created_by: int | None
    created_at: datetime
    updated_at: datetime


class InteractionFilters(BaseModel):
    """Query filters of the interaction list; both date bounds are inclusive."""

    type: InteractionType | None = None
    investor_id: int | None = Field(default=None, ge=1, le=PG_INT_MAX)
    # YYYY-MM-DD only (a bare number is not a date). An inverted range simply matches nothing.
    date_from: StrictDate | None = None
    date_to: StrictDate | None = None
