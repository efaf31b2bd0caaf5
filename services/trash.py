"""The trash: what is in it, restoring it, and destroying it (now, or when its time is up).

Moving a record to the trash is BaseService.delete; this module handles the entries it writes.
"""

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    union,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import InstrumentedAttribute

from core.exceptions import ConflictError, NotFoundError
from models.audit import AuditAction
from models.contact import Contact
from models.interaction import Interaction
from models.investor import Investor
from models.kpi import Kpi
from models.task import Task
from models.trash import TrashEntity, TrashEntry
from schemas.contact import ContactRead
from schemas.interaction import InteractionRead
from schemas.investor import InvestorRead
from schemas.kpi import KpiRead
from schemas.task import TaskRead
from schemas.trash import TrashFilters
from services.audit_recorder import record
from services.base import BaseService
from services.contacts import ContactService
from services.interactions import InteractionService
from services.investors import InvestorService
from services.kpis import KpiService
from services.tasks import TaskService


class NotInTrash(NotFoundError):
    message = "This record is not in the trash"


class RestoreConflict(ConflictError):
    code = "restore_conflict"
    message = (
        "Restoring this record would break a uniqueness rule (a live record took its email "
        "or its month meanwhile): nothing was restored"
    )


class ParentInTrash(ConflictError):
    code = "parent_in_trash"
    message = (
        "Its investor is in the trash: restore the investor first (purging the investor "
        "destroys it too)"
    )


@dataclass(frozen=True, slots=True)
class Trashable:
    """How the trash handles one entity: its service (which deletes it, with its
    `trash_children`), the label the trash list shows, and the body a restore returns."""

    service: type[BaseService[Any, Any, Any]]
    label: ColumnElement[Any] | InstrumentedAttribute[Any]
    read_schema: type[BaseModel]


def _month(
    year: InstrumentedAttribute[int], month: InstrumentedAttribute[int]
) -> ColumnElement[str]:
    return func.concat(year, "-", func.lpad(cast(month, String), 2, "0"))


# Every entity a DELETE sends to the trash. A new one declares itself here (and on its model
# with SoftDeleteMixin, on its service with `entity`).
TRASHABLE: Mapping[TrashEntity, Trashable] = {
    TrashEntity.investor: Trashable(InvestorService, Investor.name, InvestorRead),
    TrashEntity.contact: Trashable(ContactService, Contact.name, ContactRead),
    TrashEntity.interaction: Trashable(
        InteractionService,
        func.coalesce(
            Interaction.subject,
            func.concat(cast(Interaction.type, String), " ", cast(Interaction.date, String)),
        ),
        InteractionRead,
    ),
    TrashEntity.kpi: Trashable(KpiService, _month(Kpi.year, Kpi.month), KpiRead),
    TrashEntity.task: Trashable(TaskService, Task.title, TaskRead),
}

# The foreign key that ties each entity trashed with a parent to that parent, and the parent's
# entity: a contact cannot come back while its investor is in the trash.
PARENTS: Mapping[Any, tuple[InstrumentedAttribute[Any], TrashEntity]] = {
    column.class_: (column, entity)
    for entity, trashable in TRASHABLE.items()
    for column in trashable.service.trash_children
}


class TrashService(BaseService[TrashEntry, BaseModel, BaseModel]):
    model = TrashEntry
    sort_fields = {"deleted_at": TrashEntry.deleted_at}
    # Newest first: latest deletion, then latest entry.
    default_sort = "-deleted_at"
    not_found_message = NotInTrash.message

    async def list_entries(
        self, filters: TrashFilters, *, skip: int, limit: int
    ) -> tuple[list[RowMapping], int]:
        """A page of the trash, newest deletion first, with the total."""
        where: list[ColumnElement[bool]] = []
        if filters.entity is not None:
            where.append(TrashEntry.entity == filters.entity)
        if filters.deleted_by is not None:
            where.append(TrashEntry.deleted_by == filters.deleted_by)
        if filters.deleted_from is not None:
            where.append(TrashEntry.deleted_at >= filters.deleted_from)
        if filters.deleted_to is not None:
            where.append(TrashEntry.deleted_at <= filters.deleted_to)
        count = select(func.count()).select_from(TrashEntry).where(*where)
        total = int((await self.session.execute(count)).scalar_one())
        if total == 0 or skip >= total:
            return [], total
        page = _ITEMS.where(*where).order_by(*self.order_by(None)).offset(skip).limit(limit)
        return list((await self.session.execute(page)).mappings().all()), total

    async def restore(self, entity: TrashEntity, id_: int) -> BaseModel:
        """Bring the record back with everything its deletion took (same ids, same history);
        409 restore_conflict, with nothing restored, when a uniqueness rule forbids it."""
        entry = await self._own_entry(entity, id_)
        trashable = TRASHABLE[entity]
        await self._ensure_parent_live(trashable.service.model, id_)
        async with self.integrity_guard(unique=RestoreConflict):
            for table in _tables_of(entity):
                # Coming back is no edit of the record either: updated_at stays.
                await self.session.execute(
                    update(table)
                    .where(table.trash_entry_id == entry.id)
                    .values(
                        deleted_at=None,
                        deleted_by=None,
                        trash_entry_id=None,
                        updated_at=table.updated_at,
                    )
                    .execution_options(synchronize_session=False)
                )
            await self.session.execute(delete(TrashEntry).where(TrashEntry.id == entry.id))
        # A locking read refreshes whatever the session holds of the row.
        service = trashable.service(self.session)
        restored = await service.get(id_, for_update=True)
        await service.audit(AuditAction.restore, restored, {})
        return trashable.read_schema.model_validate(restored)

    async def purge(self, entity: TrashEntity, id_: int) -> None:
        """Destroy a record in the trash now, with everything its deletion took."""
        await self._destroy(await self._own_entry(entity, id_))

    async def purge_expired(self) -> int:
        """Destroy every entry whose purge time has come; how many there were."""
        due = select(TrashEntry.id).where(TrashEntry.purge_after <= func.now())
        ids = list((await self.session.execute(due.order_by(TrashEntry.id))).scalars())
        purged = 0
        for entry_id in ids:
            stmt = select(TrashEntry).where(TrashEntry.id == entry_id).with_for_update()
            # Gone already: restored meanwhile, or destroyed with its parent just before.
            entry = (await self.session.execute(stmt)).scalar_one_or_none()
            if entry is not None:
                await self._destroy(entry)
                purged += 1
        return purged

    async def _own_entry(self, entity: TrashEntity, id_: int) -> TrashEntry:
        """The entry of the record's own deletion, locked (a restore and a purge of it wait for
        each other); 404 when it is not in the trash, 409 when it went with its investor."""
        stmt = (
            select(TrashEntry)
            .where(TrashEntry.entity == entity, TrashEntry.entity_id == id_)
            .with_for_update()
        )
        entry = (await self.session.execute(stmt)).scalar_one_or_none()
        if entry is not None:
            return entry
        model: Any = TRASHABLE[entity].service.model
        trashed = select(model.id).where(model.id == id_, model.deleted_at.is_not(None))
        if (await self.session.execute(trashed)).first() is not None:
            raise ParentInTrash()
        raise NotInTrash()

    async def _ensure_parent_live(self, model: Any, id_: int) -> None:
        """409 parent_in_trash when the record's parent is in the trash; the parent is
        key-share locked, so it cannot go to the trash before this restore commits."""
        if model not in PARENTS:
            return
        column, parent = PARENTS[model]
        parent_id = (await self.session.execute(select(column).where(model.id == id_))).scalar_one()
        if parent_id is None:
            return  # a task about no investor
        try:
            await TRASHABLE[parent].service(self.session).ensure_exists(parent_id, lock=True)
        except NotFoundError:
            raise ParentInTrash() from None

    async def _destroy(self, entry: TrashEntry) -> None:
        """Delete the record (foreign keys cascade to its children, which are in the trash
        with it or on their own) and its entry, with the entries of children trashed on their
        own before it. Counters are not touched: they no longer counted these rows."""
        trashable = TRASHABLE[entry.entity]
        model: Any = trashable.service.model
        entries = [select(literal(entry.id, Integer))]
        for column in trashable.service.trash_children:
            child: Any = column.class_
            entries.append(
                select(child.trash_entry_id).where(
                    column == entry.entity_id, child.deleted_at.is_not(None)
                )
            )
        entry_ids = list((await self.session.execute(union(*entries))).scalars())
        # Its history stays in the audit trail for the retention period; the purge joins it.
        investor_id = entry.entity_id if entry.entity is TrashEntity.investor else None
        await record(
            self.session,
            AuditAction.purge,
            entry.entity,
            entry.entity_id,
            None,
            investor_id=investor_id,
        )
        await self.session.execute(delete(model).where(model.id == entry.entity_id))
        await self.session.execute(delete(TrashEntry).where(TrashEntry.id.in_(entry_ids)))


def _tables_of(entity: TrashEntity) -> list[Any]:
    """The tables whose rows one deletion of `entity` may have taken to the trash."""
    trashable = TRASHABLE[entity]
    return [trashable.service.model, *(c.class_ for c in trashable.service.trash_children)]


def _items_statement() -> Any:
    """The trash list's columns: each entry with its record's label and, for an entity with
    children, how many rows went with it (each found by primary key or trash_entry_id)."""
    labels = []
    children = []
    for entity, trashable in TRASHABLE.items():
        model: Any = trashable.service.model
        label = select(trashable.label).where(model.id == TrashEntry.entity_id).scalar_subquery()
        labels.append((TrashEntry.entity == entity, label))
        counts: list[Any] = [
            select(func.count())
            .where(column.class_.trash_entry_id == TrashEntry.id)
            .scalar_subquery()
            for column in trashable.service.trash_children
        ]
        if counts:
            children.append((TrashEntry.entity == entity, functools.reduce(operator.add, counts)))
    return select(
        TrashEntry.entity,
        TrashEntry.entity_id.label("id"),
        case(*labels).label("label"),
        TrashEntry.deleted_by,
        TrashEntry.deleted_at,
        TrashEntry.purge_after,
        case(*children, else_=None).label("children"),
    )


# Built once (see services.investors._STATS).
_ITEMS = _items_statement()
