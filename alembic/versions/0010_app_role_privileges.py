"""application role privileges: read and write the tables, nothing more

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations and scripts/restore.sh run as the owner role; the API connects as an application
# role that may only read and write rows (docs/securite.md). The grants live in a function so
# that restore.sh applies the very same ones after replaying a dump, which carries none
# (pg_dump --no-privileges); the default privileges cover the tables later migrations create.
# The function is the owner's: the application role cannot run it.
GRANT_FUNCTION = """
CREATE FUNCTION crm_grant_app_privileges(app_role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', app_role);
    EXECUTE format(
        'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I', app_role);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', app_role);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO %I', app_role);
    -- A dump carries no privileges: after a restore the REVOKE below is gone until this runs.
    REVOKE EXECUTE ON FUNCTION public.crm_grant_app_privileges(name) FROM PUBLIC;
    EXECUTE format(
        'REVOKE EXECUTE ON FUNCTION public.crm_grant_app_privileges(name) FROM %I', app_role);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public '
        'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', app_role);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public '
        'GRANT USAGE, SELECT ON SEQUENCES TO %I', app_role);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public '
        'GRANT EXECUTE ON FUNCTIONS TO %I', app_role);
END
$$
"""


def app_role() -> str | None:
    """The API's role when it is not the migrating one (alembic/env.py sets it)."""
    role = context.config.attributes.get("app_role")
    return role if isinstance(role, str) and role else None


def upgrade() -> None:
    op.execute(GRANT_FUNCTION)
    op.execute("REVOKE EXECUTE ON FUNCTION crm_grant_app_privileges(name) FROM PUBLIC")
    role = app_role()
    if role is not None:
        op.get_bind().execute(text("SELECT crm_grant_app_privileges(:role)"), {"role": role})


def downgrade() -> None:
    role = app_role()
    if role is not None:
        quoted = op.get_bind().dialect.identifier_preparer.quote(role)
        for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
            op.execute(
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON {kind} FROM {quoted}"
            )
    op.execute("DROP FUNCTION crm_grant_app_privileges(name)")
