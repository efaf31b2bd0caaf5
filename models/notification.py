"""Notifications stored per user, and the single-use tickets that open their live stream."""

import enum
import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, value_enum

# Migration 0020's trigger notifies each new row's user id on this channel, when it commits.
NOTIFICATIONS_CHANNEL = "crm_notification"


class NotificationKind(enum.StrEnum):
    """What a notification tells; more kinds come with the features that raise them."""

    task_assigned = "task_assigned"
    task_due = "task_due"
    task_overdue = "task_overdue"
    investor_assigned = "investor_assigned"
    import_finished = "import_finished"
    report_ready = "report_ready"
    webhook_disabled = "webhook_disabled"


class Notification(Base):
    """One message to one user, kept NOTIFICATION_RETENTION_DAYS."""

    __tablename__ = "notifications"
    __table_args__ = (
        # The list's order (unread first, then newest) for one user, walked without a sort.
        Index(
            "ix_notifications_user_id_unread_first",
            "user_id",
            text("(read_at IS NOT NULL)"),
            text("created_at DESC"),
            text("id DESC"),
        ),
        # The unread count: an index-only count over the user's unread rows alone.
        Index(
            "ix_notifications_user_id_unread",
            "user_id",
            postgresql_where=text("read_at IS NULL"),
        ),
        # A stream's catch-up (ids after the last one it sent) and a lookup by id.
        Index("ix_notifications_user_id_id", "user_id", "id"),
        # The retention purge.
        Index("ix_notifications_created_at", "created_at"),
        # A notification told once whatever the number of runs (a task's reminder of the day).
        Index(
            "uq_notifications_user_id_dedup_key",
            "user_id",
            "dedup_key",
            unique=True,
            postgresql_where=text("dedup_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[NotificationKind] = mapped_column(
        value_enum(NotificationKind, "notification_kind"), nullable=False
    )
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    body: Mapped[str | None] = mapped_column(Text)
    # An API path (/api/v1/investors/12) the client turns into its own page.
    link: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What makes the notification unique for its user (`task_due:12:2026-07-13`); null for the
    # notifications of an event, which happen once by nature.
    dedup_key: Mapped[str | None] = mapped_column(String(200))


class DigestDelivery(Base):
    """A user's morning digest of a day, claimed before its email is queued: a second run of
    the day's job (a retry, a slot run again) finds the claim and sends nothing."""

    __tablename__ = "digest_deliveries"

    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    # The email.send job of the digest.
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class StreamTicket(Base):
    """A single-use pass to the notification stream, for an EventSource (which cannot send an
    Authorization header): the SHA-256 digest of the token only, valid for seconds. It stands
    for the access token that asked for it: its user, security stamp and session."""

    __tablename__ = "notification_stream_tickets"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    security_stamp: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, index=True
    )
