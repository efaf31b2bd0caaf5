"""Investor search: accent- and case-insensitive, typo-tolerant, over investors and contacts.

Each form of match is a PL/pgSQL function of migration 0008, which PostgreSQL plans anew for
the term it is given (`plan_cache_mode = force_custom_plan` in the function's own settings).
The term and the cap are always bound parameters: nothing from a request or from stored data
is ever written into SQL text (docs/adr/0003-recherche.md).
"""

from sqlalchemy import (
    CTE,
    BindParameter,
    Float,
    Integer,
    Select,
    Subquery,
    Text,
    bindparam,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.functions import Function

from models.investor import Investor
from services.investors import READ_COLUMNS

# Search ranks at most this many investors: a common term ("banque") matches hundreds of
# thousands, and scoring them all took seconds at 1M investors. `total` counts the ranked ones.
SEARCH_CANDIDATES = 1000

Hits = Select[tuple[int, float]]


def _hits(matches: Function[None]) -> Hits:
    # Every match function returns (investor_id, score) rows, at most the cap.
    found = matches.table_valued(
        literal_column("investor_id", Integer), literal_column("score", Float)
    ).render_derived("found", with_types=False)
    return select(found.c.investor_id, found.c.score)


def word_start_matches(term: BindParameter[str], cap: BindParameter[int]) -> Hits:
    """Investors whose name or company, or a contact's name, has a word starting with `term`,
    when `term` has one or two characters once normalised."""
    return _hits(func.crm_search_word_start_matches(term, cap))


def literal_matches(term: BindParameter[str], cap: BindParameter[int]) -> Hits:
    """Investors any of whose fields, or a contact's name or email, holds `term` as it is
    (case and accents aside), when `term` has three characters or more."""
    return _hits(func.crm_search_literal_matches(term, cap))


def close_word_matches(term: BindParameter[str], cap: BindParameter[int]) -> Hits:
    """Investors whose name or company, or a contact's name or email, holds a known word close
    to each word of three letters or more of `term` (a misspelling)."""
    return _hits(func.crm_search_close_word_matches(term, cap))


def best_matches(term: BindParameter[str], cap: BindParameter[int]) -> CTE:
    """(investor_id, score) of the best `cap` investors matching `term` in any form: a literal
    match ranks above any approximate one, and each form has its own cap so close matches
    cannot crowd literal ones out."""
    found = union_all(
        word_start_matches(term, cap),
        literal_matches(term, cap),
        close_word_matches(term, cap),
    ).subquery("hits")
    best_score = func.max(found.c.score)
    return (
        select(found.c.investor_id, best_score.label("score"))
        .group_by(found.c.investor_id)
        .order_by(best_score.desc(), found.c.investor_id)
        .limit(cap)
        .cte("best")
    )


def _search_statements(*, by_owner: bool) -> tuple[Select[tuple[int]], Select[tuple[object, ...]]]:
    """The total of the best matches alone, and a page of them with their total; `by_owner`:
    only the matches whose owner is the `owner_id` parameter (null: unassigned ones)."""
    best: CTE | Subquery = best_matches(bindparam("q", type_=Text), bindparam("cap", type_=Integer))
    if by_owner:
        # Among the best matches (at most the cap), by primary key.
        best = (
            select(best.c.investor_id, best.c.score)
            .join(Investor, Investor.id == best.c.investor_id)
            .where(Investor.owner_id.is_not_distinct_from(bindparam("owner_id", type_=Integer)))
            .subquery("owned")
        )
    # The matches are found (and scored) once, in a CTE that gives both the total and the page.
    total = select(func.count()).select_from(best).scalar_subquery()
    page = (
        select(best.c.investor_id, best.c.score)
        .order_by(best.c.score.desc(), best.c.investor_id)
        .offset(bindparam("skip", type_=Integer))
        .limit(bindparam("limit", type_=Integer))
        .subquery("page")
    )
    # Each page row fetches its investor by primary key. LIMIT 1 keeps the subquery lateral
    # (PostgreSQL would otherwise flatten it into a join it may plan as a walk of the whole
    # primary key when its statistics are stale).
    investor = (
        select(*READ_COLUMNS).where(Investor.id == page.c.investor_id).limit(1).lateral("investor")
    )
    paged = (
        select(investor, total.label("total"))
        .select_from(page)
        .join(investor, literal_column("true"))
        .order_by(page.c.score.desc(), investor.c.id)
    )
    return select(total), paged


# Built once: SQLAlchemy memoises a statement's cache key on the object, so requests skip
# building the statement and generating its key.
_TOTAL, _PAGE = _search_statements(by_owner=False)
_OWNED_TOTAL, _OWNED_PAGE = _search_statements(by_owner=True)

# No owner filter (an owner filter of `none` is None: unassigned).
ANY_OWNER = -1


async def search_investors(
    session: AsyncSession, q: str, *, skip: int, limit: int, owner_id: int | None = ANY_OWNER
) -> tuple[list[RowMapping], int]:
    """A page of the investors best matching `q`, best first, and how many were ranked (among
    those of `owner_id`, when given)."""
    params = {"q": q, "cap": SEARCH_CANDIDATES, "skip": skip, "limit": limit}
    total_stmt, page_stmt = _TOTAL, _PAGE
    if owner_id != ANY_OWNER:
        params["owner_id"] = owner_id
        total_stmt, page_stmt = _OWNED_TOTAL, _OWNED_PAGE
    rows = list((await session.execute(page_stmt, params)).mappings().all())
    if rows:
        return rows, rows[0]["total"]
    if skip == 0:
        return [], 0
    # Past the last page: the total still has to be told.
    return [], (await session.execute(total_stmt, params)).scalar_one()
