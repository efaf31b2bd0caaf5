from datetime import datetime

from schemas.common import (
    InputModel,
    LongText,
    Name,
    OptionalEmail,
    Phone,
    ReadModel,
    ShortText,
    omittable,
)


class ContactCreate(InputModel):
    name: Name
    email: OptionalEmail = None
    phone: Phone | None = None
    title: ShortText | None = None
    notes: LongText | None = None


class ContactUpdate(InputModel):
    name: Name = omittable()
    email: OptionalEmail = None
    phone: Phone | None = None
    title: ShortText | None = None
    notes: LongText | None = None


class ContactRead(ReadModel):
    id: int
    investor_id: int
    name: str
    email: str | None
    phone: str | None
    title: str | None
    notes: str | None
    created_at: datetime
    updated_at: datetime
