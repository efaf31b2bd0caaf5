"""user change notifications: NOTIFY crm_user_changed on every change to users

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each API process keeps the accounts behind recent tokens in memory (services.users) and
# listens on this channel: any change to an account, made through the API, another process or
# plain SQL, evicts it everywhere once committed. The payload is the user id, or '*' when the
# whole table was emptied (TRUNCATE fires no row trigger).
CHANNEL = "crm_user_changed"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION crm_notify_user_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('{CHANNEL}', '*');
            ELSE
                PERFORM pg_notify('{CHANNEL}', OLD.id::text);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER users_notify_change AFTER UPDATE OR DELETE ON users "
        "FOR EACH ROW EXECUTE FUNCTION crm_notify_user_changed()"
    )
    op.execute(
        "CREATE TRIGGER users_notify_truncate AFTER TRUNCATE ON users "
        "FOR EACH STATEMENT EXECUTE FUNCTION crm_notify_user_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER users_notify_truncate ON users")
    op.execute("DROP TRIGGER users_notify_change ON users")
    op.execute("DROP FUNCTION crm_notify_user_changed()")
