"""Contacts: the people at an investor."""

from typing import ClassVar

from models.contact import Contact
from models.investor import Investor
from models.trash import TrashEntity
from schemas.contact import ContactCreate, ContactUpdate
from services.base import BaseService
from services.investors import InvestorService


class ContactService(BaseService[Contact, ContactCreate, ContactUpdate]):
    model = Contact
    sort_fields: ClassVar = {"name": Contact.name}
    default_sort = "name"
    not_found_message = "Contact not found"
    owner_columns = (Investor.owner_id,)
    entity = TrashEntity.contact
    audit_investor_key = "investor_id"

    async def list_for_investor(
        self, investor_id: int, *, skip: int, limit: int
    ) -> tuple[list[Contact], int]:
        """A page of one investor's contacts, by name then id; 404 when the investor is missing."""
        await InvestorService(self.session).ensure_exists(investor_id)
        return await self.list(where=[Contact.investor_id == investor_id], skip=skip, limit=limit)

    async def create_for_investor(self, investor_id: int, data: ContactCreate) -> Contact:
        """Add a contact to an investor; 404 when the investor is missing."""
        await InvestorService(self.session).ensure_exists(investor_id, lock=True)
        return await self.create(data, investor_id=investor_id)
