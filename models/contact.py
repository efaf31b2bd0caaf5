from typing import TYPE_CHECKING

from sqlalchemy import (
    CheckConstraint,
    Computed,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, TimestampMixin
from models.trash import SoftDeleteMixin, trash_entry_index

if TYPE_CHECKING:
    from models.investor import Investor


CONTACT_SEARCH_SQL = "lower(crm_unaccent(coalesce(name, '') || ' ' || coalesce(email, '')))"


class Contact(SoftDeleteMixin, TimestampMixin, Base):
    """A person at an investor."""

    __tablename__ = "contacts"
    __table_args__ = (
        CheckConstraint("length(btrim(name)) > 0", name="name_not_blank"),
        Index("ix_contacts_investor_id_name_id", "investor_id", "name", "id"),
        Index(
            "ix_contacts_search_text_trgm",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ),
        # Short search terms match the start of a word of the name alone (migration 0005).
        Index(
            "ix_contacts_name_trgm",
            func.lower(func.crm_unaccent(text("name"))).label("name_normalised"),
            postgresql_using="gin",
            postgresql_ops={"name_normalised": "gin_trgm_ops"},
        ),
        trash_entry_index("contacts"),
        # The GDPR export finds a person by email (migration 0018).
        Index("ix_contacts_email_lower", func.lower(text("email"))),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    investor_id: Mapped[int] = mapped_column(
        ForeignKey("investors.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(50))
    title: Mapped[str | None] = mapped_column(String(255))
    notes: Mapped[str | None] = mapped_column(Text)
    # Lower-cased, unaccented name and email, so an investor search also finds its contacts.
    search_text: Mapped[str] = mapped_column(
        Text,
        Computed(CONTACT_SEARCH_SQL, persisted=True),
        nullable=False,
        deferred=True,
    )

    investor: Mapped["Investor"] = relationship(back_populates="contacts", lazy="raise")
