"""Input types shared by every schema: strict, trimmed, bounded, free of NUL bytes."""

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

# PostgreSQL INTEGER bounds: ids beyond them cannot exist.
PG_INT_MAX = 2**31 - 1

_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def _reject_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


# What str.strip() removes, spelled for a JSON Schema (ECMA) pattern: `\s` there differs.
_SPACE_CLASS = "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace())


class _NulFreeJsonSchema:
    """Publishes in the JSON schema what the validators refuse: NUL bytes and, for a text with
    a minimum length, a value shorter than that once trimmed, so the schema is as strict as the
    code."""

    def __init__(self, *, min_trimmed_length: int = 0) -> None:
        edge = f"[^\\u0000{_SPACE_CLASS}]"
        if min_trimmed_length == 0:
            self.pattern = "^[^\\u0000]*$"
        elif min_trimmed_length == 1:
            self.pattern = f"^[^\\u0000]*{edge}[^\\u0000]*$"
        else:
            # Spaces, a first and a last character that are not, and enough in between.
            middle = f"[^\\u0000]{{{min_trimmed_length - 2},}}"
            self.pattern = f"^[{_SPACE_CLASS}]*{edge}{middle}{edge}[{_SPACE_CLASS}]*$"

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["pattern"] = self.pattern
        return schema


_NUL_FREE = _NulFreeJsonSchema()
_NON_BLANK = _NulFreeJsonSchema(min_trimmed_length=1)


def _check_email(value: str) -> str:
    local, _, domain = value.rpartition("@")
    if not _EMAIL_RE.match(value) or len(local) > 64:
        raise ValueError("is not a valid email address")
    return f"{local}@{domain.lower()}"


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


class InputModel(BaseModel):
    """Base of request bodies: unknown fields (including server-owned ones) are 422."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def omittable() -> Any:
    """Default for a partial-update field that may be left out but never set to null."""
    return Field(default=None)


def _untrimmed_max_length(max_length: int) -> BeforeValidator:
    """The maximum length checked before trimming as well: the published `maxLength` counts
    every character sent, spaces around included. Goes last in the `Annotated`, to run first."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and len(value) > max_length:
            raise PydanticCustomError(
                "string_too_long",
                "String should have at most {max_length} characters",
                {"max_length": max_length},
            )
        return value

    return BeforeValidator(check)


def bounded_str(max_length: int, *, min_length: int = 0) -> Any:
    """A trimmed, NUL-free string type with these bounds (for query parameters)."""
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        AfterValidator(_reject_nul),
        _NulFreeJsonSchema(min_trimmed_length=min_length),
        _untrimmed_max_length(max_length),
    ]


# A required name: trimmed, 1..255 characters, so a blank name is 422.
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_reject_nul),
    _NON_BLANK,
    _untrimmed_max_length(255),
]
# A required title (a task's, a follow-up rule's): trimmed, 1..200 characters.
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_reject_nul),
    _NON_BLANK,
    _untrimmed_max_length(200),
]
ShortText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=255),
    AfterValidator(_reject_nul),
    _NUL_FREE,
    _untrimmed_max_length(255),
]
Phone = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=50),
    AfterValidator(_reject_nul),
    _NUL_FREE,
    _untrimmed_max_length(50),
]
LongText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=10_000),
    AfterValidator(_reject_nul),
    _NUL_FREE,
    _untrimmed_max_length(10_000),
]

Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=254),
    AfterValidator(_reject_nul),
    AfterValidator(_check_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 254}),
    _untrimmed_max_length(254),
]
# An optional email where an empty string means "none".
OptionalEmail = Annotated[
    Email | None,
    BeforeValidator(_blank_to_none),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "email", "maxLength": 254},
                {"type": "string", "pattern": f"^[{_SPACE_CLASS}]*$"},
                {"type": "null"},
            ]
        }
    ),
]

PASSWORD_MIN_LENGTH = 8
# Trimmed like every input text (at login too): the length counts once trimmed.
Password = Annotated[
    str,
    StringConstraints(min_length=PASSWORD_MIN_LENGTH, max_length=128),
    AfterValidator(_reject_nul),
    _NulFreeJsonSchema(min_trimmed_length=PASSWORD_MIN_LENGTH),
    _untrimmed_max_length(128),
]
# A password typed to prove who one is (login, current password): not bounded by the policy,
# so an old or wrong password still gets a 401.
SubmittedPassword = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=1024),
    AfterValidator(_reject_nul),
    _NON_BLANK,
    _untrimmed_max_length(1024),
]


def _strict_date(value: Any) -> Any:
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date in YYYY-MM-DD format")
    return value


_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|z|[+-]\d{2}:?\d{2})"
)


def _strict_datetime(value: Any) -> Any:
    # ISO 8601 with its offset only: a bare number would be read as a Unix time, and a time
    # without a zone would depend on the server's.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _DATETIME_RE.fullmatch(value):
        raise ValueError("must be an ISO 8601 date-time with its offset, as 2026-11-26T09:30:00Z")
    return value


def _strict_decimal(value: Any) -> Any:
    # JSON numbers only: strings and booleans are refused so money is never guessed.
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return Decimal(str(value))


def _integral_number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Integer:
    """`Annotated[int, Integer(ge=..., le=...)]`: an integer of a JSON body, within bounds.

    JSON Schema calls 406.0 an integer, so the published `integer` accepts it, as 406; 406.5,
    JSON `true` and `"3"` stay 422. Query parameters keep plain `int`: their value is text, and
    Pydantic already reads "406.0" as 406 and refuses "406.5" there.
    """

    def __init__(self, *, ge: int, le: int) -> None:
        self.ge, self.le = ge, le

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        # The bounds live here rather than in a `Field` around the conversion: there, Pydantic
        # checks them but leaves them out of the published schema.
        strict_int = core_schema.int_schema(strict=True, ge=self.ge, le=self.le)
        return core_schema.no_info_before_validator_function(_integral_number, strict_int)


Count = Annotated[int, Integer(ge=0, le=PG_INT_MAX)]
# A reference to a row by its id, in a request body.
RowId = Annotated[int, Integer(ge=1, le=PG_INT_MAX)]
# Strict: `0` is not a boolean.
StrictBool = Annotated[bool, Strict()]
StrictDate = Annotated[date, BeforeValidator(_strict_date)]
StrictDateTime = Annotated[AwareDatetime, BeforeValidator(_strict_datetime)]


def _as_number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


# Exact in Python, written as a JSON number (Pydantic would write a string by default).
JsonDecimal = Annotated[
    Decimal,
    PlainSerializer(_as_number, return_type=float, when_used="json"),
    WithJsonSchema({"type": "number"}),
]


_money_json = PlainSerializer(_as_number, return_type=float, when_used="json")

# Euros, NUMERIC(14,2): JSON numbers with at most 2 decimals, never strings.
Money = Annotated[
    Decimal,
    BeforeValidator(_strict_decimal),
    Field(ge=Decimal(0), le=Decimal("999999999999.99"), max_digits=14, decimal_places=2),
    _money_json,
    WithJsonSchema(
        {"type": "number", "minimum": 0, "maximum": 999999999999.99, "multipleOf": 0.01}
    ),
]
# A percentage, NUMERIC(5,2) from 0 to 100.
Percent = Annotated[
    Decimal,
    BeforeValidator(_strict_decimal),
    Field(ge=Decimal(0), le=Decimal(100), max_digits=5, decimal_places=2),
    _money_json,
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}),
]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    skip: int
    limit: int


class ErrorBody(BaseModel):
    detail: str
    code: str
    request_id: str
