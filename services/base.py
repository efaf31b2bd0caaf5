"""Generic CRUD service that entity services subclass."""

import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, insert, select, update
from sqlalchemy import inspect as inspect_orm
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from core.audit import Actor
from core.config import settings
from core.exceptions import (
    FOREIGN_KEY_VIOLATION,
    UNIQUE_VIOLATION,
    AppError,
    NotFoundError,
    sqlstate,
)
from models.audit import AuditAction
from models.base import Base
from models.trash import SoftDeleteMixin, TrashEntity, TrashEntry
from services.audit_recorder import SECRET, record, record_many

ModelT = TypeVar("ModelT", bound=Base)
CreateT = TypeVar("CreateT", bound=BaseModel)
UpdateT = TypeVar("UpdateT", bound=BaseModel)

# {field: [before, after]}: what an update entry of the audit trail holds.
FieldChanges = dict[str, list[Any]]


class BaseService(Generic[ModelT, CreateT, UpdateT]):
    """get (or 404), list (filters, whitelisted sort, skip/limit, total), create, update, delete.

    Services flush; the request's session dependency commits.
    """

    model: ClassVar[type[Base]]
    # Public sort key -> column. `-key` sorts descending; `id` always breaks ties.
    sort_fields: ClassVar[Mapping[str, InstrumentedAttribute[Any]]] = {}
    default_sort: ClassVar[str] = "id"
    not_found_message: ClassVar[str] = "Resource not found"
    # The columns holding the ids of the users who own a row (core.policy: a role granted only
    # what it owns may change the row when it is one of them), on the model or on a table its
    # foreign keys reach. Empty: nobody owns it.
    owner_columns: ClassVar[tuple[InstrumentedAttribute[Any], ...]] = ()
    # Soft delete, for a model with SoftDeleteMixin: its name in the trash, and the foreign keys
    # (to this model) of the rows a delete takes to the trash with it, as one trash entry.
    entity: ClassVar[TrashEntity | None] = None
    trash_children: ClassVar[tuple[InstrumentedAttribute[Any], ...]] = ()
    # The audit trail (services.audit_recorder): the entity name its entries carry (None: not
    # audited; a service with a trash name is audited under that name), the fields whose values
    # it never holds (shown as "***"), the attribute holding the id of the investor a row
    # belongs to (the investor's history gathers them), and the fields it leaves out
    # (server-kept timestamps; generated columns are always left out).
    audit_entity: ClassVar[str | None] = None
    audit_secret_fields: ClassVar[frozenset[str]] = frozenset()
    audit_investor_key: ClassVar[str | None] = None
    audit_ignored_fields: ClassVar[frozenset[str]] = frozenset({"created_at", "updated_at"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # One name per entity, in the trash and the trail alike.
        if cls.audit_entity is None and cls.entity is not None:
            cls.audit_entity = cls.entity.value

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _id_column(self) -> InstrumentedAttribute[Any]:
        return self.model.id  # type: ignore[attr-defined, no-any-return]

    def not_found(self) -> NotFoundError:
        return NotFoundError(self.not_found_message)

    def live(self) -> list[ColumnElement[bool]]:
        """The clause every read of a soft-deleted model adds: rows in the trash are not there
        (walks of the lists' indexes skip them with it, migration 0017)."""
        if issubclass(self.model, SoftDeleteMixin):
            return [self.model.deleted_at.is_(None)]
        return []

    async def get(self, id_: int, *, for_update: bool = False) -> ModelT:
        """The live row with this id, or NotFoundError."""
        stmt = select(self.model).where(self._id_column == id_, *self.live())
        if for_update:
            # A locking read must see the row as it is now, not as the identity map cached it.
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        obj = (await self.session.execute(stmt)).scalar_one_or_none()
        if obj is None:
            raise self.not_found()
        return obj  # type: ignore[return-value]

    @asynccontextmanager
    async def integrity_guard(
        self,
        *,
        unique: Callable[[], AppError] | None = None,
        foreign_key: Callable[[], AppError] | None = None,
    ) -> AsyncIterator[None]:
        """Run writes in a SAVEPOINT and raise these errors on unique / foreign-key violations.

        The savepoint keeps the request's transaction usable, and catching the database error
        (rather than checking first) stays correct under concurrent requests.
        """
        try:
            async with self.session.begin_nested():
                yield
        except IntegrityError as exc:
            state = sqlstate(exc)
            if unique is not None and state == UNIQUE_VIOLATION:
                raise unique() from None
            if foreign_key is not None and state == FOREIGN_KEY_VIOLATION:
                raise foreign_key() from None
            raise

    async def ensure_exists(self, id_: int, *, lock: bool = False) -> None:
        """NotFoundError unless the live row exists (without loading it). `lock`: a key-share
        lock, so that a concurrent delete (or move to the trash) of it waits for this
        transaction, and rows added under it never reference a deleted parent."""
        stmt = select(self._id_column).where(self._id_column == id_, *self.live())
        if lock:
            stmt = stmt.with_for_update(key_share=True)
        if (await self.session.execute(stmt)).first() is None:
            raise self.not_found()

    async def owners_of(self, id_: int) -> tuple[int | None, ...] | None:
        """The row's `owner_columns` values, or None when there is no such row."""
        stmt = select(*self.owner_columns).select_from(self.model)
        joined: list[Any] = [self.model]
        for column in self.owner_columns:
            if column.class_ not in joined:
                joined.append(column.class_)
                stmt = stmt.join(column.class_)
        stmt = stmt.where(self._id_column == id_, *self.live())
        row = (await self.session.execute(stmt)).first()
        return None if row is None else tuple(row)

    def order_by(self, sort: str | None) -> list[ColumnElement[Any]]:
        """ORDER BY clauses for a whitelisted sort key, with `id` as the stable tiebreaker."""
        key = sort or self.default_sort
        descending = key.startswith("-")
        column = self.sort_fields[key.lstrip("-")] if self.sort_fields else self._id_column
        clauses: list[ColumnElement[Any]] = [column.desc() if descending else column.asc()]
        if column is not self._id_column:
            id_col = self._id_column
            clauses.append(id_col.desc() if descending else id_col.asc())
        return clauses

    async def paginate(
        self,
        stmt: Select[Any],
        *,
        where: Sequence[ColumnElement[bool]] = (),
        order_by: Sequence[ColumnElement[Any]],
        skip: int,
        limit: int,
        total: int | None = None,
    ) -> tuple[list[Any], int]:
        """Run a page of `stmt` and a separate COUNT over the same filters, unless the entity's
        service already knows the total (from the counters it keeps)."""
        filtered = stmt.where(*self.live(), *where)
        if total is None:
            count_stmt = select(func.count()).select_from(
                filtered.order_by(None).with_only_columns(self._id_column).subquery()
            )
            total = (await self.session.execute(count_stmt)).scalar_one()
        if total == 0 or skip >= total:
            return [], total
        rows = await self.session.execute(filtered.order_by(*order_by).offset(skip).limit(limit))
        return list(rows.scalars().all()), total

    async def list(
        self,
        *,
        where: Sequence[ColumnElement[bool]] = (),
        sort: str | None = None,
        skip: int = 0,
        limit: int = 50,
    ) -> tuple[list[ModelT], int]:
        """A page of rows matching `where`, sorted by a whitelisted key, with the total."""
        return await self.paginate(
            select(self.model), where=where, order_by=self.order_by(sort), skip=skip, limit=limit
        )

    def _values(self, data: BaseModel, *, exclude_unset: bool) -> dict[str, Any]:
        return data.model_dump(exclude_unset=exclude_unset)

    async def create(self, data: CreateT, **extra: Any) -> ModelT:
        """Insert a row from the schema (plus server-side values such as the owner)."""
        obj = self.model(**self._values(data, exclude_unset=False), **extra)
        self.session.add(obj)
        await self.session.flush()
        await self.audit(AuditAction.create, obj, self.audit_values(obj))
        return obj  # type: ignore[return-value]

    async def update(self, obj: ModelT, data: UpdateT) -> ModelT:
        """Apply only the fields the client sent."""
        values = self._values(data, exclude_unset=True)
        for field, value in values.items():
            setattr(obj, field, value)
        await self.save(obj)
        return obj

    async def delete(self, obj: ModelT, *, deleted_by: int | None = None) -> None:
        """Move the row to the trash (with its `trash_children`), or destroy it when its model
        has no soft delete; either way recorded in the audit trail with its last values."""
        last_values = self.audit_values(obj)
        if self.entity is None:
            await self.session.delete(obj)
            await self.session.flush()
        else:
            await self._move_to_trash(obj, deleted_by)
        await self.audit(AuditAction.delete, obj, last_values)

    async def _move_to_trash(self, obj: ModelT, deleted_by: int | None) -> None:
        id_: int = obj.id  # type: ignore[attr-defined]
        retention = timedelta(days=settings.trash_retention_days)
        entry = insert(TrashEntry).values(
            entity=self.entity,
            entity_id=id_,
            deleted_by=deleted_by,
            purge_after=func.now() + retention,
        )
        entry_id, deleted_at = (
            await self.session.execute(entry.returning(TrashEntry.id, TrashEntry.deleted_at))
        ).one()
        rows: list[tuple[Any, ColumnElement[bool]]] = [(self.model, self._id_column == id_)]
        rows += [(column.class_, column == id_) for column in self.trash_children]
        for model, where in rows:
            # Trashing is no edit of the record: updated_at keeps its value. Rows already in
            # the trash keep their own entry.
            await self.session.execute(
                update(model)
                .where(where, model.deleted_at.is_(None))
                .values(
                    deleted_at=deleted_at,
                    deleted_by=deleted_by,
                    trash_entry_id=entry_id,
                    updated_at=model.updated_at,
                )
                .execution_options(synchronize_session=False)
            )

    async def save(self, obj: Base, action: AuditAction | None = None) -> None:
        """Flush the changes made to `obj` and record those that changed a value, as `action`
        (by default, what `audit_action` makes of them). Nothing changed: nothing to do."""
        changes = self.pending_changes(obj)
        if not changes:
            return
        await self.session.flush()
        await self.audit(action or self.audit_action(changes), obj, changes)

    def audit_action(self, changes: FieldChanges) -> AuditAction:
        """What an update is recorded as (UserService singles out role and password changes)."""
        return AuditAction.update

    def pending_changes(self, obj: Base) -> FieldChanges:
        """{field: [before, after]} for the audited fields changed since `obj` was loaded or
        last flushed: read before the flush, which forgets them."""
        state = inspect_orm(obj)
        changes: FieldChanges = {}
        for key in _audited_fields(type(obj), self.audit_ignored_fields):
            history = state.attrs[key].history
            if history.added or history.deleted:
                before = history.deleted[0] if history.deleted else None
                after = history.added[0] if history.added else None
                changes[key] = self._masked(key, [before, after])
        return changes

    def audit_values(self, obj: Base) -> dict[str, Any]:
        """The audited fields of `obj` as loaded (none is read from the database for this)."""
        loaded = inspect_orm(obj).dict
        return {
            key: self._masked(key, loaded[key])
            for key in _audited_fields(type(obj), self.audit_ignored_fields)
            if key in loaded
        }

    def audited_fields(self) -> tuple[str, ...]:
        """The fields of the model an audit entry holds."""
        return _audited_fields(self.model, self.audit_ignored_fields)

    def _masked(self, key: str, value: Any) -> Any:
        if key not in self.audit_secret_fields:
            return value
        return [SECRET, SECRET] if isinstance(value, list) else SECRET

    async def audit(self, action: AuditAction, obj: Base, changes: dict[str, Any]) -> None:
        """Record one entry about `obj` (nothing for a service that declares no entity)."""
        if self.audit_entity is None:
            return
        investor_key = self.audit_investor_key
        await record(
            self.session,
            action,
            self.audit_entity,
            obj.id,  # type: ignore[attr-defined]
            changes,
            investor_id=None if investor_key is None else getattr(obj, investor_key),
        )

    async def audit_many(
        self,
        action: AuditAction,
        changes_by_row: Sequence[tuple[Any, dict[str, Any]]],
        *,
        actor: Actor | None = None,
    ) -> None:
        """`audit` for many rows at once (an import), in one batched statement; each row an
        entity or a mapping of its columns."""
        if self.audit_entity is None:
            return
        key = self.audit_investor_key
        entries = [
            (_value(row, "id"), changes, None if key is None else _value(row, key))
            for row, changes in changes_by_row
        ]
        await record_many(self.session, action, self.audit_entity, entries, actor=actor)


def _value(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


@functools.cache
def _audited_fields(model: type[Base], ignored: frozenset[str]) -> tuple[str, ...]:
    """The model's column attributes, less generated columns and `ignored`."""
    return tuple(
        attr.key
        for attr in inspect_orm(model).column_attrs
        if attr.key not in ignored and all(column.computed is None for column in attr.columns)
    )
