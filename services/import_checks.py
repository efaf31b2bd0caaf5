"""An import's rows checked against the database: investors and owners resolved, contacts
checked, duplicates found in the file and among live records, with one query per kind of key
(never one per row). Refusals are added to the sheet's errors."""

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeEngine

from models.base import Base
from models.contact import Contact
from models.data_import import OnDuplicate
from models.investor import Investor
from models.kpi import Kpi
from models.user import User
from services.import_rows import ParsedRow, ParsedSheet, RowError
from services.spreadsheet_columns import SpreadsheetEntity


@dataclass(slots=True)
class ImportPlan:
    """What a commit does: the rows to create, the records to update, how many skipped."""

    creates: list[ParsedRow] = field(default_factory=list)
    updates: list[tuple[ParsedRow, Base]] = field(default_factory=list)
    skipped: int = 0


_NO_OWNER = "No active user"


def _any(values: Iterable[Any], item_type: type[TypeEngine[Any]]) -> Any:
    """`= ANY(:array)`: one parameter however many values (an IN list binds one each, and the
    driver takes at most 32,767)."""
    return any_(bindparam(None, list(values), type_=ARRAY(item_type)))


def _email_key(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


class ImportChecker:
    """References resolved and duplicates found, for every row; refusals added to the sheet."""

    def __init__(
        self,
        session: AsyncSession,
        entity: SpreadsheetEntity,
        on_duplicate: OnDuplicate,
        sheet: ParsedSheet,
        *,
        lock: bool,
    ) -> None:
        self.session = session
        self.entity = entity
        self.on_duplicate = on_duplicate
        self.sheet = sheet
        # A commit locks the records it matched (it may update them); a dry run takes no lock.
        self.lock = lock
        # Owners named by the file who may keep their investors but be given no new one.
        self.inactive_owners: set[int] = set()

    def _refuse(self, row: ParsedRow, field_name: str, value: Any, code: str, message: str) -> None:
        header = self.sheet.headers.get(field_name, field_name)
        shown = None if value is None else str(value)
        self.sheet.errors.append(RowError(row.number, header, shown, code, message))

    async def plan(self) -> ImportPlan:
        rows = self.sheet.rows
        if self.entity is SpreadsheetEntity.investor:
            rows = await self._resolve_owners(rows)
        else:
            rows = await self._resolve_investors(rows)
        if self.entity is SpreadsheetEntity.interaction:
            rows = await self._check_contacts(rows)
        key_of, field_name = _KEYS[self.entity]
        rows = self._unique_in_file(rows, key_of, field_name)
        existing = await self._existing(rows, key_of)
        plan = ImportPlan()
        for row in rows:
            key = key_of(row)
            found = None if key is None else existing.get(key)
            if found is None:
                if self._refused_owner(row, None):
                    continue
                plan.creates.append(row)
            elif self.on_duplicate is OnDuplicate.error:
                self._refuse(
                    row,
                    field_name,
                    _shown_key(row, field_name),
                    "duplicate",
                    "A record with this key already exists",
                )
            elif self.on_duplicate is OnDuplicate.skip or not _differs(found, row, self.sheet):
                plan.skipped += 1
            elif not self._refused_owner(row, found):
                plan.updates.append((row, found))
        return plan

    def _refused_owner(self, row: ParsedRow, found: Base | None) -> bool:
        """An inactive user stays the owner of the investors they had (so an export of them
        imports again unchanged) but is refused as a new owner, as the API refuses them."""
        owner = row.values.get("owner_id")
        if owner not in self.inactive_owners or getattr(found, "owner_id", None) == owner:
            return False
        self._refuse(
            row, "owner_email", row.references.get("owner_email"), "unknown_reference", _NO_OWNER
        )
        return True

    async def _resolve_owners(self, rows: list[ParsedRow]) -> list[ParsedRow]:
        emails = {_email_key(row.references.get("owner_email")) for row in rows} - {None}
        owners: dict[str, int] = {}
        if emails:
            stmt = select(func.lower(User.email), User.id, User.is_active).where(
                func.lower(User.email) == _any(emails, String)
            )
            for email, user_id, active in (await self.session.execute(stmt)).tuples():
                owners[email] = user_id
                if not active:
                    self.inactive_owners.add(user_id)
        kept = []
        for row in rows:
            email = row.references.get("owner_email")
            if "owner_email" in self.sheet.headers:
                if email is None:
                    row.values["owner_id"] = None
                elif (owner := owners.get(email.lower())) is None:
                    self._refuse(row, "owner_email", email, "unknown_reference", _NO_OWNER)
                    continue
                else:
                    row.values["owner_id"] = owner
            kept.append(row)
        return kept

    async def _resolve_investors(self, rows: list[ParsedRow]) -> list[ParsedRow]:
        ids = {row.references.get("investor_id") for row in rows} - {None}
        emails = {_email_key(row.references.get("investor_email")) for row in rows} - {None}
        by_id: set[int] = set()
        by_email: dict[str, int] = {}
        if ids:
            stmt = select(Investor.id).where(
                Investor.id == _any(ids, Integer), Investor.deleted_at.is_(None)
            )
            by_id = set((await self.session.execute(stmt)).scalars())
        if emails:
            stmt2 = select(func.lower(Investor.email), Investor.id).where(
                func.lower(Investor.email) == _any(emails, String),
                Investor.deleted_at.is_(None),
                Investor.email.is_not(None),
            )
            by_email = dict((await self.session.execute(stmt2)).tuples().all())
        kept = []
        for row in rows:
            investor_id = row.references.get("investor_id")
            email = row.references.get("investor_email")
            if investor_id is not None:
                found = investor_id if investor_id in by_id else None
                field_name, value = "investor_id", investor_id
            else:
                found = by_email.get(email.lower()) if email else None
                field_name, value = "investor_email", email
            if found is None:
                self._refuse(row, field_name, value, "unknown_reference", "No such investor")
                continue
            row.values["investor_id"] = found
            kept.append(row)
        return kept

    async def _check_contacts(self, rows: list[ParsedRow]) -> list[ParsedRow]:
        ids = {row.values.get("contact_id") for row in rows} - {None}
        found: dict[int, int] = {}
        if ids:
            stmt = select(Contact.id, Contact.investor_id).where(
                Contact.id == _any(ids, Integer), Contact.deleted_at.is_(None)
            )
            found = dict((await self.session.execute(stmt)).tuples().all())
        kept = []
        for row in rows:
            contact_id = row.values.get("contact_id")
            if contact_id is not None and found.get(contact_id) != row.values["investor_id"]:
                self._refuse(
                    row, "contact_id", contact_id, "unknown_reference", "No such contact here"
                )
                continue
            kept.append(row)
        return kept

    def _unique_in_file(
        self, rows: list[ParsedRow], key_of: Callable[[ParsedRow], Hashable | None], name: str
    ) -> list[ParsedRow]:
        first: dict[Hashable, int] = {}
        kept = []
        for row in rows:
            key = key_of(row)
            if key is not None:
                if key in first:
                    self._refuse(
                        row,
                        name,
                        _shown_key(row, name),
                        "duplicate_in_file",
                        f"Same key as row {first[key]}",
                    )
                    continue
                first[key] = row.number
            kept.append(row)
        return kept

    async def _existing(
        self, rows: list[ParsedRow], key_of: Callable[[ParsedRow], Hashable | None]
    ) -> dict[Hashable, Base]:
        """The live records the rows' keys name (locked for a commit: it may update them)."""
        keys = [key for row in rows if (key := key_of(row)) is not None]
        if not keys:
            return {}
        found: dict[Hashable, Base] = {}
        for stmt in _lookups(self.entity, keys):
            locked = stmt.with_for_update() if self.lock else stmt
            for obj in (await self.session.execute(locked)).scalars():
                found.setdefault(_record_key(self.entity, obj), obj)
        return found


def _investor_key(row: ParsedRow) -> Hashable | None:
    email = row.values.get("email")
    if email:
        return ("email", email.lower())
    name = row.values.get("name")
    return ("name", name) if name else None


def _contact_key(row: ParsedRow) -> Hashable | None:
    email = row.values.get("email")
    return (row.values["investor_id"], email.lower()) if email else None


def _kpi_key(row: ParsedRow) -> Hashable | None:
    return (row.values["investor_id"], row.values["year"], row.values["month"])


def _no_key(_: ParsedRow) -> Hashable | None:
    return None


# Each entity's duplicate key and the column a duplicate is reported on.
_KEYS: dict[SpreadsheetEntity, tuple[Callable[[ParsedRow], Hashable | None], str]] = {
    SpreadsheetEntity.investor: (_investor_key, "email"),
    SpreadsheetEntity.contact: (_contact_key, "email"),
    SpreadsheetEntity.interaction: (_no_key, "id"),
    SpreadsheetEntity.kpi: (_kpi_key, "month"),
}


def _shown_key(row: ParsedRow, name: str) -> Any:
    value = row.values.get(name)
    return row.values.get("name") if value is None and name == "email" else value


def _record_key(entity: SpreadsheetEntity, obj: Any) -> Hashable:
    if entity is SpreadsheetEntity.investor:
        return ("email", obj.email.lower()) if obj.email else ("name", obj.name)
    if entity is SpreadsheetEntity.contact:
        return (obj.investor_id, (obj.email or "").lower())
    return (obj.investor_id, obj.year, obj.month)


def _lookups(entity: SpreadsheetEntity, keys: Sequence[Any]) -> list[Any]:
    if entity is SpreadsheetEntity.investor:
        emails = [value for kind, value in keys if kind == "email"]
        names = [value for kind, value in keys if kind == "name"]
        live = Investor.deleted_at.is_(None)
        stmts = []
        if emails:
            stmts.append(
                select(Investor).where(
                    func.lower(Investor.email) == _any(emails, String),
                    Investor.email.is_not(None),
                    live,
                )
            )
        if names:
            stmts.append(
                select(Investor)
                .where(Investor.name == _any(names, String), Investor.email.is_(None), live)
                .order_by(Investor.id)
            )
        return stmts
    investor_ids = sorted({key[0] for key in keys})
    if entity is SpreadsheetEntity.contact:
        return [
            select(Contact).where(
                Contact.investor_id == _any(investor_ids, Integer),
                Contact.deleted_at.is_(None),
                Contact.email.is_not(None),
            )
        ]
    return [
        select(Kpi).where(Kpi.investor_id == _any(investor_ids, Integer), Kpi.deleted_at.is_(None))
    ]


def _differs(obj: Base, row: ParsedRow, sheet: ParsedSheet) -> bool:
    return any(getattr(obj, name) != value for name, value in changes_of(row, sheet).items())


def changes_of(row: ParsedRow, sheet: ParsedSheet) -> dict[str, Any]:
    """What an update sets: the fields of the file's columns (the owner when it has that
    column), never the key that found the record."""
    return {
        name: value
        for name, value in row.values.items()
        if name in sheet.fields or name == "owner_id"
    }
