"""notifications: stored per user, notified on commit; stream tickets; the digest preference

Revision ID: 0020
Revises: 0019
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each API process LISTENs on it (services/notification_stream.py): the payload is the user id
# of a new notification, sent when (and only if) its transaction commits.
CHANNEL = "crm_notification"
KINDS = (
    "task_assigned",
    "task_due",
    "task_overdue",
    "investor_assigned",
    "import_finished",
    "report_ready",
    "webhook_disabled",
)


def upgrade() -> None:
    # The application role's privileges on the tables come from 0010's default privileges.
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                *KINDS,
                name="notification_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("link", sa.String(length=500), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index(
        "ix_notifications_user_id_unread_first",
        "notifications",
        [
            "user_id",
            sa.literal_column("(read_at IS NOT NULL)"),
            sa.literal_column("created_at DESC"),
            sa.literal_column("id DESC"),
        ],
    )
    op.create_index(
        "ix_notifications_user_id_unread",
        "notifications",
        ["user_id"],
        postgresql_where=sa.text("read_at IS NULL"),
    )
    op.create_index("ix_notifications_user_id_id", "notifications", ["user_id", "id"])
    op.create_index("ix_notifications_created_at", "notifications", ["created_at"])
    op.execute(
        f"""
        CREATE FUNCTION crm_notify_notification() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.user_id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER notifications_notify_insert AFTER INSERT ON notifications "
        "FOR EACH ROW EXECUTE FUNCTION crm_notify_notification()"
    )

    op.create_table(
        "notification_stream_tickets",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("security_stamp", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notification_stream_tickets_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_notification_stream_tickets")),
    )
    op.create_index(
        "ix_notification_stream_tickets_user_id", "notification_stream_tickets", ["user_id"]
    )
    op.create_index(
        "ix_notification_stream_tickets_expires_at", "notification_stream_tickets", ["expires_at"]
    )

    op.add_column(
        "users",
        sa.Column("daily_digest", sa.Boolean(), server_default="true", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("users", "daily_digest")
    op.drop_index(
        "ix_notification_stream_tickets_expires_at", table_name="notification_stream_tickets"
    )
    op.drop_index(
        "ix_notification_stream_tickets_user_id", table_name="notification_stream_tickets"
    )
    op.drop_table("notification_stream_tickets")
    op.execute("DROP TRIGGER notifications_notify_insert ON notifications")
    op.execute("DROP FUNCTION crm_notify_notification()")
    op.drop_index("ix_notifications_created_at", table_name="notifications")
    op.drop_index("ix_notifications_user_id_id", table_name="notifications")
    op.drop_index("ix_notifications_user_id_unread", table_name="notifications")
    op.drop_index("ix_notifications_user_id_unread_first", table_name="notifications")
    op.drop_table("notifications")
