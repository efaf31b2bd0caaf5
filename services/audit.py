"""The audit trail as the API reads it: filtered pages, newest first, and investor histories."""

from collections.abc import Sequence

from sqlalchemy import BigInteger, ColumnElement, Text, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from core.exceptions import InvalidFieldError
from models.audit import AuditEntry
from schemas.audit import AUDIT_TOTAL_CAP, AuditCursor, AuditFilters
from services.investors import InvestorService


class InvalidPeriod(InvalidFieldError):
    code = "invalid_period"
    message = "`from` must not be after `to`"


class AuditService:
    """Reading the trail: filtered pages, newest first, and one investor's history."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list_entries(
        self, filters: AuditFilters, *, skip: int, limit: int, after: AuditCursor | None
    ) -> tuple[list[RowMapping], int, str | None]:
        """A page of the entries matching the filters, their (capped) total and the next
        page's cursor; 422 invalid_period when `from` is after `to`."""
        if filters.from_ is not None and filters.to is not None and filters.from_ > filters.to:
            raise InvalidPeriod("query", "from")
        where: list[ColumnElement[bool]] = []
        if filters.entity is not None:
            where.append(_entries.entity == filters.entity)
        if filters.entity_id is not None:
            where.append(_entries.entity_id == filters.entity_id)
        if filters.actor_id is not None:
            where.append(_entries.actor_id == filters.actor_id)
        if filters.action is not None:
            where.append(_entries.action == filters.action)
        if filters.from_ is not None:
            where.append(_entries.at >= filters.from_)
        if filters.to is not None:
            where.append(_entries.at <= filters.to)
        return await self._page(where, skip=skip, limit=limit, after=after)

    async def investor_history(
        self, investor_id: int, *, skip: int, limit: int, after: AuditCursor | None
    ) -> tuple[list[RowMapping], int, str | None]:
        """The entries of an investor and of its contacts, interactions and KPIs, newest first;
        404 when the investor does not exist."""
        await InvestorService(self.session).ensure_exists(investor_id)
        where = [_entries.investor_id == investor_id]
        return await self._page(where, skip=skip, limit=limit, after=after)

    async def _page(
        self,
        where: list[ColumnElement[bool]],
        *,
        skip: int,
        limit: int,
        after: AuditCursor | None,
    ) -> tuple[list[RowMapping], int, str | None]:
        # Counting stops past the cap: the trail grows by millions, and a count of every match
        # would read them all (the search caps its total the same way). In the page's order, so
        # the same index serves and the scan stops at the cap.
        matching = (
            select(_entries.id)
            .where(*where)
            .order_by(_entries.id.desc())
            .limit(AUDIT_TOTAL_CAP + 1)
            .subquery()
        )
        counted = (await self.session.execute(select(func.count()).select_from(matching))).one()
        total = min(int(counted[0]), AUDIT_TOTAL_CAP)
        if total == 0:
            return [], 0, None
        if after is not None:
            where = [*where, _entries.id < after.id]
        # One row more than asked tells whether there is a next page.
        stmt = (
            select(*_entries)
            .where(*where)
            .order_by(_entries.id.desc())
            .offset(skip)
            .limit(limit + 1)
        )
        rows = list((await self.session.execute(stmt)).mappings().all())
        if len(rows) <= limit:
            return rows, total, None
        return rows[:limit], total, AuditCursor(id=rows[limit - 1]["id"]).encode()

    async def purge(self, retention_days: int) -> int:
        """Delete the entries older than `retention_days` (at least 365, or the database
        refuses), through the only function allowed to; how many went."""
        result = await self.session.execute(_PURGE, {"days": retention_days})
        return int(result.scalar_one())

    async def scrub(self, entity: str, ids: Sequence[int], fields: Sequence[str]) -> int:
        """Replace the values of `fields` with "anonymized" in the entries about these records
        (GDPR anonymisation), through the only other function allowed to change entries; how
        many entries changed."""
        params = {"entity": entity, "ids": list(ids), "fields": list(fields)}
        return int((await self.session.execute(_SCRUB, params)).scalar_one())


_entries = AuditEntry.__table__.c
_PURGE = text("SELECT crm_audit_purge(:days)")
_SCRUB = text("SELECT crm_audit_scrub(:entity, :ids, :fields)").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)), bindparam("fields", type_=ARRAY(Text))
)
