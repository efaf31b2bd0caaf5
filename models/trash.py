"""The trash: what DELETE moves aside instead of destroying, until it is restored or purged."""

import enum
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, func, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, value_enum


class TrashEntity(enum.StrEnum):
    """The kinds of record a DELETE sends to the trash, as the API names them."""

    investor = "investor"
    contact = "contact"
    interaction = "interaction"
    kpi = "kpi"
    task = "task"


class TrashEntry(Base):
    """One DELETE: the record it named and, through their `trash_entry_id`, every row it took
    with it (an investor's contacts, interactions, KPIs and tasks), restored or purged together."""

    __tablename__ = "trash_entries"
    __table_args__ = (
        # A record is in the trash once at most: restoring it removes its entry.
        Index("uq_trash_entries_entity_entity_id", "entity", "entity_id", unique=True),
        Index("ix_trash_entries_deleted_at_id", "deleted_at", "id"),
        Index("ix_trash_entries_purge_after", "purge_after"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity: Mapped[TrashEntity] = mapped_column(
        value_enum(TrashEntity, "trash_entity"), nullable=False
    )
    entity_id: Mapped[int] = mapped_column(Integer, nullable=False)
    deleted_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    # A plain value, as on the trashed rows: the user may be gone by the time anyone reads it.
    deleted_by: Mapped[int | None] = mapped_column(Integer)
    purge_after: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class SoftDeleteMixin:
    """Rows DELETE sends to the trash. A row is live while `deleted_at` is null: every read
    (BaseService's `live` clause), unique index and trigger-kept counter looks at live rows
    only (migration 0017)."""

    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_by: Mapped[int | None] = mapped_column(Integer)
    trash_entry_id: Mapped[int | None] = mapped_column(ForeignKey("trash_entries.id"))


def trash_entry_index(table: str) -> Index:
    """The index that finds the rows of one trash entry (restore, purge, children count)."""
    return Index(
        f"ix_{table}_trash_entry_id",
        "trash_entry_id",
        postgresql_where=text("trash_entry_id IS NOT NULL"),
    )


# The predicate of a unique index that binds live rows only. Not `deleted_at IS NULL`, which
# every read carries (BaseService.live): PostgreSQL could then read all live rows through the
# index (a bitmap scan of it, then a sort) where a walk of the sort order's index is meant. A
# row has a trash entry exactly while it has a deletion time.
LIVE_ENTRY = text("trash_entry_id IS NULL")
