"""What the GDPR API takes and returns."""

from datetime import datetime

from pydantic import BaseModel, Field

from models.gdpr import GdprEntity
from schemas.common import Email, InputModel, ReadModel, RowId
from schemas.contact import ContactRead
from schemas.interaction import InteractionRead
from schemas.investor import InvestorRead
from schemas.user import UserRead


class AnonymizeRequest(InputModel):
    """The record whose person is to be forgotten."""

    entity: GdprEntity
    id: RowId


class AnonymizeResult(ReadModel):
    """The anonymisation done: which record, when, and how many rows it changed."""

    entity: GdprEntity
    id: int
    anonymized_at: datetime
    contacts: int = Field(description="Contacts anonymised (the contact itself, or the investor's)")
    interactions: int = Field(description="Interactions whose subject and notes were removed")


class PersonalDataExport(BaseModel):
    """Every record holding the person's email, and the interactions about them (GDPR
    articles 15 and 20); records in the trash included, since they are still held."""

    email: str
    exported_at: datetime
    users: list[UserRead]
    investors: list[InvestorRead]
    contacts: list[ContactRead]
    interactions: list[InteractionRead]


class ExportQuery(BaseModel):
    email: Email
