"""tasks: tasks, the follow-up rules (seeded with the defaults), tasks in the trash

Revision ID: 0019
Revises: 0018
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIORITIES = ("basse", "normale", "haute", "urgente")
STATUSES = ("a_faire", "en_cours", "terminee", "annulee")
PRIORITY_RANK_SQL = (
    "CASE priority WHEN 'urgente' THEN 0 WHEN 'haute' THEN 1 WHEN 'normale' THEN 2 ELSE 3 END"
)
# Two equalities, not IN: PostgreSQL prints an IN list over VARCHAR in a form that reads back
# differently, so a restored dump's index would differ from the migrated one.
OPEN_SQL = "(status = 'a_faire' OR status = 'en_cours')"
_TRASH_CHECK = "ck_trash_entries_trash_entity"
TRASH_ENTITIES = ("investor", "contact", "interaction", "kpi")

# The defaults, frozen here (services.follow_ups.DEFAULT_RULES is the application's copy).
DEFAULT_RULES = (
    ("stage_prospect_chaud", "stage:prospect_chaud", 3, "Relancer {investor}"),
    ("stage_en_negociation", "stage:en_negociation", 7, "Point négociation avec {investor}"),
    ("stage_client", "stage:client", 1, "Appel d'accueil {investor}"),
    ("interaction_reunion", "interaction:reunion", 1, "Envoyer le compte rendu à {investor}"),
    ("interaction_appel", "interaction:appel", 3, "Rappeler {investor}"),
    ("interaction_email", "interaction:email", 5, "Relancer {investor} (email)"),
)


def _enum(name: str, values: Sequence[str]) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _trash_entities(values: Sequence[str]) -> None:
    quoted = ", ".join(f"'{value}'" for value in values)
    op.drop_constraint(op.f(_TRASH_CHECK), "trash_entries", type_="check")
    op.create_check_constraint(op.f(_TRASH_CHECK), "trash_entries", f"entity IN ({quoted})")


def _timestamps() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    rules = op.create_table(
        "follow_up_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("delay_days", sa.SmallInteger(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column(
            "priority",
            _enum("follow_up_rule_priority", PRIORITIES),
            server_default="normale",
            nullable=False,
        ),
        *_timestamps(),
        sa.CheckConstraint(
            "delay_days BETWEEN 0 AND 90", name=op.f("ck_follow_up_rules_delay_days_range")
        ),
        sa.CheckConstraint(
            "length(btrim(title)) > 0", name=op.f("ck_follow_up_rules_title_not_blank")
        ),
        sa.CheckConstraint(
            "trigger ~ '^(stage|interaction):[a-z_]+$'",
            name=op.f("ck_follow_up_rules_trigger_format"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_follow_up_rules")),
    )
    op.create_index("uq_follow_up_rules_key", "follow_up_rules", ["key"], unique=True)
    op.bulk_insert(
        rules,
        [
            {"key": key, "trigger": trigger, "delay_days": delay, "title": title}
            for key, trigger, delay, title in DEFAULT_RULES
        ],
    )

    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("due_time", sa.Time(), nullable=True),
        sa.Column(
            "priority", _enum("task_priority", PRIORITIES), server_default="normale", nullable=False
        ),
        sa.Column(
            "status", _enum("task_status", STATUSES), server_default="a_faire", nullable=False
        ),
        sa.Column("assignee_id", sa.Integer(), nullable=True),
        sa.Column("investor_id", sa.Integer(), nullable=True),
        sa.Column("interaction_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(64), server_default="manual", nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "priority_rank",
            sa.SmallInteger(),
            sa.Computed(PRIORITY_RANK_SQL, persisted=True),
            nullable=False,
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.Integer(), nullable=True),
        sa.Column("trash_entry_id", sa.Integer(), nullable=True),
        *_timestamps(),
        sa.CheckConstraint("length(btrim(title)) > 0", name=op.f("ck_tasks_title_not_blank")),
        sa.CheckConstraint(
            "source = 'manual' OR source ~ '^rule:[a-z_]+$'", name=op.f("ck_tasks_source_format")
        ),
        sa.CheckConstraint(
            "(status = 'terminee') = (completed_at IS NOT NULL)",
            name=op.f("ck_tasks_completed_at_status"),
        ),
        sa.ForeignKeyConstraint(
            ["assignee_id"],
            ["users.id"],
            name=op.f("fk_tasks_assignee_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_tasks_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["investor_id"],
            ["investors.id"],
            name=op.f("fk_tasks_investor_id_investors"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_tasks_interaction_id_interactions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["trash_entry_id"],
            ["trash_entries.id"],
            name=op.f("fk_tasks_trash_entry_id_trash_entries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index(
        "ix_tasks_assignee_id_due_date", "tasks", ["assignee_id", "due_date", "priority_rank", "id"]
    )
    op.create_index(
        "ix_tasks_open_assignee_id_due_date",
        "tasks",
        ["assignee_id", "due_date", "priority_rank", "id"],
        postgresql_where=sa.text(OPEN_SQL),
    )
    op.create_index("ix_tasks_due_date", "tasks", ["due_date", "priority_rank", "id"])
    op.create_index("ix_tasks_investor_id_due_date", "tasks", ["investor_id", "due_date", "id"])
    op.create_index("ix_tasks_created_by", "tasks", ["created_by"])
    op.create_index("ix_tasks_interaction_id", "tasks", ["interaction_id"])
    op.create_index(
        "uq_tasks_open_rule_investor",
        "tasks",
        ["investor_id", "source"],
        unique=True,
        postgresql_where=sa.text(f"source <> 'manual' AND {OPEN_SQL} AND trash_entry_id IS NULL"),
    )
    op.create_index(
        "ix_tasks_trash_entry_id",
        "tasks",
        ["trash_entry_id"],
        postgresql_where=sa.text("trash_entry_id IS NOT NULL"),
    )
    _trash_entities((*TRASH_ENTITIES, "task"))


def downgrade() -> None:
    op.drop_table("tasks")
    # The entries of tasks trashed on their own name rows gone with the table.
    op.execute("DELETE FROM trash_entries WHERE entity = 'task'")
    _trash_entities(TRASH_ENTITIES)
    op.drop_table("follow_up_rules")
