from datetime import date, datetime

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
    omittable,
)


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
