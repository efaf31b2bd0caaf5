"""Investors: the commercial pipeline, its stage history and statistics."""

from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    bindparam,
    cast,
    func,
    literal,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import RowMapping

from core.exceptions import ConflictError, InvalidFieldError
from core.policy import check_owner_assignment
from models.aggregates import (
    NO_CLIENT_TYPE_KEY,
    InvestorCount,
)
from models.audit import AuditAction
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
from models.notification import NotificationKind
from models.task import Task
from models.trash import TrashEntity
from models.user import AuthenticatedUser, User
from schemas.common import PG_INT_MAX
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
from services.follow_ups import FollowUpService
from services.notifications import NotificationService


class DuplicateInvestorEmail(ConflictError):
    code = "duplicate_email"
    message = "An investor with this email already exists"


class InvalidOwner(InvalidFieldError):
    code = "invalid_owner"
    message = "The owner must be an active user"


# What pages of investors return: mappings of the read schema's columns, not tracked entities
# (building 50 ORM instances cost more than the query; Pydantic reads a mapping fastest).
READ_COLUMNS = tuple(getattr(Investor, name) for name in InvestorRead.model_fields)

NO_CLIENT_TYPE = "non_renseigne"


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
    owner_columns = (Investor.owner_id,)
    entity = TrashEntity.investor
    # Deleting an investor takes its contacts, interactions, KPIs and tasks to the trash with it.
    trash_children = (
        Contact.investor_id,
        Interaction.investor_id,
        Kpi.investor_id,
        Task.investor_id,
    )
    audit_investor_key = "id"

    async def list_investors(
        self,
        filters: InvestorFilters,
        *,
        sort: str,
        skip: int,
        limit: int,
        caller_id: int,
        after: InvestorCursor | None = None,
    ) -> tuple[list[RowMapping], int, str | None]:
        """A page of investors matching the filters, their total and the next page's cursor.
        `caller_id` is whom an `owner_id=me` filter means."""
        where = self.filter_clauses(filters, caller_id)
        total = await self.count_investors(filters, caller_id)
        if total == 0 or skip >= total:
            return [], total, None
        if after is not None:
            where.append(self._past(after))
        # One row more than asked tells whether there is a next page.
        # The sort column rides along: the cursor resumes from its value (pipeline_rank is not
        # one of the read columns).
        sort_column = self.sort_fields[sort.lstrip("-")]
        stmt = (
            select(*READ_COLUMNS, sort_column.label("sort_key"))
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

    def filter_clauses(self, filters: InvestorFilters, caller_id: int) -> list[ColumnElement[bool]]:
        """The list's WHERE clauses (live rows only), shared with the export."""
        where = self.live()
        if filters.pipeline_stage is not None:
            where.append(Investor.pipeline_stage == filters.pipeline_stage)
        if filters.client_type is not None:
            where.append(Investor.client_type == filters.client_type)
        if filters.is_active is not None:
            where.append(Investor.is_active.is_(filters.is_active))
        if filters.owner_id is not None:
            owner = owner_of(filters.owner_id, caller_id)
            where.append(
                Investor.owner_id.is_(None) if owner is None else Investor.owner_id == owner
            )
        return where

    async def count_investors(self, filters: InvestorFilters, caller_id: int) -> int:
        """How many investors match the filters, summed from the trigger-kept counters (which
        know no owner: a filter on the owner counts rows, on its index)."""
        if filters.owner_id is not None:
            stmt = (
                select(func.count())
                .select_from(Investor)
                .where(*self.filter_clauses(filters, caller_id))
            )
            return int((await self.session.execute(stmt)).scalar_one())
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

    async def create_investor(self, data: InvestorCreate, *, caller: AuthenticatedUser) -> Investor:
        """Create an investor (owned by its creator unless the body names an owner) and its
        first stage-history entry; taken email → 409."""
        owner_id = data.owner_id if "owner_id" in data.model_fields_set else caller.id
        check_owner_assignment(caller.role, caller.id, owner_id, current=caller.id)
        await self._ensure_valid_owner(owner_id)
        async with self.integrity_guard(unique=DuplicateInvestorEmail, foreign_key=_invalid_owner):
            investor = await self.create(data.model_copy(update={"owner_id": owner_id}))
            await self._enter_stage(investor, None, caller.id)
        await self._notify_owner(investor, actor_id=caller.id)
        return investor

    async def update_investor(
        self, investor_id: int, data: InvestorUpdate, *, caller: AuthenticatedUser
    ) -> Investor:
        """Partial update; a changed stage is recorded in the history; taken email → 409."""
        changed_by = caller.id
        investor = await self.get(investor_id, for_update=True)
        if "owner_id" in data.model_fields_set:
            check_owner_assignment(caller.role, caller.id, data.owner_id, current=investor.owner_id)
            if data.owner_id != investor.owner_id:
                await self._ensure_valid_owner(data.owner_id)
        previous_stage, previous_owner = investor.pipeline_stage, investor.owner_id
        async with self.integrity_guard(unique=DuplicateInvestorEmail, foreign_key=_invalid_owner):
            await self.update(investor, data)
            if investor.pipeline_stage != previous_stage:
                await self._enter_stage(investor, previous_stage, changed_by)
        if investor.owner_id != previous_owner:
            await self._notify_owner(investor, actor_id=caller.id)
        return investor

    async def _notify_owner(self, investor: Investor, *, actor_id: int) -> None:
        """Tell the investor's new owner, unless they made themselves the owner."""
        await NotificationService(self.session).notify(
            [investor.owner_id],
            NotificationKind.investor_assigned,
            f"Investisseur attribué : {investor.name}",
            link=f"/api/v1/investors/{investor.id}",
            actor_id=actor_id,
        )

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
        await self.save(investor, AuditAction.move_stage)
        await self._enter_stage(investor, current, changed_by)
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

    async def delete_investor(self, investor_id: int, *, deleted_by: int) -> None:
        """Move an investor to the trash with its contacts, interactions, KPIs and tasks (its
        stage history stays with it)."""
        await self.delete(await self.get(investor_id, for_update=True), deleted_by=deleted_by)

    async def _ensure_valid_owner(self, owner_id: int | None) -> None:
        """422 invalid_owner unless `owner_id` is null or an active user (read under a share
        lock, so the user cannot be deleted before this transaction ends)."""
        if owner_id is None:
            return
        stmt = select(User.is_active).where(User.id == owner_id).with_for_update(read=True)
        if not (await self.session.execute(stmt)).scalar_one_or_none():
            raise _invalid_owner()

    async def _enter_stage(
        self, investor: Investor, from_stage: PipelineStage | None, changed_by: int
    ) -> None:
        """Record the move in the stage history and fire the stage's follow-up, in the
        transaction of the move (every stage change goes through here)."""
        self.session.add(
            InvestorStageChange(
                investor_id=investor.id,
                from_stage=from_stage,
                to_stage=investor.pipeline_stage,
                changed_by=changed_by,
            )
        )
        await self.session.flush()
        await FollowUpService(self.session).stage_entered(investor, changed_by)


def _invalid_owner() -> InvalidOwner:
    return InvalidOwner("body", "owner_id")


def owner_of(ref: str, caller_id: int) -> int | None:
    """The user id an `owner_id` filter names: `me` is the caller, `none` nobody (None); an id
    too large for the column names nobody either (0: ids start at 1)."""
    if ref == "none":
        return None
    if ref == "me":
        return caller_id
    value = int(ref)
    return value if value <= PG_INT_MAX else 0


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
        .where(contacts.investor_id == investors.id, contacts.deleted_at.is_(None))
        .correlate(investor_table)
        .subquery("c")
    )
    contact_list = func.json_agg(
        aggregate_order_by(contact_rows.table_valued(), contact_rows.c.name, contact_rows.c.id)
    )
    return select(
        *(investors[name] for name in InvestorRead.model_fields),
        select(func.count())
        .where(interactions.investor_id == investors.id, interactions.deleted_at.is_(None))
        .scalar_subquery()
        .label("interaction_count"),
        select(func.max(interactions.date))
        .where(interactions.investor_id == investors.id, interactions.deleted_at.is_(None))
        .scalar_subquery()
        .label("last_interaction_date"),
        select(func.count())
        .where(kpis.investor_id == investors.id, kpis.deleted_at.is_(None))
        .scalar_subquery()
        .label("kpi_count"),
        select(func.coalesce(contact_list, literal_column("'[]'::json")))
        .select_from(contact_rows)
        .scalar_subquery()
        .label("contacts"),
    ).where(investors.id == bindparam("investor_id"), investors.deleted_at.is_(None))


# Built once, as _STATS: the SPA's hottest read.
_DETAIL = _detail_statement()
