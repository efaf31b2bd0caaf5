"""Investors: list, search, stats, detail, create, update, pipeline moves, history, delete."""

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.exceptions import RequestValidationError

from api.deps import (
    AuditReader,
    CurrentUser,
    IdPath,
    InvestorReader,
    InvestorWriter,
    PageParams,
    TaskReader,
)
from api.responses import AUTHENTICATED, errors
from api.routes.audit import PAGING, CursorParam, page_of, resume_after
from schemas.audit import AuditPage
from schemas.common import Page
from schemas.investor import (
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    InvestorCreate,
    InvestorCursor,
    InvestorDetail,
    InvestorFilters,
    InvestorPage,
    InvestorRead,
    InvestorSort,
    InvestorStats,
    InvestorUpdate,
    OwnerRef,
    SearchText,
    StageChangeRead,
)
from schemas.task import TaskRead
from services import investor_search
from services.investor_search import ANY_OWNER, SEARCH_CANDIDATES
from services.investors import owner_of

router = APIRouter(prefix="/investors", tags=["investors"])


def _resume_after(cursor: str | None, *, sort: str, skip: int) -> InvestorCursor | None:
    """The decoded `cursor`; a 422 like any other invalid parameter when it cannot be used."""
    if cursor is None:
        return None
    try:
        after = InvestorCursor.decode(cursor)
    except ValueError as exc:
        raise _invalid("cursor", str(exc)) from None
    if after.sort != sort:
        raise _invalid("cursor", f"belongs to sort '{after.sort}', not '{sort}'")
    if skip:
        raise _invalid("skip", "must be 0 with a cursor, which already says where the page starts")
    return after


def _invalid(parameter: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", parameter), "msg": f"Value error, {message}"}]
    )


# First: routes are tried in order on every request, and reading one investor is the most
# frequent (the id pattern leaves /stats and /search to their routes).
@router.get(
    "/{investor_id:id}", response_model=InvestorDetail, responses=errors(*AUTHENTICATED, 404)
)
async def read_investor(
    investor_id: IdPath, _: CurrentUser, investors: InvestorReader
) -> InvestorDetail:
    """Read an investor with its contacts and activity counts."""
    return await investors.get_detail(investor_id)


@router.get("", response_model=InvestorPage, responses=errors(*AUTHENTICATED))
async def list_investors(
    user: CurrentUser,
    investors: InvestorReader,
    page: PageParams,
    filters: Annotated[InvestorFilters, Query()],
    sort: Annotated[InvestorSort, Query(description="Sort key, `-` for descending")] = "name",
    cursor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=CURSOR_MAX_LENGTH,
            pattern=CURSOR_PATTERN,
            description="`next_cursor` of the previous page, with the same sort and filters "
            "(skip must then be 0): deep pages stay fast, unlike a large skip",
        ),
    ] = None,
) -> InvestorPage:
    """List investors, optionally filtered by stage, client type, activity and owner."""
    after = _resume_after(cursor, sort=sort, skip=page.skip)
    items, total, next_cursor = await investors.list_investors(
        filters, sort=sort, skip=page.skip, limit=page.limit, caller_id=user.id, after=after
    )
    return InvestorPage(
        items=[InvestorRead.model_validate(investor) for investor in items],
        total=total,
        skip=page.skip,
        limit=page.limit,
        next_cursor=next_cursor,
    )


@router.get(
    "/search",
    response_model=Page[InvestorRead],
    responses=errors(*AUTHENTICATED),
    description="Search investors and their contacts, ignoring case and accents, tolerating "
    f"typos. Only the {SEARCH_CANDIDATES} best matches are ranked and paged (then filtered by "
    "`owner_id`, if sent): `total` counts them (so it stops there), and literal matches come "
    "before approximate ones. A term of one "
    "or two characters (once accents are removed) only matches the start of a word of an "
    "investor's name or company or of a contact's name: `ro` finds Rothschild, not Caroline.",
)
async def search_investors(
    user: CurrentUser,
    investors: InvestorReader,
    page: PageParams,
    q: Annotated[SearchText, Query(description="Text to look for (1-200 characters)")],
    owner_id: Annotated[OwnerRef | None, Query()] = None,
) -> Page[InvestorRead]:
    """Search investors and their contacts, ignoring case and accents, tolerating typos."""
    items, total = await investor_search.search_investors(
        investors.session,
        q,
        skip=page.skip,
        limit=page.limit,
        owner_id=ANY_OWNER if owner_id is None else owner_of(owner_id, user.id),
    )
    return page.of(InvestorRead, items, total)


@router.get("/stats", response_model=InvestorStats, responses=errors(*AUTHENTICATED))
async def investor_stats(_: CurrentUser, investors: InvestorReader) -> InvestorStats:
    """Investor counts: total, active, by pipeline stage and by client type."""
    return await investors.stats()


@router.post(
    "",
    response_model=InvestorRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(*AUTHENTICATED, 403, 409),
)
async def create_investor(
    body: InvestorCreate, user: CurrentUser, investors: InvestorWriter
) -> InvestorRead:
    """Create an investor."""
    return InvestorRead.model_validate(await investors.create_investor(body, caller=user))


@router.put(
    "/{investor_id:id}",
    response_model=InvestorRead,
    responses=errors(*AUTHENTICATED, 403, 404, 409),
)
@router.patch(
    "/{investor_id:id}",
    response_model=InvestorRead,
    responses=errors(*AUTHENTICATED, 403, 404, 409),
)
async def update_investor(
    investor_id: IdPath, body: InvestorUpdate, user: CurrentUser, investors: InvestorWriter
) -> InvestorRead:
    """Update an investor (only the fields sent change)."""
    investor = await investors.update_investor(investor_id, body, caller=user)
    return InvestorRead.model_validate(investor)


@router.put(
    "/{investor_id:id}/move-to-next-stage",
    response_model=InvestorRead,
    responses=errors(*AUTHENTICATED, 404, 409),
)
async def move_to_next_stage(
    investor_id: IdPath, user: CurrentUser, investors: InvestorWriter
) -> InvestorRead:
    """Move an investor one step along the pipeline (409 from client or perdu)."""
    investor = await investors.move_to_next_stage(investor_id, changed_by=user.id)
    return InvestorRead.model_validate(investor)


@router.get(
    "/{investor_id:id}/stage-history",
    response_model=list[StageChangeRead],
    responses=errors(*AUTHENTICATED, 404),
)
async def stage_history(
    investor_id: IdPath, _: CurrentUser, investors: InvestorReader
) -> list[StageChangeRead]:
    """The investor's pipeline stage changes, oldest first."""
    changes = await investors.stage_history(investor_id)
    return [StageChangeRead.model_validate(change) for change in changes]


@router.get(
    "/{investor_id:id}/tasks",
    response_model=Page[TaskRead],
    responses=errors(*AUTHENTICATED, 404),
)
async def investor_tasks(
    investor_id: IdPath, _: CurrentUser, tasks: TaskReader, page: PageParams
) -> Page[TaskRead]:
    """Every task about the investor, whatever its status, by due date."""
    items, total = await tasks.list_for_investor(investor_id, skip=page.skip, limit=page.limit)
    return page.of(TaskRead, items, total)


@router.get(
    "/{investor_id:id}/history",
    response_model=AuditPage,
    responses=errors(*AUTHENTICATED, 404),
    description="What happened to the investor, its contacts, interactions and KPIs, from the "
    f"audit trail. {PAGING}",
)
async def investor_history(
    investor_id: IdPath,
    _: CurrentUser,
    entries: AuditReader,
    page: PageParams,
    cursor: CursorParam = None,
) -> AuditPage:
    """The audit trail of an investor, its contacts, interactions and KPIs, newest first."""
    after = resume_after(cursor, skip=page.skip)
    rows, total, next_cursor = await entries.investor_history(
        investor_id, skip=page.skip, limit=page.limit, after=after
    )
    return page_of(list(rows), total, next_cursor, page)


@router.delete(
    "/{investor_id:id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(*AUTHENTICATED, 404),
)
async def delete_investor(
    investor_id: IdPath, user: CurrentUser, investors: InvestorWriter
) -> None:
    """Move an investor to the trash with its contacts, interactions and KPIs."""
    await investors.delete_investor(investor_id, deleted_by=user.id)
