import enum
from datetime import date

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TimestampMixin, value_enum
from models.trash import SoftDeleteMixin, trash_entry_index


class InteractionType(enum.StrEnum):
    appel = "appel"
    email = "email"
    reunion = "reunion"
    webinaire = "webinaire"
    autre = "autre"


class Interaction(SoftDeleteMixin, TimestampMixin, Base):
    """A logged exchange with an investor (call, email, meeting, webinar...)."""

    __tablename__ = "interactions"
    __table_args__ = (
        CheckConstraint(
            "duration_minutes IS NULL OR duration_minutes BETWEEN 0 AND 1440",
            name="duration_minutes_range",
        ),
        # Newest-first listings, globally and per investor.
        Index("ix_interactions_date_id", "date", "id"),
        Index("ix_interactions_investor_id_date_id", "investor_id", "date", "id"),
        Index("ix_interactions_type_date_id", "type", "date", "id"),
        trash_entry_index("interactions"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    investor_id: Mapped[int] = mapped_column(
        ForeignKey("investors.id", ondelete="CASCADE"), nullable=False
    )
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL"), index=True
    )
    type: Mapped[InteractionType] = mapped_column(
        value_enum(InteractionType, "interaction_type"), nullable=False
    )
    date: Mapped[date] = mapped_column(Date, nullable=False)
    duration_minutes: Mapped[int | None] = mapped_column(Integer)
    subject: Mapped[str | None] = mapped_column(String(255))
    notes: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
