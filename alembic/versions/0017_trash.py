"""trash: soft delete of investors, contacts, interactions and KPIs, live-only reads and counters

Revision ID: 0017
Revises: 0012
"""

# ruff: noqa: S608  (the SQL is built from this file's constants only, never from input)

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("investors", "contacts", "interactions", "kpis")

# The indexes reads use stay whole, and reads skip trashed rows with a filter: the trash holds
# TRASH_RETENTION_DAYS of deletions, a small share of any table. Indexes of live rows only
# (partial) were tried: where a read's live clause implies their predicate, PostgreSQL may read
# every live row through one of them (a bitmap scan, then a sort) instead of walking the sort
# order's index, and it does on small tables. Only uniqueness binds live rows alone, through
# predicates reads never imply (models/trash.py, LIVE_ENTRY).

# --- the trigger-kept counters (0003, 0004), counting live rows only ---------------------------
# Trashing a row is an UPDATE whose new version is no longer live (-1), restoring one an UPDATE
# whose old version was not (+1), and purging deletes rows that were not counted any more (0).

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
KPI_COLUMNS = (
    "row_count",
    "total_rdv",
    "total_pitchs",
    "total_due_diligences",
    "total_closings",
    "total_revenue",
    "weighted_commission",
)
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


def _investor_rows(table: str, sign: str, where: str) -> str:
    return f"SELECT {INVESTOR_KEY}, {sign} AS n FROM {table}{where}"


def _kpi_rows(table: str, sign: str, where: str) -> str:
    return (
        f"SELECT year, month, {sign} AS row_count, {sign} * rdv_count AS total_rdv, "
        f"{sign} * pitchs AS total_pitchs, {sign} * due_diligences AS total_due_diligences, "
        f"{sign} * closings AS total_closings, {sign} * revenue AS total_revenue, "
        f"{sign} * revenue * commission_rate AS weighted_commission FROM {table}{where}"
    )


def _interaction_rows(table: str, sign: str, where: str) -> str:
    return f"SELECT type, {sign} AS n FROM {table}{where}"


COUNTERS = {
    "crm_investor_counts_apply": (INVESTOR_APPLY, _investor_rows),
    "crm_kpi_month_totals_apply": (KPI_APPLY, _kpi_rows),
    "crm_interaction_type_counts_apply": (INTERACTION_APPLY, _interaction_rows),
}


def _counter_function(name: str, *, live_only: bool) -> str:
    apply, rows = COUNTERS[name]
    where = " WHERE deleted_at IS NULL" if live_only else ""
    new, old = rows("new_rows", "1", where), rows("old_rows", "-1", where)
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
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


# --- the search functions (0008), finding live rows only --------------------------------------
# Frozen copies of 0008's bodies with the live conditions below added after each match
# condition; the downgrade removes them again. Contacts are trashed with their investor, so a
# live contact always has a live investor.

LIVE_INVESTOR = "\n           AND i.deleted_at IS NULL"
LIVE_CONTACT = "\n           AND c.deleted_at IS NULL"

WORD_START_MATCHES = rf"""
CREATE OR REPLACE FUNCTION crm_search_word_start_matches(q text, cap integer)
RETURNS TABLE (investor_id integer, score double precision)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    term text := lower(crm_unaccent(q));
    word_start text;
BEGIN
    IF length(term) >= 3 OR term !~ '^[[:alnum:]]' THEN
        RETURN;
    END IF;
    -- Where a word starts: at the start of the text or after an ASCII space, punctuation
    -- mark or control (crm_unaccent turns typographic apostrophes, quotes, dashes and no-break
    -- spaces into ASCII). Spelt out: pg_trgm draws trigrams, and so uses its index, only from
    -- a bracket expression of few characters, not from [^[:alnum:]]. A backslash makes any
    -- character of the term that is neither letter nor digit literal.
    word_start := '(^|[\x01-/:-@[-`{{-\x7f])' || regexp_replace(term, '([^[:alnum:]])', '\\\1', 'g');
    RETURN QUERY
        (SELECT i.id, word_similarity(term, i.fuzzy_text) + 1
         FROM investors AS i
         WHERE i.fuzzy_text ~ word_start{LIVE_INVESTOR}
         LIMIT cap)
        UNION ALL
        (SELECT c.investor_id, word_similarity(term, lower(crm_unaccent(c.name::text))) + 1
         FROM contacts AS c
         WHERE lower(crm_unaccent(c.name::text)) ~ word_start{LIVE_CONTACT}
         LIMIT cap)
        LIMIT cap;
END
$$
"""

LITERAL_MATCHES = f"""
CREATE OR REPLACE FUNCTION crm_search_literal_matches(q text, cap integer)
RETURNS TABLE (investor_id integer, score double precision)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    term text := lower(crm_unaccent(q));
    pattern text := crm_like_containing(term);
BEGIN
    IF length(term) < 3 THEN
        RETURN;
    END IF;
    RETURN QUERY
        (SELECT i.id, word_similarity(term, i.fuzzy_text) + 1
         FROM investors AS i
         WHERE i.search_text LIKE pattern{LIVE_INVESTOR}
         LIMIT cap)
        UNION ALL
        (SELECT c.investor_id, word_similarity(term, c.search_text) + 1
         FROM contacts AS c
         WHERE c.search_text LIKE pattern{LIVE_CONTACT}
         LIMIT cap)
        LIMIT cap;
END
$$
"""

CLOSE_WORD_MATCHES = rf"""
CREATE OR REPLACE FUNCTION crm_search_close_word_matches(q text, cap integer)
RETURNS TABLE (investor_id integer, score double precision)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
-- pg_trgm's default (0.6) misses common misspellings such as "Rotchild" for "Rothschild".
SET pg_trgm.word_similarity_threshold = 0.5
AS $$
DECLARE
    term text := lower(crm_unaccent(q));
    pattern text := crm_like_containing(term);
    closest record;
    query_words integer := 0;
    first_word text[];
    second_word text[];
    third_word text[];
    other_words text[] := '{{}}';
BEGIN
    IF length(term) < 3 THEN
        RETURN;
    END IF;
    FOR closest IN
        SELECT array_agg('%' || known.word || '%') AS patterns,
               string_agg(known.word, '|') AS any_of
        FROM regexp_split_to_table(term, '[^[:alnum:]]+') WITH ORDINALITY AS query_word(word, n)
        CROSS JOIN LATERAL (
            SELECT w.word
            FROM search_words AS w
            WHERE query_word.word <% w.word AND strpos(w.word, term) = 0
            ORDER BY word_similarity(query_word.word, w.word) DESC, w.word
            LIMIT 10
        ) AS known
        WHERE query_word.word ~ '[[:alpha:]].*[[:alpha:]].*[[:alpha:]]'
        GROUP BY query_word.n, query_word.word
        ORDER BY length(query_word.word) DESC, query_word.n
    LOOP
        query_words := query_words + 1;
        IF query_words = 1 THEN
            first_word := closest.patterns;
        ELSIF query_words = 2 THEN
            second_word := closest.patterns;
        ELSIF query_words = 3 THEN
            third_word := closest.patterns;
        ELSE
            other_words := other_words || closest.any_of;
        END IF;
    END LOOP;
    IF query_words = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
        (SELECT i.id, word_similarity(term, i.fuzzy_text) + (i.search_text LIKE pattern)::integer
         FROM investors AS i
         WHERE i.fuzzy_text LIKE ANY (first_word)
           AND (second_word IS NULL OR i.fuzzy_text LIKE ANY (second_word))
           AND (third_word IS NULL OR i.fuzzy_text LIKE ANY (third_word))
           AND (cardinality(other_words) = 0 OR i.fuzzy_text ~ ALL (other_words)){LIVE_INVESTOR}
         LIMIT cap)
        UNION ALL
        (SELECT c.investor_id,
                word_similarity(term, c.search_text) + (c.search_text LIKE pattern)::integer
         FROM contacts AS c
         WHERE c.search_text LIKE ANY (first_word)
           AND (second_word IS NULL OR c.search_text LIKE ANY (second_word))
           AND (third_word IS NULL OR c.search_text LIKE ANY (third_word))
           AND (cardinality(other_words) = 0 OR c.search_text ~ ALL (other_words)){LIVE_CONTACT}
         LIMIT cap)
        LIMIT cap;
END
$$
"""

SEARCH_FUNCTIONS = (WORD_START_MATCHES, LITERAL_MATCHES, CLOSE_WORD_MATCHES)


def _without_live_conditions(definition: str) -> str:
    return definition.replace(LIVE_INVESTOR, "").replace(LIVE_CONTACT, "")


def upgrade() -> None:
    op.create_table(
        "trash_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "entity",
            sa.Enum(
                "investor",
                "contact",
                "interaction",
                "kpi",
                name="trash_entity",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deleted_by", sa.Integer(), nullable=True),
        sa.Column("purge_after", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trash_entries")),
    )
    op.create_index(
        "uq_trash_entries_entity_entity_id", "trash_entries", ["entity", "entity_id"], unique=True
    )
    op.create_index("ix_trash_entries_deleted_at_id", "trash_entries", ["deleted_at", "id"])
    op.create_index("ix_trash_entries_purge_after", "trash_entries", ["purge_after"])
    for table in TABLES:
        op.add_column(table, sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        op.add_column(table, sa.Column("deleted_by", sa.Integer(), nullable=True))
        op.add_column(table, sa.Column("trash_entry_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f(f"fk_{table}_trash_entry_id_trash_entries"),
            table,
            "trash_entries",
            ["trash_entry_id"],
            ["id"],
        )
        op.create_index(
            f"ix_{table}_trash_entry_id",
            table,
            ["trash_entry_id"],
            postgresql_where=sa.text("trash_entry_id IS NOT NULL"),
        )
    op.drop_index("uq_investors_email_lower", table_name="investors")
    # Rows without an email never conflict: they stay out of it.
    op.create_index(
        "uq_investors_email_lower",
        "investors",
        [sa.literal_column("lower(email)")],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL AND email IS NOT NULL"),
    )
    op.drop_constraint("uq_kpis_investor_id_year_month", "kpis", type_="unique")
    op.create_index(
        "uq_kpis_investor_id_year_month",
        "kpis",
        ["investor_id", "year", "month"],
        unique=True,
        postgresql_where=sa.text("trash_entry_id IS NULL"),
    )
    # Every row of an investor, trashed ones included: what a purge's cascade looks up.
    op.create_index("ix_kpis_investor_id", "kpis", ["investor_id"])
    for name in COUNTERS:
        op.execute(_counter_function(name, live_only=True))
    for definition in SEARCH_FUNCTIONS:
        op.execute(definition)


def downgrade() -> None:
    # Without a trash, trashed rows are gone for good: destroyed while the counters still
    # ignore them, so the counters stay exact.
    op.execute("DELETE FROM investors WHERE deleted_at IS NOT NULL")
    for table in ("contacts", "interactions", "kpis"):
        op.execute(f"DELETE FROM {table} WHERE deleted_at IS NOT NULL")
    for definition in SEARCH_FUNCTIONS:
        op.execute(_without_live_conditions(definition))
    for name in COUNTERS:
        op.execute(_counter_function(name, live_only=False))
    op.drop_index("ix_kpis_investor_id", table_name="kpis")
    op.drop_index("uq_kpis_investor_id_year_month", table_name="kpis")
    op.create_unique_constraint(
        "uq_kpis_investor_id_year_month", "kpis", ["investor_id", "year", "month"]
    )
    op.drop_index("uq_investors_email_lower", table_name="investors")
    op.create_index(
        "uq_investors_email_lower", "investors", [sa.literal_column("lower(email)")], unique=True
    )
    for table in TABLES:
        op.drop_index(f"ix_{table}_trash_entry_id", table_name=table)
        op.drop_constraint(
            op.f(f"fk_{table}_trash_entry_id_trash_entries"), table, type_="foreignkey"
        )
        op.drop_column(table, "trash_entry_id")
        op.drop_column(table, "deleted_by")
        op.drop_column(table, "deleted_at")
    op.drop_index("ix_trash_entries_purge_after", table_name="trash_entries")
    op.drop_index("ix_trash_entries_deleted_at_id", table_name="trash_entries")
    op.drop_index("uq_trash_entries_entity_entity_id", table_name="trash_entries")
    op.drop_table("trash_entries")
