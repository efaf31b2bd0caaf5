"""stage change source: whether a move of the pipeline came through the API or an import

Revision ID: 0022
Revises: 0021
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Stored by value with a CHECK constraint (models.base.value_enum), as every enum here.
_SOURCE_CHECK = "ck_investor_stage_changes_stage_change_source"


def upgrade() -> None:
    # Every move recorded so far came through the API: imports did not mark theirs yet.
    op.add_column(
        "investor_stage_changes",
        sa.Column("source", sa.String(length=32), server_default="api", nullable=False),
    )
    op.create_check_constraint(
        op.f(_SOURCE_CHECK), "investor_stage_changes", "source IN ('api', 'import')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f(_SOURCE_CHECK), "investor_stage_changes", type_="check")
    op.drop_column("investor_stage_changes", "source")
