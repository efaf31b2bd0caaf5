"""The audit trail: one row per change, append-only (docs/adr/0013-journal-d-audit.md)."""

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, value_enum


class ActorKind(enum.StrEnum):
    user = "user"
    api_key = "api_key"
    system = "system"


class AuditAction(enum.StrEnum):
    create = "create"
    update = "update"
    delete = "delete"
    restore = "restore"
    purge = "purge"
    merge = "merge"
    anonymize = "anonymize"
    move_stage = "move_stage"
    login = "login"
    login_failed = "login_failed"
    password_changed = "password_changed"  # noqa: S105 (an action name)
    role_changed = "role_changed"
    export = "export"
    import_ = "import"


class AuditEntry(Base):
    """Who did what to which record, when, from where.

    No foreign key: actor and entity ids are plain values, so deleting a user or purging a
    record never touches its history. The application role may only INSERT and SELECT; a
    trigger refuses any other change outside crm_audit_purge and crm_audit_scrub (migration
    0016).
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        # The history of an investor, with its contacts', interactions' and KPIs', newest first.
        Index(
            "ix_audit_log_investor_id_id",
            "investor_id",
            text("id DESC"),
            postgresql_where=text("investor_id IS NOT NULL"),
        ),
        Index("ix_audit_log_entity_entity_id_id", "entity", "entity_id", text("id DESC")),
        Index(
            "ix_audit_log_actor_id_id",
            "actor_id",
            text("id DESC"),
            postgresql_where=text("actor_id IS NOT NULL"),
        ),
        Index("ix_audit_log_action_id", "action", text("id DESC")),
        Index("ix_audit_log_at", "at"),
        # One login_failed entry per account, client address and minute (`at` is the minute's
        # start): concurrent writers insert it with ON CONFLICT DO NOTHING, never an update.
        Index(
            "uq_audit_log_login_failed_minute",
            "entity_id",
            "client_address",
            "at",
            unique=True,
            postgresql_where=text("action = 'login_failed'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_kind: Mapped[ActorKind] = mapped_column(
        value_enum(ActorKind, "audit_actor_kind"), nullable=False
    )
    action: Mapped[AuditAction] = mapped_column(
        value_enum(AuditAction, "audit_action"), nullable=False
    )
    # Singular lowercase (user, investor, contact, interaction, kpi, ...): new entities need
    # no migration, the API checks the names it accepts.
    entity: Mapped[str] = mapped_column(String(32), nullable=False)
    entity_id: Mapped[int | None] = mapped_column(BigInteger)
    # The investor the row belongs to (itself, or a contact's, interaction's or KPI's).
    investor_id: Mapped[int | None] = mapped_column(Integer)
    changes: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
