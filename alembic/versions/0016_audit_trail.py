"""audit trail: the append-only audit_log table, its purge and scrub functions

Revision ID: 0016
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTOR_KINDS = ("user", "api_key", "system")
ACTIONS = (
    "create",
    "update",
    "delete",
    "restore",
    "purge",
    "merge",
    "anonymize",
    "move_stage",
    "login",
    "login_failed",
    "password_changed",
    "role_changed",
    "export",
    "import",
)

# Migration 0010's function, which restore.sh also runs after a restore, with one more step:
# the audit table stays INSERT / SELECT only for the application role (docs/adr/0013).
GRANT_FUNCTION = """
CREATE OR REPLACE FUNCTION crm_grant_app_privileges(app_role name) RETURNS void
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
    -- Append-only: what the grant on every table gave, taken back on the audit trail.
    IF to_regclass('public.audit_log') IS NOT NULL THEN
        EXECUTE format(
            'REVOKE UPDATE, DELETE, TRUNCATE ON public.audit_log FROM %I', app_role);
    END IF;
END
$$
"""

# 0010's version, put back by the downgrade.
PREVIOUS_GRANT_FUNCTION = GRANT_FUNCTION.replace(
    """    -- Append-only: what the grant on every table gave, taken back on the audit trail.
    IF to_regclass('public.audit_log') IS NOT NULL THEN
        EXECUTE format(
            'REVOKE UPDATE, DELETE, TRUNCATE ON public.audit_log FROM %I', app_role);
    END IF;
""",
    "",
)

# Changes to entries happen only inside the two functions below, which set crm.audit_unlock
# for their own duration (with set_config: a function's SET clause may not name a custom
# setting unless a superuser creates it). The application role has no UPDATE, DELETE
# or TRUNCATE privilege and cannot drop or disable the trigger (not the owner): this guards
# against the owner's own mistakes (a migration, a hand-written statement).
GUARD = """
CREATE FUNCTION crm_audit_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF current_setting('crm.audit_unlock', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$
"""

# Retention: entries older than `retention_days` go, and the purge itself is recorded. The
# floor keeps the application role (which may run it) from emptying the trail.
PURGE = """
CREATE FUNCTION crm_audit_purge(retention_days integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    removed bigint;
    unlock text := current_setting('crm.audit_unlock', true);
BEGIN
    IF retention_days IS NULL OR retention_days < 365 THEN
        RAISE EXCEPTION 'audit retention must be at least 365 days, not %', retention_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('crm.audit_unlock', 'on', true);
    DELETE FROM public.audit_log WHERE at < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS removed = ROW_COUNT;
    IF removed > 0 THEN
        INSERT INTO public.audit_log (actor_kind, action, entity, changes, count)
        VALUES ('system', 'purge', 'audit',
                jsonb_build_object('retention_days', retention_days), removed);
    END IF;
    PERFORM set_config('crm.audit_unlock', coalesce(unlock, ''), true);
    RETURN removed;
END
$$
"""

# Anonymisation (GDPR): the values of `fields` in the entries about these records become
# "anonymized", whatever their shape (a value, or [before, after] in an update).
SCRUB = """
CREATE FUNCTION crm_audit_scrub(target_entity varchar, target_ids bigint[], fields text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    scrubbed bigint;
    unlock text := current_setting('crm.audit_unlock', true);
BEGIN
    PERFORM set_config('crm.audit_unlock', 'on', true);
    UPDATE public.audit_log AS entry
    SET changes = entry.changes || (
        SELECT jsonb_object_agg(key, to_jsonb('anonymized'::text))
        FROM jsonb_object_keys(entry.changes) AS key
        WHERE key = ANY (fields)
    )
    WHERE entry.entity = target_entity
      AND entry.entity_id = ANY (target_ids)
      AND jsonb_typeof(entry.changes) = 'object'
      AND entry.changes ?| fields;
    GET DIAGNOSTICS scrubbed = ROW_COUNT;
    PERFORM set_config('crm.audit_unlock', coalesce(unlock, ''), true);
    RETURN scrubbed;
END
$$
"""


def app_role() -> str | None:
    """The API's role when it is not the migrating one (alembic/env.py sets it)."""
    role = context.config.attributes.get("app_role")
    return role if isinstance(role, str) and role else None


def _value_enum(values: Sequence[str], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_kind", _value_enum(ACTOR_KINDS, "audit_actor_kind"), nullable=False),
        sa.Column("action", _value_enum(ACTIONS, "audit_action"), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.BigInteger(), nullable=True),
        sa.Column("investor_id", sa.Integer(), nullable=True),
        sa.Column("changes", postgresql.JSONB(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.Column("count", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        "ix_audit_log_investor_id_id",
        "audit_log",
        ["investor_id", sa.text("id DESC")],
        postgresql_where=sa.text("investor_id IS NOT NULL"),
    )
    op.create_index(
        "ix_audit_log_entity_entity_id_id", "audit_log", ["entity", "entity_id", sa.text("id DESC")]
    )
    op.create_index(
        "ix_audit_log_actor_id_id",
        "audit_log",
        ["actor_id", sa.text("id DESC")],
        postgresql_where=sa.text("actor_id IS NOT NULL"),
    )
    op.create_index("ix_audit_log_action_id", "audit_log", ["action", sa.text("id DESC")])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index(
        "uq_audit_log_login_failed_minute",
        "audit_log",
        ["entity_id", "client_address", "at"],
        unique=True,
        postgresql_where=sa.text("action = 'login_failed'"),
    )
    op.execute(GUARD)
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION crm_audit_guard()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION crm_audit_guard()"
    )
    op.execute(PURGE)
    op.execute(SCRUB)
    op.execute(GRANT_FUNCTION)
    role = app_role()
    if role is not None:
        op.get_bind().execute(text("SELECT crm_grant_app_privileges(:role)"), {"role": role})


def downgrade() -> None:
    op.execute(PREVIOUS_GRANT_FUNCTION)
    op.execute("DROP FUNCTION crm_audit_scrub(varchar, bigint[], text[])")
    op.execute("DROP FUNCTION crm_audit_purge(integer)")
    op.drop_table("audit_log")
    op.execute("DROP FUNCTION crm_audit_guard()")
