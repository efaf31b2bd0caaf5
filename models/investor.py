import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, TimestampMixin, value_enum
from models.trash import SoftDeleteMixin, trash_entry_index

if TYPE_CHECKING:
    from models.contact import Contact


class PipelineStage(enum.StrEnum):
    prospect_froid = "prospect_froid"
    prospect_tiede = "prospect_tiede"
    prospect_chaud = "prospect_chaud"
    en_negociation = "en_negociation"
    client = "client"
    perdu = "perdu"


# The commercial pipeline, in order; `perdu` (lost) sits outside it.
PIPELINE_ORDER = (
    PipelineStage.prospect_froid,
    PipelineStage.prospect_tiede,
    PipelineStage.prospect_chaud,
    PipelineStage.en_negociation,
    PipelineStage.client,
)


class StageChangeSource(enum.StrEnum):
    """Where a move of the pipeline came from: the API (a person, or its follow-ups) or an
    import, whose moves fire no follow-up rule."""

    api = "api"
    import_ = "import"


class ClientType(enum.StrEnum):
    cgpi = "cgpi"
    wholesale = "wholesale"
    institutionnel = "institutionnel"
    autre = "autre"


# Position of each stage for sorting: `perdu` (lost) comes after `client`.
PIPELINE_RANK_SQL = (
    "CASE pipeline_stage "
    + " ".join(
        f"WHEN '{stage.value}' THEN {rank}"
        for rank, stage in enumerate((*PIPELINE_ORDER, PipelineStage.perdu))
    )
    + " END"
)

# What search matches against: lower-cased, unaccented (crm_unaccent is the IMMUTABLE wrapper
# created by migration 0002), with the phone number also in digits only so "0123456789" finds
# "01 23 45 67 89".
INVESTOR_SEARCH_SQL = (
    "lower(crm_unaccent("
    "coalesce(name, '') || ' ' || coalesce(company, '') || ' ' || coalesce(email, '') || ' ' "
    "|| coalesce(phone, '') || ' ' || coalesce(regexp_replace(phone, '[^0-9+]', '', 'g'), '') "
    "|| ' ' || coalesce(website, '')))"
)

# Typo-tolerant matching looks at the names only: shorter text is faster to compare, and
# emails, phones and websites close to each other are not misspellings of one another.
INVESTOR_FUZZY_SQL = "lower(crm_unaccent(name || ' ' || coalesce(company, '')))"


class Investor(SoftDeleteMixin, TimestampMixin, Base):
    __tablename__ = "investors"
    __table_args__ = (
        CheckConstraint("length(btrim(name)) > 0", name="name_not_blank"),
        # Emails are unique among live investors: a trashed one keeps its email meanwhile. Rows
        # without an email never conflict and stay out of it.
        Index(
            "uq_investors_email_lower",
            func.lower(text("email")),
            unique=True,
            postgresql_where=text("deleted_at IS NULL AND email IS NOT NULL"),
        ),
        # The GDPR export finds a person by email, in the trash too (migration 0018).
        Index("ix_investors_email_lower", func.lower(text("email"))),
        Index("ix_investors_name_id", "name", "id"),
        Index("ix_investors_created_at_id", "created_at", "id"),
        Index("ix_investors_updated_at_id", "updated_at", "id"),
        Index("ix_investors_pipeline_stage_id", "pipeline_stage", "id"),
        Index("ix_investors_client_type", "client_type"),
        Index("ix_investors_is_active", "is_active"),
        Index("ix_investors_owner_id_name_id", "owner_id", "name", "id"),
        Index("ix_investors_pipeline_rank_id", "pipeline_rank", "id"),
        trash_entry_index("investors"),
        Index(
            "ix_investors_search_text_trgm",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ),
        Index(
            "ix_investors_fuzzy_text_trgm",
            "fuzzy_text",
            postgresql_using="gin",
            postgresql_ops={"fuzzy_text": "gin_trgm_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(50))
    website: Mapped[str | None] = mapped_column(String(255))
    company: Mapped[str | None] = mapped_column(String(255))
    industry: Mapped[str | None] = mapped_column(String(255))
    notes: Mapped[str | None] = mapped_column(Text)
    pipeline_stage: Mapped[PipelineStage] = mapped_column(
        value_enum(PipelineStage, "pipeline_stage"),
        nullable=False,
        default=PipelineStage.prospect_froid,
        server_default=PipelineStage.prospect_froid.value,
    )
    client_type: Mapped[ClientType | None] = mapped_column(value_enum(ClientType, "client_type"))
    is_active: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default="true"
    )
    # The salesperson in charge; null = unassigned (also when that user is deleted).
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Generated columns: sorting by pipeline order and trigram search both use plain indexes.
    pipeline_rank: Mapped[int] = mapped_column(
        SmallInteger, Computed(PIPELINE_RANK_SQL, persisted=True), nullable=False
    )
    search_text: Mapped[str] = mapped_column(
        Text, Computed(INVESTOR_SEARCH_SQL, persisted=True), nullable=False, deferred=True
    )
    fuzzy_text: Mapped[str] = mapped_column(
        Text, Computed(INVESTOR_FUZZY_SQL, persisted=True), nullable=False, deferred=True
    )

    contacts: Mapped[list["Contact"]] = relationship(
        back_populates="investor",
        lazy="raise",
        passive_deletes=True,
        order_by="(Contact.name, Contact.id)",
    )


class InvestorStageChange(Base):
    """One move of an investor along the pipeline (from_stage is null at creation)."""

    __tablename__ = "investor_stage_changes"
    __table_args__ = (Index("ix_investor_stage_changes_investor_id_id", "investor_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    investor_id: Mapped[int] = mapped_column(
        ForeignKey("investors.id", ondelete="CASCADE"), nullable=False
    )
    from_stage: Mapped[PipelineStage | None] = mapped_column(
        value_enum(PipelineStage, "stage_change_from")
    )
    to_stage: Mapped[PipelineStage] = mapped_column(
        value_enum(PipelineStage, "stage_change_to"), nullable=False
    )
    changed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    changed_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    source: Mapped[StageChangeSource] = mapped_column(
        value_enum(StageChangeSource, "stage_change_source"),
        server_default=StageChangeSource.api.value,
        nullable=False,
    )
