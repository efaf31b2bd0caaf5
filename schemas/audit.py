"""The audit trail as the API shows it: entries, their filters, pages and cursor."""

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    WithJsonSchema,
)

from models.audit import ActorKind, AuditAction
from schemas.common import PG_INT_MAX, Page, ReadModel

# PostgreSQL BIGINT: entity ids and entry ids fit in it.
PG_BIGINT_MAX = 2**63 - 1

# The names an entry's `entity` takes (singular, lowercase); `audit` is the trail itself (its
# retention purge).
AuditEntity = Literal[
    "user", "investor", "contact", "interaction", "kpi", "task", "follow_up_rule", "audit"
]
AUDIT_ENTITIES: tuple[str, ...] = get_args(AuditEntity)

# `total` stops counting here: past it the answer means "this many or more".
AUDIT_TOTAL_CAP = 10_000


# RFC 3339, as the schema's `date-time` format says: no bare number taken for a timestamp.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be a date and time with its offset, as 2026-11-01T09:30:00+01:00")
    return value


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # an offset pushing year 1 or 9999 out of range
        raise ValueError("is out of range") from None


Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_utc)]


class AuditFilters(BaseModel):
    """Optional filters of the trail; none is applied unless sent. `from` and `to` inclusive."""

    entity: AuditEntity | None = None
    entity_id: int | None = Field(default=None, ge=1, le=PG_BIGINT_MAX)
    actor_id: int | None = Field(default=None, ge=1, le=PG_INT_MAX)
    action: AuditAction | None = None
    from_: Moment | None = None
    to: Moment | None = None


class AuditRead(ReadModel):
    id: int
    at: datetime
    actor_id: int | None
    actor_kind: ActorKind
    action: AuditAction
    entity: str
    entity_id: int | None
    investor_id: int | None
    changes: dict[str, Any] | None
    request_id: str | None
    client_address: str | None
    count: int


_INVALID_CURSOR = "is not a cursor this list returned"
# The canonical base64url (no padding) of `{"id":<digits>}`: `{"id":` encodes to eyJpZCI6.
CURSOR_PATTERN = "^eyJpZCI6[A-Za-z0-9_-]{2,28}$"
CURSOR_MAX_LENGTH = 36


class AuditCursor(BaseModel):
    """Where the next page (newest first) resumes: below the last entry's id."""

    id: int

    def encode(self) -> str:
        raw = json.dumps({"id": self.id}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Self:
        """The cursor in `token`; ValueError unless `encode` gives back exactly this token."""
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (binascii.Error, ValueError):
            raise ValueError(_INVALID_CURSOR) from None
        if not isinstance(data, dict) or set(data) != {"id"}:
            raise ValueError(_INVALID_CURSOR)
        id_ = data["id"]
        if type(id_) is not int or not 1 <= id_ <= PG_BIGINT_MAX:
            raise ValueError(_INVALID_CURSOR)
        cursor = cls(id=id_)
        if cursor.encode() != token:
            raise ValueError(_INVALID_CURSOR)
        return cursor


class AuditPage(Page[AuditRead]):
    """A page of the trail, newest first, with the cursor that resumes after its last entry."""

    total: int = Field(
        description=f"Matching entries, counted up to {AUDIT_TOTAL_CAP:,}: that value means "
        "this many or more"
    )
    # Left out on the last page, as the investor list's.
    next_cursor: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        default=None,
        exclude_if=lambda cursor: cursor is None,
        description="Pass as `cursor` for the next page; absent on the last page",
    )
