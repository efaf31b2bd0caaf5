"""Spreadsheet imports: what was sent, how it is processed (a job), and every row refused."""

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, deferred, mapped_column

from models.base import Base, value_enum


class ImportMode(enum.StrEnum):
    dry_run = "dry_run"
    commit = "commit"


class OnDuplicate(enum.StrEnum):
    skip = "skip"
    update = "update"
    error = "error"


class ImportFormat(enum.StrEnum):
    xlsx = "xlsx"
    csv = "csv"


class ImportOutcome(enum.StrEnum):
    """What the import's own row says; while it is `pending` its job's status speaks for it."""

    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


class DataImport(Base):
    """One uploaded file and its result. The upload stays here (a worker in another container
    reads it) only until its job ends."""

    __tablename__ = "imports"
    __table_args__ = (
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
        Index("ix_imports_created_by_id", "created_by", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # A services.spreadsheet_columns.SpreadsheetEntity value (that module reads the models).
    entity: Mapped[str] = mapped_column(String(32), nullable=False)
    mode: Mapped[ImportMode] = mapped_column(value_enum(ImportMode, "import_mode"), nullable=False)
    on_duplicate: Mapped[OnDuplicate] = mapped_column(
        value_enum(OnDuplicate, "import_on_duplicate"), nullable=False
    )
    file_format: Mapped[ImportFormat] = mapped_column(
        value_enum(ImportFormat, "import_format"), nullable=False
    )
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    sheet: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[ImportOutcome] = mapped_column(
        value_enum(ImportOutcome, "import_outcome"), nullable=False
    )
    progress: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="0")
    rows: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    valid: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    updated: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    skipped: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # The file as sent; null once its job has ended (or an anonymisation cleared it).
    upload: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    job_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ImportRowError(Base):
    """One refused cell (or row, or header) of an import, every one kept for errors.csv."""

    __tablename__ = "import_errors"
    __table_args__ = (Index("ix_import_errors_import_id_id", "import_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    import_id: Mapped[int] = mapped_column(
        ForeignKey("imports.id", ondelete="CASCADE"), nullable=False
    )
    # The spreadsheet's own row number (header = 1); null for a header's error.
    row: Mapped[int | None] = mapped_column(Integer)
    column: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[str | None] = mapped_column(Text)
    code: Mapped[str] = mapped_column(String(32), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
