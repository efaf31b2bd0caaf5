from datetime import date, datetime
from typing import Annotated, Self

from pydantic import BaseModel, Field, model_validator

from models.interaction import InteractionType
from schemas.common import (
    PG_INT_MAX,
    Count,
    InputModel,
    LongText,
    ReadModel,
    ShortText,
    StrictDate,
    omittable,
)

ContactId = Annotated[Count, Field(ge=1)]
DurationMinutes = Annotated[Count, Field(le=1440)]


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
    date_from: date | None = None
    date_to: date | None = None

    @model_validator(mode="after")
    def _check_range(self) -> Self:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from must not be after date_to")
        return self
