"""Counters kept exact by triggers (migrations 0003, 0004): totals read a few rows, not a table."""

from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Numeric, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# client_type is part of the key, and a key column cannot be null: '' stands for "not set".
NO_CLIENT_TYPE_KEY = ""


class InvestorCount(Base):
    """How many investors share one (stage, client type, active) combination."""

    __tablename__ = "investor_counts"

    pipeline_stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    is_active: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, nullable=False)


class KpiMonthTotal(Base):
    """Sums of one month's KPI rows across all investors."""

    __tablename__ = "kpi_month_totals"

    year: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    month: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    row_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_rdv: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_pitchs: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_due_diligences: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_closings: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_revenue: Mapped[Decimal] = mapped_column(Numeric, nullable=False)
    # Sum of revenue * commission_rate, unrounded: the exact base of the weighted average rate.
    weighted_commission: Mapped[Decimal] = mapped_column(Numeric, nullable=False)


class InteractionTypeCount(Base):
    """How many interactions of one type one slot has counted.

    Writers spread over slots so that concurrent ones rarely wait for the same row lock
    (migration 0004); only the sum over a type's slots means anything, and a single slot can
    be negative (an interaction counted in one slot and deleted through another).
    """

    __tablename__ = "interaction_type_counts"

    type: Mapped[str] = mapped_column(String(32), primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, nullable=False)


# Recomputes every counter table from the base tables. Needed only after a bulk load that
# bypassed triggers (the benchmark seed loads with session_replication_role = replica);
# migrations 0003 and 0004 keep their own frozen copies of the same backfills.
REBUILD_COUNTERS_SQL = (
    "TRUNCATE investor_counts, kpi_month_totals, interaction_type_counts",
    "INSERT INTO investor_counts (pipeline_stage, client_type, is_active, n) "
    "SELECT pipeline_stage, coalesce(client_type, ''), is_active, count(*) "
    "FROM investors GROUP BY 1, 2, 3",
    "INSERT INTO kpi_month_totals (year, month, row_count, total_rdv, total_pitchs, "
    "total_due_diligences, total_closings, total_revenue, weighted_commission) "
    "SELECT year, month, count(*), sum(rdv_count), sum(pitchs), sum(due_diligences), "
    "sum(closings), sum(revenue), sum(revenue * commission_rate) FROM kpis GROUP BY year, month",
    "INSERT INTO interaction_type_counts (type, slot, n) "
    "SELECT type, 0, count(*) FROM interactions GROUP BY type",
)
