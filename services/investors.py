"""Investors: the commercial pipeline, its stage history, search and statistics."""

from collections.abc import Callable
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    CTE,
    BigInteger,
    ColumnElement,
    CompoundSelect,
    Integer,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    func,
    literal,
    literal_column,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import InstrumentedAttribute

from core.exceptions import ConflictError
from models.aggregates import (
    NO_CLIENT_TYPE_KEY,
    THREE_LETTERS,
    WORD_SEPARATOR,
    InvestorCount,
    SearchWord,
)
from models.contact import Contact
from models.interaction import Interaction
from models.investor import (
    PIPELINE_ORDER,
    ClientType,
    Investor,
    InvestorStageChange,
    PipelineStage,
)
from models.kpi import Kpi
from schemas.contact import ContactRead
from schemas.investor import (
    InvestorCreate,
    InvestorCursor,
    InvestorDetail,
    InvestorFilters,
    InvestorRead,
    InvestorStats,
    InvestorUpdate,
)
from services.base import BaseService

# A searched text: a generated column, or an expression an index is built on.
SearchedText = InstrumentedAttribute[str] | ColumnElement[str]
# Candidates of one form of match, at most SEARCH_CANDIDATES.
Capped = CompoundSelect[tuple[int, float]]

DUPLICATE_EMAIL = ConflictError(
    "An investor with this email already exists", code="duplicate_email"
)

# What pages of investors return: mappings of the read schema's columns, not tracked entities
# (building 50 ORM instances cost more than the query; Pydantic reads a mapping fastest).
_READ_COLUMNS = tuple(getattr(Investor, name) for name in InvestorRead.model_fields)

# pg_trgm's default (0.6) misses common misspellings such as "Rotchild" for "Rothschild".
WORD_SIMILARITY_THRESHOLD = "0.5"
# How many known words close to each word of a term the approximate search looks for.
CLOSE_WORDS = 10
# A substring pattern shorter than a trigram holds none: the trigram indexes would return every
# row for the recheck to sift. Shorter terms match the start of a word instead.
MIN_SUBSTRING_LENGTH = 3
# Where a word starts: at the start of the text or after an ASCII space, punctuation mark or
# control (crm_unaccent turns typographic apostrophes, quotes, dashes and no-break spaces into
# ASCII). Spelt out: pg_trgm draws trigrams, and so uses its index, only from a bracket
# expression of few characters, not from [^[:alnum:]].
WORD_START = r"(^|[\x01-/:-@[-`{-\x7f])"
# Characters that keep a search term out of the SQL text: a quote ends a literal, a backslash
# escapes in LIKE (and in literals if standard_conforming_strings were off), % and _ are LIKE's
# wildcards.
UNWRITABLE = frozenset("'\\%_")
# Search ranks at most this many investors: a common term ("banque") matches hundreds of
# thousands, and scoring them all took seconds at 1M investors. `total` counts the ranked ones.
SEARCH_CANDIDATES = 1000
NO_CLIENT_TYPE = "non_renseigne"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _escape_regex(text: str) -> str:
    # In a PostgreSQL regular expression a backslash makes any non-alphanumeric character literal.
    return "".join(char if char.isalnum() else f"\\{char}" for char in text)


def _normalised(value: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[str]:
    # Same normalisation as the generated search_text columns (migration 0002).
    return func.lower(func.crm_unaccent(value))


class InvestorService(BaseService[Investor, InvestorCreate, InvestorUpdate]):
    model = Investor
    sort_fields: ClassVar = {
        "name": Investor.name,
        "created_at": Investor.created_at,
        "updated_at": Investor.updated_at,
        # The generated rank follows the pipeline order, not the alphabet, and is indexed.
        "pipeline_stage": Investor.pipeline_rank,
    }
    default_sort = "name"
    not_found_message = "Investor not found"

    async def list_investors(
        self,
        filters: InvestorFilters,
        *,
        sort: str,
        skip: int,
        limit: int,
        after: InvestorCursor | None = None,
    ) -> tuple[list[RowMapping], int, str | None]:
        """A page of investors matching the filters, their total and the next page's cursor."""
        where: list[ColumnElement[bool]] = []
        if filters.pipeline_stage is not None:
            where.append(Investor.pipeline_stage == filters.pipeline_stage)
        if filters.client_type is not None:
            where.append(Investor.client_type == filters.client_type)
        if filters.is_active is not None:
            where.append(Investor.is_active.is_(filters.is_active))
        total = await self.count_investors(filters)
        if total == 0 or skip >= total:
            return [], total, None
        if after is not None:
            where.append(self._past(after))
        # One row more than asked tells whether there is a next page.
        # The sort column rides along: the cursor resumes from its value (pipeline_rank is not
        # one of the read columns).
        sort_column = self.sort_fields[sort.lstrip("-")]
        stmt = (
            select(*_READ_COLUMNS, sort_column.label("sort_key"))
            .where(*where)
            .order_by(*self.order_by(sort))
            .offset(skip)
            .limit(limit + 1)
        )
        rows = list((await self.session.execute(stmt)).mappings().all())
        if len(rows) <= limit:
            return rows, total, None
        last = rows[limit - 1]
        cursor = InvestorCursor(sort=sort, key=last["sort_key"], id=last["id"])
        return rows[:limit], total, cursor.encode()

    def _past(self, cursor: InvestorCursor) -> ColumnElement[bool]:
        # A row comparison on (sort column, id): the composite index seeks straight to the
        # cursor instead of walking the skipped rows as OFFSET does. Every sort column is NOT NULL.
        column = self.sort_fields[cursor.sort.lstrip("-")]
        row = tuple_(column, Investor.id)
        resume = tuple_(literal(cursor.key, column.type), literal(cursor.id, Integer))
        return row < resume if cursor.sort.startswith("-") else row > resume

    async def search(self, q: str, *, skip: int, limit: int) -> tuple[list[RowMapping], int]:
        """Accent- and case-insensitive, typo-tolerant search; best matches first."""
        # For the connection, not the transaction: a read request runs each statement in
        # autocommit (core/db.py), where a local setting would end with this one. Only search
        # reads the threshold, and it always sets it first. The same round trip normalises the
        # term as the search columns are, to choose how to match it.
        threshold = func.set_config(
            "pg_trgm.word_similarity_threshold", WORD_SIMILARITY_THRESHOLD, False
        )
        normalised = _normalised(bindparam("q", q, type_=Text))
        term = (await self.session.execute(select(threshold, normalised))).one()[1]
        if len(term) < MIN_SUBSTRING_LENGTH and not term[:1].isalnum():
            # A short term matches the start of a word, and words start with a letter or digit.
            return [], 0
        close_words = await self._close_words(term) if len(term) >= MIN_SUBSTRING_LENGTH else []
        best = self._search_hits(term, close_words)
        # One statement: the hits are computed (and scored) once, in a materialised CTE that
        # gives both the total and the page.
        total = select(func.count()).select_from(best).scalar_subquery()
        page = (
            select(best.c.investor_id, best.c.score)
            .order_by(best.c.score.desc(), best.c.investor_id)
            .offset(skip)
            .limit(limit)
            .subquery("page")
        )
        # Each page row fetches its investor by primary key. LIMIT 1 keeps the subquery lateral
        # (PostgreSQL would otherwise flatten it into a join it may plan as a walk of the whole
        # primary key when its statistics are stale).
        investor = (
            select(*_READ_COLUMNS)
            .where(Investor.id == page.c.investor_id)
            .limit(1)
            .lateral("investor")
        )
        stmt = (
            select(investor, total.label("total"))
            .select_from(page)
            .join(investor, literal_column("true"))
            .order_by(page.c.score.desc(), investor.c.id)
        )
        rows = list((await self.session.execute(stmt)).mappings().all())
        if rows:
            return rows, rows[0]["total"]
        if skip == 0:
            return [], 0
        # Past the last page: the total still has to be told.
        return [], (await self.session.execute(select(total))).scalar_one()

    async def _close_words(self, term: str) -> list[list[str]]:
        """For each word of the normalised `term` that has three letters or more, the known
        words close to it (word similarity at the threshold, best first), leaving out those that
        hold the whole term: the literal match finds their rows already."""
        by_word: dict[int, list[str]] = {}
        for n, word in (await self.session.execute(_CLOSE_WORDS, {"term": term})).all():
            # Split on what PostgreSQL deems neither letter nor digit; checked again here, as
            # the words are written into the search statement.
            if word.isalnum():
                by_word.setdefault(n, []).append(word)
        return list(by_word.values())

    def _search_hits(self, term: str, close_words: list[list[str]]) -> CTE:
        """(investor_id, score) of the best SEARCH_CANDIDATES investors matching `term` (the
        search once normalised) itself or through a contact: literally, or approximately through
        `close_words` (see _close_words)."""
        # Normalised already: not once per row under a generic plan.
        needle = bindparam("needle", term, type_=Text)
        # Written into the statement too: under a generic plan PostgreSQL guesses a LIMIT
        # parameter at a tenth of the rows, and chose index reads that a scan stopping at the
        # cap beats ("laposte.net": 300 ms instead of 23).
        cap = bindparam("cap", SEARCH_CANDIDATES, type_=Integer, literal_execute=True)
        sources: list[tuple[InstrumentedAttribute[int], SearchedText, SearchedText]]
        if len(term) < MIN_SUBSTRING_LENGTH:
            # The start of a word is a trigram ("  r", " ro" for "ro") the indexes serve. Names
            # only: the domain words of emails and websites ("fr", "com") would match nearly
            # every row.
            word_start = bindparam("word_start", WORD_START + _escape_regex(term), type_=Text)
            contact_name = _normalised(Contact.name)
            sources = [
                (Investor.id, Investor.fuzzy_text, Investor.fuzzy_text),
                (Contact.investor_id, contact_name, contact_name),
            ]

            def matches(column: SearchedText) -> ColumnElement[bool]:
                return column.regexp_match(word_start)

        else:
            # A term without a quote, a backslash or a LIKE wildcard holds nothing that SQL
            # (inside a quoted literal) or LIKE interprets: it is written into the statement,
            # which PostgreSQL then plans for it (see close() below). Under the generic plan it
            # keeps for a prepared statement, a common term was read whole from the index
            # instead of stopping at the cap in a scan: "banque" (230k investors at 1M) 45 ms
            # instead of 13, "laposte.net" (contacts' emails) 350 ms instead of 25. Any other
            # term stays a parameter. Escaped once normalised, so that nothing the
            # normalisation produces can act as a wildcard.
            writable = term.isprintable() and not UNWRITABLE.intersection(term)
            pattern = bindparam(
                "pattern", f"%{_escape_like(term)}%", type_=Text, literal_execute=writable
            )
            sources = [
                (Investor.id, Investor.search_text, Investor.fuzzy_text),
                (Contact.investor_id, Contact.search_text, Contact.search_text),
            ]

            def matches(column: SearchedText) -> ColumnElement[bool]:
                return column.like(pattern, escape="\\")

        def literal(text: SearchedText, _: SearchedText) -> ColumnElement[bool]:
            return matches(text)

        def close(_: SearchedText, fuzzy_text: SearchedText) -> ColumnElement[bool]:
            # A close word of every query word that has some. The words are written into the
            # SQL (literal_execute), so that PostgreSQL plans the statement for them: the generic
            # plan it keeps for a prepared statement after five runs cannot tell a rare word
            # (a few rows from the index) from a common one (a scan that stops at the cap), and
            # scanned all 1M investors for a rare one: 1 s instead of 10 ms. Safe to write: a
            # word holds letters and digits only (_close_words), nothing SQL or LIKE interprets.
            return and_(
                *(
                    fuzzy_text.like(
                        any_(
                            bindparam(
                                f"close_{i}",
                                [f"%{w}%" for w in words],
                                ARRAY(Text),
                                literal_execute=True,
                            )
                        )
                    )
                    for i, words in enumerate(close_words)
                )
            )

        def hits(form: Callable[[SearchedText, SearchedText], ColumnElement[bool]]) -> Capped:
            # Each form is served by the GIN trigram indexes. A common term matches most rows:
            # each form stops at the cap instead of scoring them all, taking the investors' own
            # matches before their contacts' (whose scan is skipped once the cap is reached),
            # and literal matches get a cap of their own so close ones cannot crowd them out.
            # A literal match ranks above any approximate one.
            return union_all(
                *(
                    select(
                        investor_id.label("investor_id"),
                        (
                            func.word_similarity(needle, fuzzy_text) + cast(matches(text), Integer)
                        ).label("score"),
                    )
                    .where(form(text, fuzzy_text))
                    .limit(cap)
                    for investor_id, text, fuzzy_text in sources
                )
            ).limit(cap)

        forms = [hits(literal)]
        if close_words:
            forms.append(hits(close))
        found = union_all(*forms).subquery("hits")
        best_score = func.max(found.c.score)
        return (
            select(found.c.investor_id, best_score.label("score"))
            .group_by(found.c.investor_id)
            .order_by(best_score.desc(), found.c.investor_id)
            .limit(cap)
            .cte("best")
        )

    async def count_investors(self, filters: InvestorFilters) -> int:
        """How many investors match the filters, summed from the trigger-kept counters."""
        where: list[ColumnElement[bool]] = []
        if filters.pipeline_stage is not None:
            where.append(InvestorCount.pipeline_stage == filters.pipeline_stage)
        if filters.client_type is not None:
            where.append(InvestorCount.client_type == filters.client_type)
        if filters.is_active is not None:
            where.append(InvestorCount.is_active.is_(filters.is_active))
        stmt = select(func.coalesce(func.sum(InvestorCount.n), 0)).where(*where)
        return int((await self.session.execute(stmt)).scalar_one())

    async def stats(self) -> InvestorStats:
        """Counts by stage and client type, from the trigger-kept counters (a few dozen rows)."""
        total_count, active, untyped, *counts = (await self.session.execute(_STATS)).one()
        stages = dict(zip(PipelineStage, counts[: len(PipelineStage)], strict=True))
        by_type: dict[ClientType | str, int] = dict(
            zip(ClientType, counts[len(PipelineStage) :], strict=True)
        )
        by_type[NO_CLIENT_TYPE] = untyped
        return InvestorStats(
            total_count=total_count,
            active_count=active,
            by_pipeline_stage=stages,
            by_client_type=by_type,
        )

    async def get_detail(self, investor_id: int) -> InvestorDetail:
        """The investor, its contacts and activity counts, in one SQL statement (no N+1)."""
        result = await self.session.execute(_DETAIL, {"investor_id": investor_id})
        row = result.mappings().one_or_none()
        if row is None:
            raise self.not_found()
        return InvestorDetail.model_validate(row)

    async def create_investor(self, data: InvestorCreate, *, changed_by: int) -> Investor:
        """Create an investor and its first stage-history entry; taken email → 409."""
        async with self.integrity_guard(unique=DUPLICATE_EMAIL):
            investor = await self.create(data)
            self._record_stage_change(investor, None, changed_by)
            await self.session.flush()
        return investor

    async def update_investor(
        self, investor_id: int, data: InvestorUpdate, *, changed_by: int
    ) -> Investor:
        """Partial update; a changed stage is recorded in the history; taken email → 409."""
        investor = await self.get(investor_id, for_update=True)
        previous_stage = investor.pipeline_stage
        async with self.integrity_guard(unique=DUPLICATE_EMAIL):
            await self.update(investor, data)
            if investor.pipeline_stage != previous_stage:
                self._record_stage_change(investor, previous_stage, changed_by)
                await self.session.flush()
        return investor

    async def move_to_next_stage(self, investor_id: int, *, changed_by: int) -> Investor:
        """Advance one step along the pipeline; 409 no_next_stage from client or perdu."""
        # The row lock serialises concurrent moves: each one starts from the previous result.
        investor = await self.get(investor_id, for_update=True)
        current = investor.pipeline_stage
        if current not in PIPELINE_ORDER or current == PIPELINE_ORDER[-1]:
            raise ConflictError(
                f"An investor at stage '{current.value}' has no next stage",
                code="no_next_stage",
            )
        investor.pipeline_stage = PIPELINE_ORDER[PIPELINE_ORDER.index(current) + 1]
        self._record_stage_change(investor, current, changed_by)
        await self.session.flush()
        return investor

    async def stage_history(self, investor_id: int) -> list[InvestorStageChange]:
        """The investor's stage changes, oldest first; 404 when the investor is missing."""
        await self.ensure_exists(investor_id)
        stmt = (
            select(InvestorStageChange)
            .where(InvestorStageChange.investor_id == investor_id)
            .order_by(InvestorStageChange.id)
        )
        return list((await self.session.execute(stmt)).scalars().all())

    async def delete_investor(self, investor_id: int) -> None:
        """Delete an investor; contacts, interactions, KPIs and history go by DB cascade."""
        await self.delete(await self.get(investor_id, for_update=True))

    def _record_stage_change(
        self, investor: Investor, from_stage: PipelineStage | None, changed_by: int
    ) -> None:
        self.session.add(
            InvestorStageChange(
                investor_id=investor.id,
                from_stage=from_stage,
                to_stage=investor.pipeline_stage,
                changed_by=changed_by,
            )
        )


def _stats_statement() -> Select[Any]:
    """Totals, active, untyped, then one count per stage and per client type, in enum order."""

    def total(*where: ColumnElement[bool]) -> ColumnElement[Any]:
        return cast(func.coalesce(func.sum(InvestorCount.n).filter(*where), 0), BigInteger)

    return select(
        total(),
        total(InvestorCount.is_active.is_(True)),
        total(InvestorCount.client_type == NO_CLIENT_TYPE_KEY),
        *(total(InvestorCount.pipeline_stage == stage) for stage in PipelineStage),
        *(total(InvestorCount.client_type == kind) for kind in ClientType),
    )


# Built once: SQLAlchemy memoises a statement's cache key on the object, so requests skip
# building the statement and generating its key, which cost more than running it.
_STATS = _stats_statement()


def _close_words_statement() -> Select[tuple[int, str]]:
    """(n, word): the known words close to the n-th word of :term (see _close_words)."""
    whole_term = bindparam("term", type_=Text)
    query_word = func.regexp_split_to_table(whole_term, WORD_SEPARATOR)
    words = query_word.table_valued("word", with_ordinality="n").render_derived("query_word")
    close = (
        select(SearchWord.word)
        .where(
            words.c.word.op("<%")(SearchWord.word),
            func.strpos(SearchWord.word, whole_term) == 0,
        )
        .order_by(func.word_similarity(words.c.word, SearchWord.word).desc(), SearchWord.word)
        .limit(CLOSE_WORDS)
        .lateral("close")
    )
    return (
        select(words.c.n, close.c.word)
        .select_from(words)
        .join(close, literal_column("true"))
        .where(words.c.word.regexp_match(THREE_LETTERS))
        .order_by(words.c.n)
    )


# Built once, as _STATS.
_CLOSE_WORDS = _close_words_statement()


def _detail_statement() -> Select[Any]:
    """The investor's columns, activity counts and contacts (a JSON array): one round trip.

    On the tables, not the mapped classes: plain Core, which the session runs without its ORM
    layer (no entities, no identity map); rows come back as mappings.
    """
    investor_table = Investor.__table__
    investors, contacts = investor_table.c, Contact.__table__.c
    interactions, kpis = Interaction.__table__.c, Kpi.__table__.c
    # Each contact as the JSON object of its row, in the read schema's columns.
    contact_rows = (
        select(*(contacts[name] for name in ContactRead.model_fields))
        .where(contacts.investor_id == investors.id)
        .correlate(investor_table)
        .subquery("c")
    )
    contact_list = func.json_agg(
        aggregate_order_by(contact_rows.table_valued(), contact_rows.c.name, contact_rows.c.id)
    )
    return select(
        *(investors[name] for name in InvestorRead.model_fields),
        select(func.count())
        .where(interactions.investor_id == investors.id)
        .scalar_subquery()
        .label("interaction_count"),
        select(func.max(interactions.date))
        .where(interactions.investor_id == investors.id)
        .scalar_subquery()
        .label("last_interaction_date"),
        select(func.count())
        .where(kpis.investor_id == investors.id)
        .scalar_subquery()
        .label("kpi_count"),
        select(func.coalesce(contact_list, literal_column("'[]'::json")))
        .select_from(contact_rows)
        .scalar_subquery()
        .label("contacts"),
    ).where(investors.id == bindparam("investor_id"))


# Built once, as _STATS: the SPA's hottest read.
_DETAIL = _detail_statement()
