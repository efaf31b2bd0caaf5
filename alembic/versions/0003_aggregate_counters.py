"""aggregate counters: investor_counts and kpi_month_totals, kept exact by triggers

Revision ID: 0003
Revises: 0002
"""

# ruff: noqa: S608  (the SQL is built from this file's constants only, never from input)

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Statement-level triggers with transition tables: a statement touching many rows updates each
# counter row once. Keys are applied in key order so that two multi-row statements lock the
# counter rows in the same order and cannot deadlock; `x = x + delta` under ON CONFLICT loses no
# concurrent update. An UPDATE trigger cannot name columns when it has transition tables, so it
# fires on every UPDATE and the deltas of unrelated changes cancel out (HAVING drops them).

INVESTOR_KEY = "pipeline_stage, coalesce(client_type, '') AS client_type, is_active"
INVESTOR_APPLY = """
    INSERT INTO investor_counts AS c (pipeline_stage, client_type, is_active, n)
    SELECT pipeline_stage, client_type, is_active, sum(n)
    FROM ({source}) AS delta
    GROUP BY pipeline_stage, client_type, is_active
    HAVING sum(n) <> 0
    ORDER BY pipeline_stage, client_type, is_active
    ON CONFLICT (pipeline_stage, client_type, is_active) DO UPDATE SET n = c.n + EXCLUDED.n;
"""
INVESTOR_NEW = f"SELECT {INVESTOR_KEY}, 1 AS n FROM new_rows"
INVESTOR_OLD = f"SELECT {INVESTOR_KEY}, -1 AS n FROM old_rows"

KPI_SUMS = ("row_count", "total_rdv", "total_pitchs", "total_due_diligences", "total_closings")
KPI_MONEY = ("total_revenue", "weighted_commission")


def _kpi_rows(table: str, sign: str) -> str:
    return (
        f"SELECT year, month, {sign} AS row_count, {sign} * rdv_count AS total_rdv, "
        f"{sign} * pitchs AS total_pitchs, {sign} * due_diligences AS total_due_diligences, "
        f"{sign} * closings AS total_closings, {sign} * revenue AS total_revenue, "
        f"{sign} * revenue * commission_rate AS weighted_commission FROM {table}"
    )


KPI_COLUMNS = (*KPI_SUMS, *KPI_MONEY)
KPI_APPLY = f"""
    INSERT INTO kpi_month_totals AS t (year, month, {", ".join(KPI_COLUMNS)})
    SELECT year, month, {", ".join(f"sum({name})" for name in KPI_COLUMNS)}
    FROM ({{source}}) AS delta
    GROUP BY year, month
    HAVING {" OR ".join(f"sum({name}) <> 0" for name in KPI_COLUMNS)}
    ORDER BY year, month
    ON CONFLICT (year, month) DO UPDATE SET
        {", ".join(f"{name} = t.{name} + EXCLUDED.{name}" for name in KPI_COLUMNS)};
"""
KPI_NEW = _kpi_rows("new_rows", "1")
KPI_OLD = _kpi_rows("old_rows", "-1")


def _trigger_function(name: str, apply: str, new: str, old: str) -> str:
    # Each branch only reads the transition tables its trigger declares.
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {apply.format(source=new)}
    ELSIF TG_OP = 'DELETE' THEN
        {apply.format(source=old)}
    ELSE
        {apply.format(source=f"{new} UNION ALL {old}")}
    END IF;
    RETURN NULL;
END
$$
"""


def _create_triggers(table: str, function: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_counters_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_counters_update AFTER UPDATE ON {table} "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_counters_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )


def upgrade() -> None:
    op.create_table(
        "investor_counts",
        sa.Column("pipeline_stage", sa.String(length=32), nullable=False),
        sa.Column("client_type", sa.String(length=32), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "pipeline_stage", "client_type", "is_active", name=op.f("pk_investor_counts")
        ),
    )
    op.create_table(
        "kpi_month_totals",
        sa.Column("year", sa.SmallInteger(), nullable=False),
        sa.Column("month", sa.SmallInteger(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("total_rdv", sa.BigInteger(), nullable=False),
        sa.Column("total_pitchs", sa.BigInteger(), nullable=False),
        sa.Column("total_due_diligences", sa.BigInteger(), nullable=False),
        sa.Column("total_closings", sa.BigInteger(), nullable=False),
        sa.Column("total_revenue", sa.Numeric(), nullable=False),
        sa.Column("weighted_commission", sa.Numeric(), nullable=False),
        sa.PrimaryKeyConstraint("year", "month", name=op.f("pk_kpi_month_totals")),
    )
    op.execute(
        _trigger_function("crm_investor_counts_apply", INVESTOR_APPLY, INVESTOR_NEW, INVESTOR_OLD)
    )
    op.execute(_trigger_function("crm_kpi_month_totals_apply", KPI_APPLY, KPI_NEW, KPI_OLD))
    # CREATE TRIGGER locks out writers until this transaction commits, so the backfill below
    # sees every row and no write falls between the backfill and the triggers.
    _create_triggers("investors", "crm_investor_counts_apply")
    _create_triggers("kpis", "crm_kpi_month_totals_apply")
    op.execute(
        "INSERT INTO investor_counts (pipeline_stage, client_type, is_active, n) "
        f"SELECT {INVESTOR_KEY}, count(*) FROM investors GROUP BY 1, 2, 3"
    )
    op.execute(
        f"INSERT INTO kpi_month_totals (year, month, {', '.join(KPI_COLUMNS)}) "
        f"SELECT year, month, {', '.join(f'sum({name})' for name in KPI_COLUMNS)} "
        f"FROM ({_kpi_rows('kpis', '1')}) AS rows GROUP BY year, month"
    )


def downgrade() -> None:
    for table in ("investors", "kpis"):
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER {table}_counters_{event} ON {table}")
    op.execute("DROP FUNCTION crm_investor_counts_apply()")
    op.execute("DROP FUNCTION crm_kpi_month_totals_apply()")
    op.drop_table("kpi_month_totals")
    op.drop_table("investor_counts")
