"""roles and owners: the manager and viewer roles, and each investor's owner

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Roles are stored by value with a CHECK constraint (models.base.value_enum): a new role is a
# new constraint, with no type to alter.
_ROLE_CHECK = "ck_users_user_role"


def upgrade() -> None:
    op.drop_constraint(op.f(_ROLE_CHECK), "users", type_="check")
    op.create_check_constraint(
        op.f(_ROLE_CHECK), "users", "role IN ('admin', 'manager', 'user', 'viewer')"
    )
    # Existing investors stay unassigned (null); a deleted user's investors become unassigned
    # again, never deleted.
    op.add_column("investors", sa.Column("owner_id", sa.Integer(), nullable=True))
    op.create_foreign_key(
        op.f("fk_investors_owner_id_users"),
        "investors",
        "users",
        ["owner_id"],
        ["id"],
        ondelete="SET NULL",
    )
    # Lists filter by owner and sort by name or id: one index serves both.
    op.create_index("ix_investors_owner_id_name_id", "investors", ["owner_id", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_investors_owner_id_name_id", table_name="investors")
    op.drop_constraint(op.f("fk_investors_owner_id_users"), "investors", type_="foreignkey")
    op.drop_column("investors", "owner_id")
    op.execute("UPDATE users SET role = 'user' WHERE role IN ('manager', 'viewer')")
    op.drop_constraint(op.f(_ROLE_CHECK), "users", type_="check")
    op.create_check_constraint(op.f(_ROLE_CHECK), "users", "role IN ('admin', 'user')")
