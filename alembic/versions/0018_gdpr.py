"""gdpr: the anonymisation ledger

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


def downgrade() -> None:
    op.drop_index("uq_anonymizations_entity_entity_id", table_name="anonymizations")
    op.drop_table("anonymizations")
