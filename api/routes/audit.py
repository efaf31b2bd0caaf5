"""The audit trail: who changed what, when, from where (admin and manager)."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from api.deps import AuditReader, CurrentUser, PageParams
from api.responses import AUTHENTICATED, errors
from models.audit import AuditAction
from schemas.audit import (
    AUDIT_TOTAL_CAP,
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    PG_BIGINT_MAX,
    AuditCursor,
    AuditEntity,
    AuditFilters,
    AuditPage,
    AuditRead,
    Moment,
)
from schemas.common import PG_INT_MAX

router = APIRouter(prefix="/audit", tags=["audit"])

# The `cursor` query parameter of the trail's pages (the list's and an investor's history).
CursorParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=CURSOR_MAX_LENGTH,
        pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page, with the same filters (skip must "
        "then be 0): deep pages stay fast, unlike a large skip",
    ),
]

PAGING = (
    "Newest first. `total` counts the matching entries up to "
    f"{AUDIT_TOTAL_CAP:,}: that value means {AUDIT_TOTAL_CAP:,} or more. Page with `cursor` "
    "(the previous page's `next_cursor`)."
)


def resume_after(cursor: str | None, *, skip: int) -> AuditCursor | None:
    """The decoded `cursor`; a 422 like any other invalid parameter when it cannot be used."""
    if cursor is None:
        return None
    try:
        after = AuditCursor.decode(cursor)
    except ValueError as exc:
        raise _invalid("cursor", str(exc)) from None
    if skip:
        raise _invalid("skip", "must be 0 with a cursor, which already says where the page starts")
    return after


def _invalid(parameter: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", parameter), "msg": f"Value error, {message}"}]
    )


def page_of(rows: list[object], total: int, next_cursor: str | None, page: PageParams) -> AuditPage:
    return AuditPage(
        items=[AuditRead.model_validate(row) for row in rows],
        total=total,
        skip=page.skip,
        limit=page.limit,
        next_cursor=next_cursor,
    )


@router.get(
    "",
    response_model=AuditPage,
    responses=errors(*AUTHENTICATED, 403),
    description="The audit trail: every change to users, investors, contacts, interactions "
    f"and KPIs, and logins, filtered by entity, record, author, action and period. {PAGING} "
    "`from` after `to` is 422 `invalid_period`.",
)
async def list_audit_entries(
    _: CurrentUser,
    entries: AuditReader,
    page: PageParams,
    entity: Annotated[AuditEntity | None, Query(description="Entity name")] = None,
    entity_id: Annotated[int | None, Query(ge=1, le=PG_BIGINT_MAX)] = None,
    actor_id: Annotated[
        int | None, Query(ge=1, le=PG_INT_MAX, description="The user who made the change")
    ] = None,
    action: Annotated[AuditAction | None, Query()] = None,
    from_: Annotated[
        Moment | None,
        Query(alias="from", description="Entries at or after this moment (with its offset)"),
    ] = None,
    to: Annotated[
        Moment | None,
        Query(description="Entries at or before this moment (with its offset)"),
    ] = None,
    cursor: CursorParam = None,
) -> AuditPage:
    """The audit trail, newest first, filtered by entity, record, author, action and period."""
    filters = AuditFilters(
        entity=entity, entity_id=entity_id, actor_id=actor_id, action=action, from_=from_, to=to
    )
    after = resume_after(cursor, skip=page.skip)
    rows, total, next_cursor = await entries.list_entries(
        filters, skip=page.skip, limit=page.limit, after=after
    )
    return page_of(list(rows), total, next_cursor, page)
