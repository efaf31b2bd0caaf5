from datetime import datetime

from models.notification import NotificationKind
from schemas.common import InputModel, ReadModel, StrictBool


class NotificationRead(ReadModel):
    id: int
    kind: NotificationKind
    title: str
    body: str | None
    # An API path, e.g. /api/v1/investors/12.
    link: str | None
    created_at: datetime
    read_at: datetime | None


class UnreadCount(ReadModel):
    count: int


class StreamTicketRead(ReadModel):
    """A single-use pass to GET /notifications/stream?ticket=..., valid `expires_in` seconds."""

    ticket: str
    expires_in: int


class Preferences(ReadModel):
    daily_digest: bool


class PreferencesUpdate(InputModel):
    """The caller's preferences, all of them (PUT)."""

    daily_digest: StrictBool
