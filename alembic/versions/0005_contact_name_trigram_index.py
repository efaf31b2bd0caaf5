"""trigram index on normalised contact names, for short search terms

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A search term of one or two characters matches the start of a word in the names only
    # (services/investors.py): investors' through the fuzzy_text index of 0002, contacts'
    # through this one. contacts.search_text also holds the email, whose domain words ("fr",
    # "com") would match nearly every contact.
    op.execute(
        "CREATE INDEX ix_contacts_name_trgm ON contacts "
        "USING gin (lower(crm_unaccent(name::text)) gin_trgm_ops)"
    )


def downgrade() -> None:
    op.drop_index("ix_contacts_name_trgm", table_name="contacts")
