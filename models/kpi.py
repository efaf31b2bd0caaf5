from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TimestampMixin
from models.trash import LIVE_ENTRY, SoftDeleteMixin, trash_entry_index


class Kpi(SoftDeleteMixin, TimestampMixin, Base):
    """One investor's commercial figures for one month."""

    __tablename__ = "kpis"
    __table_args__ = (
        # One live row per investor and month (a trashed month may be recorded again); the
        # upsert names this index's predicate to infer it.
        Index(
            "uq_kpis_investor_id_year_month",
            "investor_id",
            "year",
            "month",
            unique=True,
            postgresql_where=LIVE_ENTRY,
        ),
        # Every row of an investor, trashed ones included: what a purge's cascade looks up.
        Index("ix_kpis_investor_id", "investor_id"),
        CheckConstraint("year BETWEEN 2000 AND 2100", name="year_range"),
        CheckConstraint("month BETWEEN 1 AND 12", name="month_range"),
        CheckConstraint(
            "rdv_count >= 0 AND pitchs >= 0 AND due_diligences >= 0 AND closings >= 0",
            name="counts_not_negative",
        ),
        CheckConstraint("revenue >= 0", name="revenue_not_negative"),
        CheckConstraint("commission_rate BETWEEN 0 AND 100", name="commission_rate_range"),
        Index("ix_kpis_year_month_investor_id", "year", "month", "investor_id"),
        # A calendar month of every year, in the list order: no skip scan in PostgreSQL 16.
        Index("ix_kpis_month_year_investor_id_id", "month", "year", "investor_id", "id"),
        trash_entry_index("kpis"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    investor_id: Mapped[int] = mapped_column(
        ForeignKey("investors.id", ondelete="CASCADE"), nullable=False
    )
    year: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    month: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    rdv_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    pitchs: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    due_diligences: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    closings: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    revenue: Mapped[Decimal] = mapped_column(
        Numeric(14, 2), nullable=False, default=Decimal(0), server_default="0"
    )
    commission_rate: Mapped[Decimal] = mapped_column(
        Numeric(5, 2), nullable=False, default=Decimal(0), server_default="0"
    )
    notes: Mapped[str | None] = mapped_column(Text)
