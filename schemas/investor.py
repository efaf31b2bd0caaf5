from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel

from models.investor import ClientType, PipelineStage
from schemas.common import (
    InputModel,
    LongText,
    Name,
    OptionalEmail,
    Phone,
    ReadModel,
    ShortText,
    StrictBool,
    bounded_str,
    omittable,
)
from schemas.contact import ContactRead


class InvestorCreate(InputModel):
    name: Name
    email: OptionalEmail = None
    phone: Phone | None = None
    website: ShortText | None = None
    company: ShortText | None = None
    industry: ShortText | None = None
    notes: LongText | None = None
    pipeline_stage: PipelineStage = PipelineStage.prospect_froid
    client_type: ClientType | None = None
    is_active: StrictBool = True


class InvestorUpdate(InputModel):
    name: Name = omittable()
    email: OptionalEmail = None
    phone: Phone | None = None
    website: ShortText | None = None
    company: ShortText | None = None
    industry: ShortText | None = None
    notes: LongText | None = None
    pipeline_stage: PipelineStage = omittable()
    client_type: ClientType | None = None
    is_active: StrictBool = omittable()


class InvestorRead(ReadModel):
    id: int
    name: str
    email: str | None
    phone: str | None
    website: str | None
    company: str | None
    industry: str | None
    notes: str | None
    pipeline_stage: PipelineStage
    client_type: ClientType | None
    is_active: bool
    created_at: datetime
    updated_at: datetime


class InvestorActivity(ReadModel):
    """Counts shown on the investor detail, computed in SQL."""

    interaction_count: int = 0
    last_interaction_date: date | None = None
    kpi_count: int = 0


class InvestorDetail(InvestorRead, InvestorActivity):
    """One investor with its contacts and activity counts."""

    contacts: list[ContactRead]


InvestorSort = Literal[
    "name",
    "-name",
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "pipeline_stage",
    "-pipeline_stage",
]


class InvestorFilters(BaseModel):
    """Optional list filters; none is applied unless sent."""

    pipeline_stage: PipelineStage | None = None
    client_type: ClientType | None = None
    is_active: bool | None = None


# The `q` of a search: trimmed, 1-200 characters, no NUL byte.
SearchText = bounded_str(200, min_length=1)


class StageChangeRead(ReadModel):
    id: int
    investor_id: int
    from_stage: PipelineStage | None
    to_stage: PipelineStage
    changed_at: datetime
    changed_by: int | None


class InvestorStats(BaseModel):
    total_count: int
    active_count: int
    by_pipeline_stage: dict[PipelineStage, int]
    # Every client type, plus "non_renseigne" for investors without one.
    by_client_type: dict[ClientType | Literal["non_renseigne"], int]
