"""Monthly KPIs per investor and the summaries management reads."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from api.deps import CurrentUser, IdPath, KpiReader, KpiWriter, PageParams
from api.responses import AUTHENTICATED, errors
from schemas.common import Page
from schemas.kpi import (
    YEAR_MAX,
    YEAR_MIN,
    AnnualSummary,
    KpiFilters,
    KpiRead,
    KpiUpdate,
    KpiUpsert,
    MonthlySummary,
)

router = APIRouter(prefix="/kpis", tags=["kpis"])

YearPath = Annotated[int, Path(ge=YEAR_MIN, le=YEAR_MAX, description="Year (2000-2100)")]
MonthPath = Annotated[int, Path(ge=1, le=12, description="Month (1-12)")]

UPSERT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": KpiRead, "description": "The month already existed; the metrics sent changed"},
    201: {"model": KpiRead, "description": "The month was created; omitted metrics are 0"},
    **errors(*AUTHENTICATED, 404),
}


@router.get("", response_model=Page[KpiRead], responses=errors(*AUTHENTICATED))
async def list_kpis(
    _: CurrentUser,
    kpis: KpiReader,
    page: PageParams,
    filters: Annotated[KpiFilters, Query()],
) -> Page[KpiRead]:
    """List KPI rows by year, month and investor, filtered by investor, year and month."""
    items, total = await kpis.list_kpis(filters, skip=page.skip, limit=page.limit)
    return page.of(KpiRead, items, total)


@router.get(
    "/summary/month/{year}/{month}",
    response_model=MonthlySummary,
    responses=errors(*AUTHENTICATED),
)
async def monthly_summary(
    year: YearPath, month: MonthPath, _: CurrentUser, kpis: KpiReader
) -> MonthlySummary:
    """Totals of one month across all investors."""
    return await kpis.monthly_summary(year, month)


@router.get(
    "/summary/annual/{investor_id:id}/{year}",
    response_model=AnnualSummary,
    responses=errors(*AUTHENTICATED, 404),
)
async def annual_summary(
    investor_id: IdPath, year: YearPath, _: CurrentUser, kpis: KpiReader
) -> AnnualSummary:
    """One investor's year: totals and the 12 months, with zeros for months without figures."""
    return await kpis.annual_summary(investor_id, year)


@router.get(
    "/investor/{investor_id:id}",
    response_model=Page[KpiRead],
    responses=errors(*AUTHENTICATED, 404),
)
async def list_investor_kpis(
    investor_id: IdPath,
    _: CurrentUser,
    kpis: KpiReader,
    page: PageParams,
    year: Annotated[int | None, Query(ge=YEAR_MIN, le=YEAR_MAX)] = None,
) -> Page[KpiRead]:
    """List one investor's KPI rows (all years, or one), by year and month."""
    items, total = await kpis.list_for_investor(investor_id, year, skip=page.skip, limit=page.limit)
    return page.of(KpiRead, items, total)


@router.post(
    "/investor/{investor_id:id}",
    response_model=KpiRead,
    status_code=status.HTTP_201_CREATED,
    responses=UPSERT_RESPONSES,
)
async def upsert_kpi(
    investor_id: IdPath, body: KpiUpsert, response: Response, _: CurrentUser, kpis: KpiWriter
) -> KpiRead:
    """Record an investor's month: 201 when created, 200 when updated (only sent metrics change)."""
    kpi, created = await kpis.upsert_month(investor_id, body)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return KpiRead.model_validate(kpi)


@router.get("/{kpi_id:id}", response_model=KpiRead, responses=errors(*AUTHENTICATED, 404))
async def read_kpi(kpi_id: IdPath, _: CurrentUser, kpis: KpiReader) -> KpiRead:
    """Read a KPI row."""
    return KpiRead.model_validate(await kpis.get(kpi_id))


@router.put("/{kpi_id:id}", response_model=KpiRead, responses=errors(*AUTHENTICATED, 404, 409))
async def update_kpi(kpi_id: IdPath, body: KpiUpdate, _: CurrentUser, kpis: KpiWriter) -> KpiRead:
    """Update a KPI row (only the fields sent change; another month already recorded is 409)."""
    kpi = await kpis.get(kpi_id, for_update=True)
    return KpiRead.model_validate(await kpis.update_kpi(kpi, body))


@router.delete(
    "/{kpi_id:id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(*AUTHENTICATED, 404)
)
async def delete_kpi(kpi_id: IdPath, user: CurrentUser, kpis: KpiWriter) -> None:
    """Move a KPI row to the trash."""
    await kpis.delete(await kpis.get(kpi_id, for_update=True), deleted_by=user.id)
