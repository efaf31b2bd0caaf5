"""Monthly KPIs per investor, their atomic upsert and the management summaries."""

from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    and_,
    bindparam,
    distinct,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import RowMapping

from core.config import settings
from core.exceptions import ConflictError
from models.aggregates import KpiMonthTotal
from models.audit import AuditAction
from models.investor import Investor
from models.kpi import Kpi
from models.trash import TrashEntity
from schemas.kpi import AnnualSummary, KpiFilters, KpiUpdate, KpiUpsert, MonthlySummary
from services.base import BaseService
from services.investors import InvestorService


class KpiMonthTaken(ConflictError):
    code = "kpi_month_exists"
    message = "This investor already has KPIs for that month"


_KEY = ("year", "month")
# The filters the month totals can total; an investor's rows are counted by paginate through
# its (investor_id, year, month) key.
_COUNTED_FILTERS = frozenset({"year", "month"})
# The order of the KPI list (and of its export).
LIST_ORDER = (Kpi.year.asc(), Kpi.month.asc(), Kpi.investor_id.asc(), Kpi.id.asc())


def _totals(*where: ColumnElement[bool]) -> Select[Any]:
    """Aggregates over the matching rows; money stays NUMERIC and is rounded half-up in SQL."""
    revenue = func.sum(Kpi.revenue)
    weighted = func.sum(Kpi.revenue * Kpi.commission_rate)
    return select(
        func.count(distinct(Kpi.investor_id)).label("investor_count"),
        func.count(Kpi.id).label("months_recorded"),
        func.coalesce(func.sum(Kpi.rdv_count), 0).label("total_rdv"),
        func.coalesce(func.sum(Kpi.pitchs), 0).label("total_pitchs"),
        func.coalesce(func.sum(Kpi.due_diligences), 0).label("total_due_diligences"),
        func.coalesce(func.sum(Kpi.closings), 0).label("total_closings"),
        func.coalesce(revenue, 0).label("total_revenue"),
        # ROUND on numeric rounds ties away from zero: half-up for these non-negative values.
        func.round(weighted / func.nullif(revenue, 0), 2).label("average_commission_rate"),
        func.round(func.coalesce(weighted, 0) / 100, 2).label("total_commission"),
    ).where(*where)


class KpiService(BaseService[Kpi, KpiUpsert, KpiUpdate]):
    model = Kpi
    not_found_message = "KPI not found"
    owner_columns = (Investor.owner_id,)
    entity = TrashEntity.kpi
    audit_investor_key = "investor_id"

    async def upsert_month(self, investor_id: int, data: KpiUpsert) -> tuple[Kpi, bool]:
        """Create or update the body's month in one statement; True when the row was created."""
        await InvestorService(self.session).ensure_exists(investor_id, lock=True)
        values = data.model_dump(exclude_unset=True)
        # What the audit entry of an update compares with (locked: no change slips between).
        previous = await self._month_row(investor_id, data.year, data.month)
        new_row = insert(Kpi).values(investor_id=investor_id, **values)
        changes: dict[str, Any] = {
            name: new_row.excluded[name] for name in values if name not in _KEY
        }
        # Even with no metric sent the conflicting row must be returned, hence a touch.
        changes["updated_at"] = func.now()
        upsert = new_row.on_conflict_do_update(
            # The unique index binds live rows only: a trashed month is never the conflict.
            index_elements=[Kpi.investor_id, Kpi.year, Kpi.month],
            index_where=Kpi.trash_entry_id.is_(None),
            set_=changes,
        )
        # xmax is 0 only on a freshly inserted row version.
        inserted = literal_column("(xmax = 0)", Boolean).label("inserted")
        result = await self.session.execute(
            upsert.returning(Kpi, inserted), execution_options={"populate_existing": True}
        )
        kpi, created = result.one()
        if created:
            await self.audit(AuditAction.create, kpi, self.audit_values(kpi))
            return kpi, True
        # No previous row: another request created the month meanwhile, its values unknown.
        changed = {
            name: [None if previous is None else previous[name], getattr(kpi, name)]
            for name in values
            if name not in _KEY and (previous is None or previous[name] != getattr(kpi, name))
        }
        if changed:
            await self.audit(AuditAction.update, kpi, changed)
        return kpi, False

    async def _month_row(self, investor_id: int, year: int, month: int) -> RowMapping | None:
        if not settings.audit_enabled:
            return None
        stmt = (
            select(*Kpi.__table__.c)
            .where(
                Kpi.investor_id == investor_id,
                Kpi.year == year,
                Kpi.month == month,
                # The live month, the one the upsert's unique index binds (not a trashed one).
                Kpi.trash_entry_id.is_(None),
            )
            .with_for_update()
        )
        return (await self.session.execute(stmt)).mappings().one_or_none()

    async def list_kpis(
        self, filters: KpiFilters, *, skip: int, limit: int
    ) -> tuple[list[Kpi], int]:
        """A page of KPI rows, ordered by year, month, investor."""
        where = self.filter_clauses(filters)
        # Asked of the filters set, not of each field: a filter added later falls back to
        # counting rows instead of a wrong total.
        counted = filters.model_dump(exclude_none=True).keys() <= _COUNTED_FILTERS
        total = await self.count_by_month(filters.year, filters.month) if counted else None
        return await self.paginate(
            select(Kpi), where=where, order_by=LIST_ORDER, skip=skip, limit=limit, total=total
        )

    def filter_clauses(self, filters: KpiFilters) -> list[ColumnElement[bool]]:
        """The list's WHERE clauses (trashed rows aside), shared with the export."""
        where: list[ColumnElement[bool]] = []
        if filters.investor_id is not None:
            where.append(Kpi.investor_id == filters.investor_id)
        if filters.year is not None:
            where.append(Kpi.year == filters.year)
        if filters.month is not None:
            where.append(Kpi.month == filters.month)
        return where

    async def count_by_month(self, year: int | None, month: int | None) -> int:
        """How many KPI rows (of a year, a calendar month, both or all), from the month totals."""
        # A month whose rows were all deleted keeps a totals row of zeros: it adds nothing.
        stmt = select(func.coalesce(func.sum(KpiMonthTotal.row_count), 0))
        if year is not None:
            stmt = stmt.where(KpiMonthTotal.year == year)
        if month is not None:
            stmt = stmt.where(KpiMonthTotal.month == month)
        return int((await self.session.execute(stmt)).scalar_one())

    async def list_for_investor(
        self, investor_id: int, year: int | None, *, skip: int, limit: int
    ) -> tuple[list[Kpi], int]:
        """One investor's rows (one year or all), by year and month; 404 for an unknown investor."""
        await InvestorService(self.session).ensure_exists(investor_id)
        where = [Kpi.investor_id == investor_id]
        if year is not None:
            where.append(Kpi.year == year)
        return await self.paginate(
            select(Kpi),
            where=where,
            order_by=[Kpi.year.asc(), Kpi.month.asc()],
            skip=skip,
            limit=limit,
        )

    async def update_kpi(self, kpi: Kpi, data: KpiUpdate) -> Kpi:
        """Partial update; moving the row onto a month the investor already has is 409."""
        async with self.integrity_guard(unique=KpiMonthTaken):
            return await self.update(kpi, data)

    async def monthly_summary(self, year: int, month: int) -> MonthlySummary:
        """Totals of one month across all investors, from the trigger-kept month totals."""
        row = (await self.session.execute(_MONTH_SUMMARY, {"year": year, "month": month})).one()
        return MonthlySummary.model_validate({**row._mapping, "year": year, "month": month})

    async def annual_summary(self, investor_id: int, year: int) -> AnnualSummary:
        """One investor's year: totals and all 12 months (zeros where nothing was recorded)."""
        await InvestorService(self.session).ensure_exists(investor_id)
        params = {"investor_id": investor_id, "year": year}
        rows = (await self.session.execute(_ANNUAL_SUMMARY, params)).all()
        return AnnualSummary.model_validate(
            {
                **rows[0]._mapping,
                "investor_id": investor_id,
                "year": year,
                "monthly_data": [row._mapping for row in rows],
            }
        )


# Built once (see services.investors._STATS): only their parameters change per request.


def _month_summary_statement() -> Select[Any]:
    # Same expressions as _totals over the month's single totals row; a month whose rows
    # were all deleted is left out so that it reads exactly like a month never recorded.
    revenue = func.sum(KpiMonthTotal.total_revenue)
    weighted = func.sum(KpiMonthTotal.weighted_commission)
    return select(
        # UNIQUE (investor_id, year, month): one row per investor in a month.
        func.coalesce(func.sum(KpiMonthTotal.row_count), 0).label("investor_count"),
        func.coalesce(func.sum(KpiMonthTotal.total_rdv), 0).label("total_rdv"),
        func.coalesce(func.sum(KpiMonthTotal.total_pitchs), 0).label("total_pitchs"),
        func.coalesce(func.sum(KpiMonthTotal.total_due_diligences), 0).label(
            "total_due_diligences"
        ),
        func.coalesce(func.sum(KpiMonthTotal.total_closings), 0).label("total_closings"),
        func.coalesce(revenue, 0).label("total_revenue"),
        func.round(weighted / func.nullif(revenue, 0), 2).label("average_commission_rate"),
        func.round(func.coalesce(weighted, 0) / 100, 2).label("total_commission"),
    ).where(
        KpiMonthTotal.year == bindparam("year"),
        KpiMonthTotal.month == bindparam("month"),
        KpiMonthTotal.row_count > 0,
    )


_MONTH_SUMMARY = _month_summary_statement()


def _annual_summary_statement() -> Select[Any]:
    totals = _totals(
        Kpi.investor_id == bindparam("investor_id"),
        Kpi.year == bindparam("year"),
        Kpi.deleted_at.is_(None),
    ).cte("totals")
    months = func.generate_series(1, 12).table_valued("month").render_derived(name="months")
    return (
        select(
            months.c.month,
            func.coalesce(Kpi.rdv_count, 0).label("rdv_count"),
            func.coalesce(Kpi.pitchs, 0).label("pitchs"),
            func.coalesce(Kpi.due_diligences, 0).label("due_diligences"),
            func.coalesce(Kpi.closings, 0).label("closings"),
            func.coalesce(Kpi.revenue, 0).label("revenue"),
            func.coalesce(Kpi.commission_rate, 0).label("commission_rate"),
            totals,
        )
        .select_from(months)
        .outerjoin(
            Kpi,
            and_(
                Kpi.month == months.c.month,
                Kpi.investor_id == bindparam("investor_id"),
                Kpi.year == bindparam("year"),
                Kpi.deleted_at.is_(None),
            ),
        )
        .join(totals, literal_column("true"))
        .order_by(months.c.month)
    )


_ANNUAL_SUMMARY = _annual_summary_statement()
