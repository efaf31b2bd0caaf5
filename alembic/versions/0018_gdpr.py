"""gdpr: the anonymisation ledger, and the email indexes of the export

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The application role's privileges on it come from 0010's default privileges.
    op.create_table(
        "anonymizations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "entity",
            sa.Enum(
                "contact",
                "investor",
                name="gdpr_entity",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column(
            "anonymized_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("anonymized_by", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anonymizations")),
    )
    op.create_index(
        "uq_anonymizations_entity_entity_id",
        "anonymizations",
        ["entity", "entity_id"],
        unique=True,
    )
    # The export finds a person by email among every row, trashed ones included: the unique
    # index of investors' emails covers live rows only, and contacts had none.
    op.create_index("ix_investors_email_lower", "investors", [sa.literal_column("lower(email)")])
    op.create_index("ix_contacts_email_lower", "contacts", [sa.literal_column("lower(email)")])


def downgrade() -> None:
    op.drop_index("ix_contacts_email_lower", table_name="contacts")
    op.drop_index("ix_investors_email_lower", table_name="investors")
    op.drop_index("uq_anonymizations_entity_entity_id", table_name="anonymizations")
    op.drop_table("anonymizations")
