"""Contacts: the people at an investor."""

from fastapi import APIRouter, status

from api.deps import ContactReader, ContactWriter, CurrentUser, IdPath, PageParams
from api.responses import AUTHENTICATED, errors
from schemas.common import Page
from schemas.contact import ContactCreate, ContactRead, ContactUpdate

router = APIRouter(prefix="/contacts", tags=["contacts"])


@router.get(
    "/investor/{investor_id:id}",
    response_model=Page[ContactRead],
    responses=errors(*AUTHENTICATED, 404),
)
async def list_investor_contacts(
    investor_id: IdPath, _: CurrentUser, contacts: ContactReader, page: PageParams
) -> Page[ContactRead]:
    """List an investor's contacts, by name."""
    items, total = await contacts.list_for_investor(investor_id, skip=page.skip, limit=page.limit)
    return page.of(ContactRead, items, total)


@router.post(
    "/investor/{investor_id:id}",
    response_model=ContactRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(*AUTHENTICATED, 404),
)
async def create_contact(
    investor_id: IdPath, body: ContactCreate, _: CurrentUser, contacts: ContactWriter
) -> ContactRead:
    """Add a contact to an investor."""
    return ContactRead.model_validate(await contacts.create_for_investor(investor_id, body))


@router.get("/{contact_id:id}", response_model=ContactRead, responses=errors(*AUTHENTICATED, 404))
async def read_contact(contact_id: IdPath, _: CurrentUser, contacts: ContactReader) -> ContactRead:
    """Read a contact."""
    return ContactRead.model_validate(await contacts.get(contact_id))


@router.put("/{contact_id:id}", response_model=ContactRead, responses=errors(*AUTHENTICATED, 404))
@router.patch("/{contact_id:id}", response_model=ContactRead, responses=errors(*AUTHENTICATED, 404))
async def update_contact(
    contact_id: IdPath, body: ContactUpdate, _: CurrentUser, contacts: ContactWriter
) -> ContactRead:
    """Update a contact (only the fields sent change)."""
    contact = await contacts.get(contact_id, for_update=True)
    return ContactRead.model_validate(await contacts.update(contact, body))


@router.delete(
    "/{contact_id:id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(*AUTHENTICATED, 404),
)
async def delete_contact(contact_id: IdPath, user: CurrentUser, contacts: ContactWriter) -> None:
    """Move a contact to the trash."""
    contact = await contacts.get(contact_id, for_update=True)
    await contacts.delete(contact, deleted_by=user.id)
