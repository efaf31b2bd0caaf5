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


def _search_statements() -> tuple[Select[tuple[int]], Select[tuple[object, ...]]]:
    """The total of the best matches alone, and a page of them with their total."""
    best = best_matches(bindparam("q", type_=Text), bindparam("cap", type_=Integer))
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
_TOTAL, _PAGE = _search_statements()


async def search_investors(
    session: AsyncSession, q: str, *, skip: int, limit: int
) -> tuple[list[RowMapping], int]:
    """A page of the investors best matching `q`, best first, and how many were ranked."""
    params = {"q": q, "cap": SEARCH_CANDIDATES, "skip": skip, "limit": limit}
    rows = list((await session.execute(_PAGE, params)).mappings().all())
    if rows:
        return rows, rows[0]["total"]
    if skip == 0:
        return [], 0
    # Past the last page: the total still has to be told.
    return [], (await session.execute(_TOTAL, params)).scalar_one()
