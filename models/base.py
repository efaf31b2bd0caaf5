"""Declarative base with a naming convention, so migrations name constraints predictably."""

import enum
from datetime import datetime

from sqlalchemy import DateTime, Enum, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    # Fetch server-set timestamps with RETURNING instead of a second SELECT.
    __mapper_args__ = {"eager_defaults": True}

    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        server_default=func.now(),
        onupdate=func.now(),
        nullable=False,
    )


def value_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    """An enum stored by value as VARCHAR with a CHECK constraint (easy to extend in migrations)."""
    return Enum(
        enum_cls,
        name=name,
        values_callable=lambda members: [member.value for member in members],
        native_enum=False,
        create_constraint=True,
        validate_strings=True,
        length=32,
    )


# The job-queue library's tables (PgQueuer, created by migration 0011 from its own DDL): not
# mapped, so Alembic's comparison of the models with the database leaves them out.
LIBRARY_TABLE_PREFIX = "pgqueuer"


def is_mapped_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Alembic's `include_name`: everything but the library's tables."""
    return not (type_ == "table" and name is not None and name.startswith(LIBRARY_TABLE_PREFIX))
