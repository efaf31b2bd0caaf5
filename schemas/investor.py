import base64
import binascii
import json
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    TypeAdapter,
    WithJsonSchema,
)

from models.investor import ClientType, PipelineStage, StageChangeSource
from schemas.common import (
    PG_INT_MAX,
    InputModel,
    LongText,
    Name,
    OptionalEmail,
    Page,
    Phone,
    ReadModel,
    RowId,
    ShortText,
    StrictBool,
    bounded_str,
    omittable,
)
from schemas.contact import ContactRead


class InvestorCreate(InputModel):
    name: Name
    email: OptionalEmail = None
    phone: Phone | None = None
    website: ShortText | None = None
    company: ShortText | None = None
    industry: ShortText | None = None
    notes: LongText | None = None
    pipeline_stage: PipelineStage = PipelineStage.prospect_froid
    client_type: ClientType | None = None
    is_active: StrictBool = True
    owner_id: RowId | None = Field(
        default=None,
        description="The salesperson in charge (an active user); left out: the creator; "
        "null: unassigned. Only a manager or an admin may name someone else.",
    )


class InvestorUpdate(InputModel):
    name: Name = omittable()
    email: OptionalEmail = None
    phone: Phone | None = None
    website: ShortText | None = None
    company: ShortText | None = None
    industry: ShortText | None = None
    notes: LongText | None = None
    pipeline_stage: PipelineStage = omittable()
    client_type: ClientType | None = None
    is_active: StrictBool = omittable()
    owner_id: RowId | None = Field(
        default=None,
        description="The salesperson in charge (an active user), or null for unassigned. "
        "Only a manager or an admin may name someone else.",
    )


class InvestorRead(ReadModel):
    id: int
    name: str
    email: str | None
    phone: str | None
    website: str | None
    company: str | None
    industry: str | None
    notes: str | None
    pipeline_stage: PipelineStage
    client_type: ClientType | None
    is_active: bool
    owner_id: int | None
    created_at: datetime
    updated_at: datetime


class InvestorActivity(ReadModel):
    """Counts shown on the investor detail, computed in SQL."""

    interaction_count: int = 0
    last_interaction_date: date | None = None
    kpi_count: int = 0


class InvestorDetail(InvestorRead, InvestorActivity):
    """One investor with its contacts and activity counts."""

    contacts: list[ContactRead]


InvestorSort = Literal[
    "name",
    "-name",
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "pipeline_stage",
    "-pipeline_stage",
]
INVESTOR_SORTS: tuple[str, ...] = get_args(InvestorSort)


def _cursor_pattern() -> str:
    """What a cursor looks like: the canonical base64url (no padding) of `InvestorCursor.encode`'s
    JSON, which always begins `{"sort":"<a sort key>","key":`. What follows (the row's sort
    value and id) is checked by `InvestorCursor.decode`: no pattern can say which rows exist."""
    heads = []
    for sort in INVESTOR_SORTS:
        head = f'{{"sort":{json.dumps(sort)},"key":'.encode()
        # The whole 3-byte groups of the head encode to the same characters in every cursor.
        heads.append(base64.urlsafe_b64encode(head[: len(head) - len(head) % 3]).decode())
    char = "[A-Za-z0-9_-]"
    # A final group of 2 or 3 characters ends in one whose unused low bits are zero.
    tail = f"(?:{char}{{4}})*(?:{char}{{2}}[AEIMQUYcgkosw048]|{char}[AQgw])?"
    return f"^(?:{'|'.join(heads)}){tail}$"


CURSOR_PATTERN = _cursor_pattern()
# Fits a 255-character name even when every character is JSON-escaped.
CURSOR_MAX_LENGTH = 2400

# What the last row's sort value must be, per sort key (NUL-free: Postgres text cannot hold it).
_CURSOR_KEYS: dict[str, TypeAdapter[Any]] = {
    "name": TypeAdapter(Annotated[StrictStr, Field(max_length=255, pattern="^[^\\x00]*$")]),
    "created_at": TypeAdapter(AwareDatetime),
    "updated_at": TypeAdapter(AwareDatetime),
    "pipeline_stage": TypeAdapter(
        Annotated[int, Field(strict=True, ge=0, le=len(PipelineStage) - 1)]
    ),
}
_INVALID_CURSOR = "is not a cursor this list returned"


class InvestorCursor(BaseModel):
    """Where a keyset page resumes: the sort it belongs to, the last row's sort value and id."""

    model_config = ConfigDict(frozen=True)

    sort: InvestorSort
    key: str | int | datetime
    id: int

    def encode(self) -> str:
        key = self.key.astimezone(UTC).isoformat() if isinstance(self.key, datetime) else self.key
        raw = json.dumps({"sort": self.sort, "key": key, "id": self.id}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Self:
        """The cursor in `token`; ValueError unless `encode` gives back exactly this token."""
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            if not isinstance(data, dict) or set(data) != {"sort", "key", "id"}:
                raise ValueError(_INVALID_CURSOR)
            sort, key, id_ = data["sort"], data["key"], data["id"]
            if sort not in INVESTOR_SORTS or type(id_) is not int or not 1 <= id_ <= PG_INT_MAX:
                raise ValueError(_INVALID_CURSOR)
            key = _CURSOR_KEYS[sort.lstrip("-")].validate_python(key)
            if isinstance(key, datetime):
                # Fails for offsets that would push year 1 or 9999 out of range in UTC.
                key = key.astimezone(UTC)
            cursor = cls(sort=sort, key=key, id=id_)
        except (binascii.Error, ValueError, OverflowError):
            raise ValueError(_INVALID_CURSOR) from None
        # Only the canonical form is accepted: no re-padded, re-ordered or retyped variant.
        if cursor.encode() != token:
            raise ValueError(_INVALID_CURSOR)
        return cursor


class InvestorPage(Page[InvestorRead]):
    """A page of the investor list, with the cursor that resumes after its last row."""

    # Left out on the last page, so a page read with skip/limit keeps its former shape there.
    next_cursor: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        default=None,
        exclude_if=lambda cursor: cursor is None,
        description="Pass as `cursor` for the next page (keyset paging); absent on the last page",
    )


# Whose investors a list or a search keeps: a user id, the caller's (`me`) or nobody's (`none`).
OwnerRef = Annotated[
    str,
    Field(
        pattern=r"^(?:me|none|[1-9][0-9]{0,9})$",
        description="A user id, `me` (the caller) or `none` (unassigned)",
    ),
]


class InvestorFilters(BaseModel):
    """Optional list filters; none is applied unless sent."""

    pipeline_stage: PipelineStage | None = None
    client_type: ClientType | None = None
    is_active: bool | None = None
    owner_id: OwnerRef | None = None


# The `q` of a search: trimmed, 1-200 characters, no NUL byte.
SearchText = bounded_str(200, min_length=1)


class StageChangeRead(ReadModel):
    id: int
    investor_id: int
    from_stage: PipelineStage | None
    to_stage: PipelineStage
    changed_at: datetime
    changed_by: int | None
    # `import` for the moves an import made (they fire no follow-up rule), `api` otherwise.
    source: StageChangeSource


class InvestorStats(BaseModel):
    total_count: int
    active_count: int
    by_pipeline_stage: dict[PipelineStage, int]
    # Every client type, plus "non_renseigne" for investors without one.
    by_client_type: dict[ClientType | Literal["non_renseigne"], int]
