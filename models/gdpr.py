"""The GDPR anonymisation ledger: which records were anonymised, when and by whom."""

import enum
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, value_enum


class GdprEntity(enum.StrEnum):
    """The kinds of record holding a person that can be anonymised, as the API names them."""

    contact = "contact"
    investor = "investor"


class Anonymization(Base):
    """One anonymised record. It holds no personal value, only the fact: a second request is
    refused with it, and a restore of an older backup can find what to anonymise again."""

    __tablename__ = "anonymizations"
    __table_args__ = (
        Index("uq_anonymizations_entity_entity_id", "entity", "entity_id", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity: Mapped[GdprEntity] = mapped_column(
        value_enum(GdprEntity, "gdpr_entity"), nullable=False
    )
    # A plain value, no foreign key: the ledger outlives a purge of the record.
    entity_id: Mapped[int] = mapped_column(Integer, nullable=False)
    anonymized_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    anonymized_by: Mapped[int | None] = mapped_column(Integer)
