"""investor search: unaccent + pg_trgm, generated search columns, pipeline order column

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the expressions in models/investor.py and models/contact.py.
PIPELINE_RANK_SQL = (
    "CASE pipeline_stage WHEN 'prospect_froid' THEN 0 WHEN 'prospect_tiede' THEN 1 "
    "WHEN 'prospect_chaud' THEN 2 WHEN 'en_negociation' THEN 3 WHEN 'client' THEN 4 "
    "WHEN 'perdu' THEN 5 END"
)
INVESTOR_SEARCH_SQL = (
    "lower(crm_unaccent("
    "coalesce(name, '') || ' ' || coalesce(company, '') || ' ' || coalesce(email, '') || ' ' "
    "|| coalesce(phone, '') || ' ' || coalesce(regexp_replace(phone, '[^0-9+]', '', 'g'), '') "
    "|| ' ' || coalesce(website, '')))"
)
INVESTOR_FUZZY_SQL = "lower(crm_unaccent(name || ' ' || coalesce(company, '')))"
CONTACT_SEARCH_SQL = "lower(crm_unaccent(coalesce(name, '') || ' ' || coalesce(email, '')))"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent WITH SCHEMA public")
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public")
    # unaccent() is only STABLE (its dictionary could change); naming the dictionary explicitly
    # makes this wrapper safe to declare IMMUTABLE, which generated columns and indexes require.
    op.execute(
        "CREATE OR REPLACE FUNCTION public.crm_unaccent(text) RETURNS text "
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT "
        "AS $$ SELECT public.unaccent('public.unaccent'::regdictionary, $1) $$"
    )
    op.add_column(
        "investors",
        sa.Column(
            "pipeline_rank",
            sa.SmallInteger(),
            sa.Computed(PIPELINE_RANK_SQL, persisted=True),
            nullable=False,
        ),
    )
    op.add_column(
        "investors",
        sa.Column(
            "search_text",
            sa.Text(),
            sa.Computed(INVESTOR_SEARCH_SQL, persisted=True),
            nullable=False,
        ),
    )
    op.add_column(
        "investors",
        sa.Column(
            "fuzzy_text",
            sa.Text(),
            sa.Computed(INVESTOR_FUZZY_SQL, persisted=True),
            nullable=False,
        ),
    )
    op.add_column(
        "contacts",
        sa.Column(
            "search_text",
            sa.Text(),
            sa.Computed(CONTACT_SEARCH_SQL, persisted=True),
            nullable=False,
        ),
    )
    op.create_index(
        "ix_investors_pipeline_rank_id", "investors", ["pipeline_rank", "id"], unique=False
    )
    op.create_index(
        "ix_investors_search_text_trgm",
        "investors",
        ["search_text"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"search_text": "gin_trgm_ops"},
    )
    op.create_index(
        "ix_investors_fuzzy_text_trgm",
        "investors",
        ["fuzzy_text"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"fuzzy_text": "gin_trgm_ops"},
    )
    op.create_index(
        "ix_contacts_search_text_trgm",
        "contacts",
        ["search_text"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"search_text": "gin_trgm_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_contacts_search_text_trgm", table_name="contacts")
    op.drop_index("ix_investors_fuzzy_text_trgm", table_name="investors")
    op.drop_index("ix_investors_search_text_trgm", table_name="investors")
    op.drop_index("ix_investors_pipeline_rank_id", table_name="investors")
    op.drop_column("contacts", "search_text")
    op.drop_column("investors", "fuzzy_text")
    op.drop_column("investors", "search_text")
    op.drop_column("investors", "pipeline_rank")
    op.execute("DROP FUNCTION IF EXISTS public.crm_unaccent(text)")
    # The extensions stay: other objects of the database may use them.
