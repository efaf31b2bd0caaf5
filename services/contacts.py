"""Contacts: the people at an investor."""

from typing import ClassVar

from sqlalchemy import select

from core.exceptions import NotFoundError
from models.contact import Contact
from models.investor import Investor
from schemas.contact import ContactCreate, ContactUpdate
from services.base import BaseService


class InvestorNotFound(NotFoundError):
    message = "Investor not found"


class ContactService(BaseService[Contact, ContactCreate, ContactUpdate]):
    model = Contact
    sort_fields: ClassVar = {"name": Contact.name}
    default_sort = "name"
    not_found_message = "Contact not found"
    owner_columns = (Investor.owner_id,)
    audit_entity = "contact"
    audit_investor_key = "investor_id"

    async def _ensure_investor(self, investor_id: int, *, lock: bool = False) -> None:
        stmt = select(Investor.id).where(Investor.id == investor_id)
        if lock:
            # Key-share lock: a concurrent delete of the investor waits for this request, so the
            # insert never hits a foreign-key error, while other writers are not blocked.
            stmt = stmt.with_for_update(key_share=True)
        if (await self.session.execute(stmt)).first() is None:
            raise InvestorNotFound()

    async def list_for_investor(
        self, investor_id: int, *, skip: int, limit: int
    ) -> tuple[list[Contact], int]:
        """A page of one investor's contacts, by name then id; 404 when the investor is missing."""
        await self._ensure_investor(investor_id)
        return await self.list(where=[Contact.investor_id == investor_id], skip=skip, limit=limit)

    async def create_for_investor(self, investor_id: int, data: ContactCreate) -> Contact:
        """Add a contact to an investor; 404 when the investor is missing."""
        await self._ensure_investor(investor_id, lock=True)
        return await self.create(data, investor_id=investor_id)
