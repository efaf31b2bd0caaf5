from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from schemas.common import (
    PG_INT_MAX,
    Count,
    InputModel,
    Integer,
    JsonDecimal,
    LongText,
    Money,
    Percent,
    ReadModel,
    omittable,
)

YEAR_MIN, YEAR_MAX = 2000, 2100
Year = Annotated[int, Integer(ge=YEAR_MIN, le=YEAR_MAX)]
Month = Annotated[int, Integer(ge=1, le=12)]


class KpiMetrics(InputModel):
    """The figures of one month; on an update only the ones sent change."""

    rdv_count: Count = omittable()
    pitchs: Count = omittable()
    due_diligences: Count = omittable()
    closings: Count = omittable()
    revenue: Money = omittable()
    commission_rate: Percent = omittable()
    notes: LongText | None = None


class KpiUpsert(KpiMetrics):
    year: Year
    month: Month


class KpiUpdate(KpiMetrics):
    year: Year = omittable()
    month: Month = omittable()


class KpiRead(ReadModel):
    id: int
    investor_id: int
    year: int
    month: int
    rdv_count: int
    pitchs: int
    due_diligences: int
    closings: int
    revenue: JsonDecimal
    commission_rate: JsonDecimal
    notes: str | None
    created_at: datetime
    updated_at: datetime


class KpiFilters(BaseModel):
    """Query filters of the KPI list."""

    investor_id: int | None = Field(default=None, ge=1, le=PG_INT_MAX)
    year: int | None = Field(default=None, ge=YEAR_MIN, le=YEAR_MAX)
    month: int | None = Field(default=None, ge=1, le=12)


class KpiTotals(BaseModel):
    total_rdv: int
    total_pitchs: int
    total_due_diligences: int
    total_closings: int
    total_revenue: JsonDecimal
    # Money-weighted; null when there is no revenue to weigh by.
    average_commission_rate: JsonDecimal | None
    total_commission: JsonDecimal


class MonthlySummary(KpiTotals):
    year: int
    month: int
    investor_count: int


class MonthFigures(BaseModel):
    month: int
    rdv_count: int
    pitchs: int
    due_diligences: int
    closings: int
    revenue: JsonDecimal
    commission_rate: JsonDecimal


class AnnualSummary(KpiTotals):
    investor_id: int
    year: int
    months_recorded: int
    monthly_data: list[MonthFigures]
