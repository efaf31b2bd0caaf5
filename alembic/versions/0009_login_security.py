"""login security: users' security stamp, login failures per client address, known addresses,
user change notifications on INSERT too

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "crm_user_changed"


def _notify_function(payload: str) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION crm_notify_user_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('{CHANNEL}', '*');
            ELSE
                PERFORM pg_notify('{CHANNEL}', {payload});
            END IF;
            RETURN NULL;
        END
        $$
        """


def upgrade() -> None:
    # A volatile default is evaluated per row: every existing account gets its own stamp, and
    # every token issued before this migration (it carries none) is refused from now on.
    op.add_column(
        "users",
        sa.Column(
            "security_stamp",
            sa.Uuid(),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
    )

    # Failures recorded before this revision have no address: they still count per email.
    op.add_column(
        "login_failures",
        sa.Column("client_address", sa.String(length=64), server_default="", nullable=False),
    )
    op.alter_column("login_failures", "client_address", server_default=None)
    op.drop_index("ix_login_failures_email_failed_at", table_name="login_failures")
    op.create_index(
        "ix_login_failures_email_client_address_failed_at",
        "login_failures",
        ["email", "client_address", "failed_at"],
    )
    op.create_index("ix_login_failures_failed_at", "login_failures", ["failed_at"])

    op.create_table(
        "login_successes",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.Column(
            "succeeded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_login_successes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "client_address", name=op.f("pk_login_successes")),
    )

    # A new account evicts its id too: after a restore rolled the id sequence back, a process
    # may still hold the account that had this id before.
    op.execute(_notify_function("(CASE TG_OP WHEN 'INSERT' THEN NEW.id ELSE OLD.id END)::text"))
    op.execute("DROP TRIGGER users_notify_change ON users")
    op.execute(
        "CREATE TRIGGER users_notify_change AFTER INSERT OR UPDATE OR DELETE ON users "
        "FOR EACH ROW EXECUTE FUNCTION crm_notify_user_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER users_notify_change ON users")
    op.execute(
        "CREATE TRIGGER users_notify_change AFTER UPDATE OR DELETE ON users "
        "FOR EACH ROW EXECUTE FUNCTION crm_notify_user_changed()"
    )
    op.execute(_notify_function("OLD.id::text"))
    op.drop_table("login_successes")
    op.drop_index("ix_login_failures_failed_at", table_name="login_failures")
    op.drop_index("ix_login_failures_email_client_address_failed_at", table_name="login_failures")
    op.create_index("ix_login_failures_email_failed_at", "login_failures", ["email", "failed_at"])
    op.drop_column("login_failures", "client_address")
    op.drop_column("users", "security_stamp")
