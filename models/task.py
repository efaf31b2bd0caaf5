"""Tasks (what someone has to do, by when) and the follow-up rules that create some of them."""

import enum
from datetime import date, datetime, time

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    Time,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TimestampMixin, value_enum
from models.trash import LIVE_ENTRY, SoftDeleteMixin, trash_entry_index


class TaskPriority(enum.StrEnum):
    basse = "basse"
    normale = "normale"
    haute = "haute"
    urgente = "urgente"


class TaskStatus(enum.StrEnum):
    a_faire = "a_faire"
    en_cours = "en_cours"
    terminee = "terminee"
    annulee = "annulee"


OPEN_STATUSES = (TaskStatus.a_faire, TaskStatus.en_cours)
MANUAL_SOURCE = "manual"
RULE_SOURCE_PREFIX = "rule:"

# Urgent first: the default order is by due date, then this rank, then id.
PRIORITY_RANK_SQL = (
    "CASE priority WHEN 'urgente' THEN 0 WHEN 'haute' THEN 1 WHEN 'normale' THEN 2 ELSE 3 END"
)
# Open tasks: what the lists of things to do, the summary and the no-pile-up rule look at.
# Two equalities, not IN: PostgreSQL prints an IN list over VARCHAR in a form that reads back
# differently, so a restored dump's index would differ from the migrated one.
OPEN_SQL = "(status = 'a_faire' OR status = 'en_cours')"


class Task(SoftDeleteMixin, TimestampMixin, Base):
    """Something a user has to do by a date, possibly about an investor."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("length(btrim(title)) > 0", name="title_not_blank"),
        CheckConstraint(
            f"source = '{MANUAL_SOURCE}' OR source ~ '^{RULE_SOURCE_PREFIX}[a-z_]+$'",
            name="source_format",
        ),
        # A finished task knows when; any other has no completion time.
        CheckConstraint(
            "(status = 'terminee') = (completed_at IS NOT NULL)", name="completed_at_status"
        ),
        # Someone's day (`assignee_id=me&due=today`): equality on the user, a range on dates.
        Index("ix_tasks_assignee_id_due_date", "assignee_id", "due_date", "priority_rank", "id"),
        # Someone's open tasks (overdue ones, the summary), without the finished ones.
        Index(
            "ix_tasks_open_assignee_id_due_date",
            "assignee_id",
            "due_date",
            "priority_rank",
            "id",
            postgresql_where=text(OPEN_SQL),
        ),
        Index("ix_tasks_due_date", "due_date", "priority_rank", "id"),
        Index("ix_tasks_investor_id_due_date", "investor_id", "due_date", "id"),
        Index("ix_tasks_created_by", "created_by"),
        Index("ix_tasks_interaction_id", "interaction_id"),
        # No pile-up: one open task per rule and investor, so concurrent triggers (each an
        # INSERT ... ON CONFLICT DO NOTHING) can never create two.
        Index(
            "uq_tasks_open_rule_investor",
            "investor_id",
            "source",
            unique=True,
            postgresql_where=text(f"source <> '{MANUAL_SOURCE}' AND {OPEN_SQL} AND {LIVE_ENTRY}"),
        ),
        trash_entry_index("tasks"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    due_date: Mapped[date] = mapped_column(Date, nullable=False)
    due_time: Mapped[time | None] = mapped_column(Time)
    priority: Mapped[TaskPriority] = mapped_column(
        value_enum(TaskPriority, "task_priority"),
        nullable=False,
        default=TaskPriority.normale,
        server_default=TaskPriority.normale.value,
    )
    status: Mapped[TaskStatus] = mapped_column(
        value_enum(TaskStatus, "task_status"),
        nullable=False,
        default=TaskStatus.a_faire,
        server_default=TaskStatus.a_faire.value,
    )
    # Null only once the user is deleted: every task is given to someone when written.
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # What the task is about. A supplier link joins it when suppliers exist (one nullable
    # foreign key per kind of record).
    investor_id: Mapped[int | None] = mapped_column(ForeignKey("investors.id", ondelete="CASCADE"))
    interaction_id: Mapped[int | None] = mapped_column(
        ForeignKey("interactions.id", ondelete="SET NULL")
    )
    source: Mapped[str] = mapped_column(
        String(64), nullable=False, default=MANUAL_SOURCE, server_default=MANUAL_SOURCE
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    priority_rank: Mapped[int] = mapped_column(
        SmallInteger, Computed(PRIORITY_RANK_SQL, persisted=True), nullable=False
    )


class FollowUpRule(TimestampMixin, Base):
    """What to do after an event of the pipeline: the task a rule creates, and when it is due."""

    __tablename__ = "follow_up_rules"
    __table_args__ = (
        Index("uq_follow_up_rules_key", "key", unique=True),
        CheckConstraint("delay_days BETWEEN 0 AND 90", name="delay_days_range"),
        CheckConstraint("length(btrim(title)) > 0", name="title_not_blank"),
        CheckConstraint("trigger ~ '^(stage|interaction):[a-z_]+$'", name="trigger_format"),
    )

    # An integer id as every audited record has; the API names a rule by its key.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), nullable=False)
    # `stage:<stage entered>` or `interaction:<type of the interaction logged>`.
    trigger: Mapped[str] = mapped_column(String(64), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    delay_days: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    # `{investor}` stands for the investor's name.
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    priority: Mapped[TaskPriority] = mapped_column(
        value_enum(TaskPriority, "follow_up_rule_priority"),
        nullable=False,
        server_default=TaskPriority.normale.value,
    )
