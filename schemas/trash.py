"""What the trash API takes and returns."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from models.trash import TrashEntity
from schemas.common import PG_INT_MAX, ReadModel, StrictDateTime


class TrashFilters(BaseModel):
    """Query filters of the trash list; both bounds of the deletion time are inclusive (an
    inverted period matches nothing)."""

    # `from` is a Python keyword: the field takes it as its alias.
    model_config = ConfigDict(populate_by_name=True)

    entity: TrashEntity | None = None
    deleted_by: int | None = Field(default=None, ge=1, le=PG_INT_MAX)
    deleted_from: StrictDateTime | None = Field(
        default=None, alias="from", description="Deleted at or after this date-time"
    )
    deleted_to: StrictDateTime | None = Field(
        default=None, alias="to", description="Deleted at or before this date-time"
    )


class TrashItem(ReadModel):
    """One deletion in the trash: the record it named (`entity`, `id`), who deleted it, when,
    and when the nightly purge destroys it."""

    entity: TrashEntity
    id: int
    label: str = Field(description="The record's name (an interaction's subject, a KPI's month)")
    deleted_by: int | None
    deleted_at: datetime
    purge_after: datetime
    children: int | None = Field(
        description="For an investor: how many contacts, interactions and KPIs went to the "
        "trash with it (and come back with it); null for the other entities"
    )
