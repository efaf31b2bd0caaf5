"""Tables kept by triggers from the base tables: counters (migrations 0003, 0004), so that totals
read a few rows, not a table, and the words search matches misspellings against (0007)."""

from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Index, Numeric, SmallInteger, String, Text
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


# How search words are cut from a text (as pg_trgm cuts them) and which are kept.
WORD_SEPARATOR = "[^[:alnum:]]+"
THREE_LETTERS = "[[:alpha:]].*[[:alpha:]].*[[:alpha:]]"


class SearchWord(Base):
    """A word of three letters or more found in an investor's name or company or in a contact's
    name or email; words whose holders are gone are not removed (migration 0007)."""

    __tablename__ = "search_words"
    __table_args__ = (
        Index(
            "ix_search_words_word_trgm",
            "word",
            postgresql_using="gin",
            postgresql_ops={"word": "gin_trgm_ops"},
        ),
    )

    word: Mapped[str] = mapped_column(Text, primary_key=True)


# Recomputes every trigger-kept table from the base tables (the counters count live rows only,
# migration 0017). Needed only after a bulk load that bypassed triggers (the benchmark seed
# loads with session_replication_role = replica); migrations 0003, 0004 and 0007 keep their own
# frozen copies of the same backfills.
REBUILD_DERIVED_SQL = (
    "TRUNCATE investor_counts, kpi_month_totals, interaction_type_counts, search_words",
    "INSERT INTO investor_counts (pipeline_stage, client_type, is_active, n) "
    "SELECT pipeline_stage, coalesce(client_type, ''), is_active, count(*) "
    "FROM investors WHERE deleted_at IS NULL GROUP BY 1, 2, 3",
    "INSERT INTO kpi_month_totals (year, month, row_count, total_rdv, total_pitchs, "
    "total_due_diligences, total_closings, total_revenue, weighted_commission) "
    "SELECT year, month, count(*), sum(rdv_count), sum(pitchs), sum(due_diligences), "
    "sum(closings), sum(revenue), sum(revenue * commission_rate) FROM kpis "
    "WHERE deleted_at IS NULL GROUP BY year, month",
    "INSERT INTO interaction_type_counts (type, slot, n) "
    "SELECT type, 0, count(*) FROM interactions WHERE deleted_at IS NULL GROUP BY type",
    "INSERT INTO search_words (word) SELECT DISTINCT word FROM ("  # noqa: S608 (constants)
    "SELECT fuzzy_text AS text FROM investors UNION ALL SELECT search_text FROM contacts"
    f") AS texts, regexp_split_to_table(texts.text, '{WORD_SEPARATOR}') AS word "
    f"WHERE word ~ '{THREE_LETTERS}'",
)
