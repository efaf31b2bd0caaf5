"""interaction_type_counts kept exact by triggers; a KPI index led by the month

Revision ID: 0004
Revises: 0003
"""

# ruff: noqa: S608  (the SQL is built from this file's constants only, never from input)

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Same design as 0003 (statement-level triggers with transition tables, keys applied in key
# order, `n = n + delta` under ON CONFLICT, cancelled deltas dropped by HAVING), with one more
# key column: a slot. Every interaction logged takes a row lock on its counter row until its
# transaction commits, and most interactions share a handful of types: with one row per type,
# concurrent writers would queue behind each other. Each transaction writes the slot given by
# its transaction id, and the transactions in flight at one time have nearby ids, so they
# nearly always lock different rows. A total sums at most 5 types x 16 slots.
SLOTS = 16
INTERACTION_APPLY = f"""
    INSERT INTO interaction_type_counts AS c (type, slot, n)
    SELECT type, (pg_current_xact_id()::text::bigint % {SLOTS})::smallint, sum(n)
    FROM ({{source}}) AS delta
    GROUP BY type
    HAVING sum(n) <> 0
    ORDER BY type
    ON CONFLICT (type, slot) DO UPDATE SET n = c.n + EXCLUDED.n;
"""
INTERACTION_NEW = "SELECT type, 1 AS n FROM new_rows"
INTERACTION_OLD = "SELECT type, -1 AS n FROM old_rows"
FUNCTION = "crm_interaction_type_counts_apply"


def upgrade() -> None:
    op.create_table(
        "interaction_type_counts",
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("type", "slot", name=op.f("pk_interaction_type_counts")),
    )
    op.execute(
        f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {INTERACTION_APPLY.format(source=INTERACTION_NEW)}
    ELSIF TG_OP = 'DELETE' THEN
        {INTERACTION_APPLY.format(source=INTERACTION_OLD)}
    ELSE
        {INTERACTION_APPLY.format(source=f"{INTERACTION_NEW} UNION ALL {INTERACTION_OLD}")}
    END IF;
    RETURN NULL;
END
$$
"""
    )
    # CREATE TRIGGER locks out writers until this transaction commits, so the backfill below
    # sees every row and no write falls between the backfill and the triggers.
    op.execute(
        "CREATE TRIGGER interactions_counters_insert AFTER INSERT ON interactions "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )
    op.execute(
        "CREATE TRIGGER interactions_counters_update AFTER UPDATE ON interactions "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )
    op.execute(
        "CREATE TRIGGER interactions_counters_delete AFTER DELETE ON interactions "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )
    op.execute(
        "INSERT INTO interaction_type_counts (type, slot, n) "
        "SELECT type, 0, count(*) FROM interactions GROUP BY type"
    )
    # The KPI list filtered on a calendar month of every year, in its order (year, month,
    # investor, id): the (year, month, ...) index cannot seek to a month without its year.
    op.create_index(
        "ix_kpis_month_year_investor_id_id", "kpis", ["month", "year", "investor_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_kpis_month_year_investor_id_id", table_name="kpis")
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER interactions_counters_{event} ON interactions")
    op.execute(f"DROP FUNCTION {FUNCTION}()")
    op.drop_table("interaction_type_counts")
