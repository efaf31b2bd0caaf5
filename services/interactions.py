"""Interactions: the activity history of each investor."""

from typing import ClassVar

from sqlalchemy import ColumnElement, func, select

from core.exceptions import ConflictError, NotFoundError
from models.aggregates import InteractionTypeCount
from models.contact import Contact
from models.interaction import Interaction, InteractionType
from models.investor import Investor
from models.trash import TrashEntity
from schemas.interaction import InteractionCreate, InteractionFilters, InteractionUpdate
from services.base import BaseService
from services.follow_ups import FollowUpService
from services.investors import InvestorService

# The filters the type counters can total; with any other set, paginate counts the rows.
_COUNTED_FILTERS = frozenset({"type"})


class InteractionService(BaseService[Interaction, InteractionCreate, InteractionUpdate]):
    model = Interaction
    sort_fields: ClassVar = {"date": Interaction.date}
    # Newest first: latest date, then latest id.
    default_sort = "-date"
    not_found_message = "Interaction not found"
    # Its author, and the owner of its investor.
    owner_columns = (Investor.owner_id, Interaction.created_by)
    entity = TrashEntity.interaction
    audit_investor_key = "investor_id"

    async def list_interactions(
        self, filters: InteractionFilters, *, skip: int, limit: int
    ) -> tuple[list[Interaction], int]:
        """A page of interactions matching the filters, newest first."""
        where = self.filter_clauses(filters)
        # Asked of the filters set, not of each field: a filter added later falls back to
        # counting rows (through an index of its own) instead of a wrong total.
        counted = filters.model_dump(exclude_none=True).keys() <= _COUNTED_FILTERS
        total = await self.count_by_type(filters.type) if counted else None
        return await self.paginate(
            select(Interaction),
            where=where,
            order_by=self.order_by(None),
            skip=skip,
            limit=limit,
            total=total,
        )

    def filter_clauses(self, filters: InteractionFilters) -> list[ColumnElement[bool]]:
        """The list's WHERE clauses (trashed rows aside), shared with the export."""
        where: list[ColumnElement[bool]] = []
        if filters.type is not None:
            where.append(Interaction.type == filters.type)
        if filters.investor_id is not None:
            where.append(Interaction.investor_id == filters.investor_id)
        if filters.date_from is not None:
            where.append(Interaction.date >= filters.date_from)
        if filters.date_to is not None:
            where.append(Interaction.date <= filters.date_to)
        return where

    async def count_by_type(self, type_: InteractionType | None) -> int:
        """How many interactions (of one type, or all), summed from the trigger-kept counters."""
        # Counting the rows themselves read 10M index entries at 1M investors.
        stmt = select(func.coalesce(func.sum(InteractionTypeCount.n), 0))
        if type_ is not None:
            stmt = stmt.where(InteractionTypeCount.type == type_)
        return int((await self.session.execute(stmt)).scalar_one())

    async def list_for_investor(
        self, investor_id: int, *, skip: int, limit: int
    ) -> tuple[list[Interaction], int]:
        """One investor's interactions, newest first; 404 when the investor does not exist."""
        await InvestorService(self.session).ensure_exists(investor_id)
        return await self.list(
            where=[Interaction.investor_id == investor_id], skip=skip, limit=limit
        )

    async def create_for_investor(
        self, investor_id: int, data: InteractionCreate, *, created_by: int
    ) -> Interaction:
        """Log an interaction with an investor, optionally with one of its contacts; its
        follow-up rule fires (imports, which do not come through here, fire none)."""
        await InvestorService(self.session).ensure_exists(investor_id, lock=True)
        if data.contact_id is not None:
            await self._check_contact(investor_id, data.contact_id)
        interaction = await self.create(data, investor_id=investor_id, created_by=created_by)
        await FollowUpService(self.session).interaction_logged(interaction, created_by)
        return interaction

    async def update_interaction(
        self, interaction: Interaction, data: InteractionUpdate
    ) -> Interaction:
        """Partial update; a new contact must belong to the interaction's investor."""
        if data.contact_id is not None:
            await self._check_contact(interaction.investor_id, data.contact_id)
        return await self.update(interaction, data)

    async def _check_contact(self, investor_id: int, contact_id: int) -> None:
        stmt = select(Contact.investor_id).where(
            Contact.id == contact_id, Contact.deleted_at.is_(None)
        )
        owner: int | None = (await self.session.execute(stmt)).scalar_one_or_none()
        if owner is None:
            raise NotFoundError("Contact not found")
        if owner != investor_id:
            raise ConflictError(
                "The contact belongs to another investor", code="contact_not_of_investor"
            )
