"""GDPR requests: a person's data exported (articles 15 and 20), or the person forgotten
(article 17) while what accounting must keep stays (docs/audit-corbeille-rgpd.md#rgpd)."""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.dialects.postgresql import array, insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import settings
from core.exceptions import ConflictError, NotFoundError
from models.audit import AuditAction
from models.contact import Contact
from models.gdpr import Anonymization, GdprEntity
from models.interaction import Interaction
from models.investor import Investor
from models.task import Task
from models.user import User
from schemas.contact import ContactRead
from schemas.gdpr import AnonymizeResult, PersonalDataExport
from schemas.interaction import InteractionRead
from schemas.investor import InvestorRead
from schemas.user import UserRead
from services.audit import AuditService
from services.audit_recorder import record
from services.gdpr_traces import (
    delete_outbox_messages,
    forget_search_words,
    scrub_imports,
    scrub_jobs,
)
from services.notifications import NotificationService

# What stands for a name (a NOT NULL, non-blank column); every other personal field is null.
ANONYMIZED_NAME = "Anonymisé"

# The personal fields of each entity, as their columns and audit entries name them. Amounts,
# dates, types, stages and KPI figures are no personal data about the person and stay.
INVESTOR_FIELDS = ("name", "email", "phone", "website", "company", "notes")
CONTACT_FIELDS = ("name", "email", "phone", "title", "notes")
INTERACTION_FIELDS = ("subject", "notes")
_FIELDS = {GdprEntity.investor: INVESTOR_FIELDS, GdprEntity.contact: CONTACT_FIELDS}
# A task's title may name the person ("Rappeler Jeanne Martin"): it is cleared with them.
TASK_FIELDS = ("title", "description")


class UnknownRecord(NotFoundError):
    message = "No contact or investor has this id"


class AlreadyAnonymized(ConflictError):
    code = "already_anonymized"
    message = "This record has already been anonymised"


def _cleared(fields: Sequence[str], *, required: str = "name") -> dict[str, Any]:
    return {field: ANONYMIZED_NAME if field == required else None for field in fields}


class GdprService:
    """Export and anonymisation of the people the CRM holds."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def anonymize(
        self, entity: GdprEntity, id_: int, *, actor_id: int | None
    ) -> AnonymizeResult:
        """Irreversibly replace the personal values of a contact, or of an investor with its
        contacts, and of their interactions, wherever the CRM holds them (the trash, the audit
        trail, search words, jobs, the outbox); 404 unknown id, 409 already_anonymized."""
        # Trashed records too: they are still held. The lock makes a second request wait.
        held = await self._locked(entity, id_)
        anonymized_at = await self._enter_in_ledger(entity, id_, actor_id)
        if anonymized_at is None:
            raise AlreadyAnonymized()
        if entity is GdprEntity.investor:
            investor_id, people = id_, [held]
            in_scope, about = Contact.investor_id == id_, Interaction.investor_id == id_
        else:
            investor_id, people = held.investor_id, []
            in_scope, about = Contact.id == id_, Interaction.contact_id == id_
        contacts = (await self.session.execute(_CONTACT_VALUES.where(in_scope))).all()
        found = await self.session.execute(select(Interaction.id).where(about))
        contact_ids, interaction_ids = [row.id for row in contacts], list(found.scalars())
        # The tasks about the investor (the contact's): trashed ones too.
        tasks = await self.session.execute(select(Task.id).where(Task.investor_id == investor_id))
        task_ids = list(tasks.scalars())
        if entity is GdprEntity.investor:
            await self._clear(Investor, [id_], INVESTOR_FIELDS)
            await AuditService(self.session).scrub("investor", [id_], INVESTOR_FIELDS)
            # Its contacts go with it: a later request about one of them is a 409 too.
            for contact_id in contact_ids:
                await self._enter_in_ledger(GdprEntity.contact, contact_id, actor_id)
        await self._clear(Contact, contact_ids, CONTACT_FIELDS)
        await self._clear(Interaction, interaction_ids, INTERACTION_FIELDS)
        await AuditService(self.session).scrub("contact", contact_ids, CONTACT_FIELDS)
        await AuditService(self.session).scrub("interaction", interaction_ids, INTERACTION_FIELDS)
        await self._clear(Task, task_ids, TASK_FIELDS, required="title")
        await AuditService(self.session).scrub("task", task_ids, TASK_FIELDS)
        changes = {"contacts": len(contact_ids), "interactions": len(interaction_ids)}
        await record(
            self.session, AuditAction.anonymize, entity, id_, changes, investor_id=investor_id
        )
        await self._forget_traces([*people, *contacts])
        return AnonymizeResult(
            entity=entity,
            id=id_,
            anonymized_at=anonymized_at,
            contacts=len(contact_ids),
            interactions=len(interaction_ids),
        )

    async def replay(self, entries: Iterable[tuple[GdprEntity, int]]) -> int:
        """Anonymise again what the ledger lists and this database does not hold as done: after
        a restore of an older backup (scripts/restore.sh). How many records were anonymised.

        A listed record missing here (purged before the backup, or created after it) has nothing
        left to clear but its history in the audit trail, scrubbed; it does not enter this
        ledger, since its id may be given to a new record."""
        done = set((await self.session.execute(_LEDGER)).tuples())
        # Investors first: each takes its contacts along, whose own lines are then done.
        pending = sorted(set(entries) - done, key=lambda e: (e[0] is not GdprEntity.investor, e))
        count = 0
        for entity, id_ in pending:
            try:
                await self.anonymize(entity, id_, actor_id=None)
            except AlreadyAnonymized:
                continue
            except UnknownRecord:
                await AuditService(self.session).scrub(entity, [id_], _FIELDS[entity])
                continue
            count += 1
        return count

    async def _forget_traces(self, people: Sequence[Row[Any]]) -> None:
        """Clear what derives from these former values (each row holds `values`, a tuple of
        them, and `words`, the text its search words came from)."""
        await forget_search_words(self.session, [person.words for person in people])
        # Values too short would match unrelated jobs; the neutral name is nobody's.
        values = [
            value
            for person in people
            for value in person.values
            if value and len(value) >= 3 and value != ANONYMIZED_NAME
        ]
        await scrub_jobs(self.session, values)
        await NotificationService(self.session).scrub(values, ANONYMIZED_NAME)
        await scrub_imports(self.session, values)
        # Every value, not only the addresses: a digest mentions an investor by name.
        await delete_outbox_messages(settings.email_outbox_dir, values)

    async def export(self, email: str) -> PersonalDataExport:
        """Every record holding this email (users, investors, contacts, in the trash too) and
        the interactions about those investors and contacts; each record exported is audited."""
        key = email.lower()
        users = await self._all(select(User).where(func.lower(User.email) == key))
        investors = await self._all(select(Investor).where(func.lower(Investor.email) == key))
        contacts = await self._all(select(Contact).where(func.lower(Contact.email) == key))
        investor_ids = [investor.id for investor in investors]
        contact_ids = [contact.id for contact in contacts]
        interactions = await self._all(
            select(Interaction).where(
                or_(
                    Interaction.investor_id.in_(investor_ids),
                    Interaction.contact_id.in_(contact_ids),
                )
            )
        )
        for user in users:
            await record(self.session, AuditAction.export, "user", user.id)
        for investor in investors:
            await record(
                self.session, AuditAction.export, "investor", investor.id, investor_id=investor.id
            )
        for contact in contacts:
            await record(
                self.session,
                AuditAction.export,
                "contact",
                contact.id,
                investor_id=contact.investor_id,
            )
        return PersonalDataExport(
            email=email,
            exported_at=datetime.now(UTC),
            users=[UserRead.model_validate(user) for user in users],
            investors=[InvestorRead.model_validate(investor) for investor in investors],
            contacts=[ContactRead.model_validate(contact) for contact in contacts],
            interactions=[InteractionRead.model_validate(item) for item in interactions],
        )

    async def _locked(self, entity: GdprEntity, id_: int) -> Row[Any]:
        """The record's former values, its row locked; 404 when there is no such record."""
        stmt = _INVESTOR_VALUES if entity is GdprEntity.investor else _CONTACT_VALUES
        model: Any = Investor if entity is GdprEntity.investor else Contact
        locked = stmt.where(model.id == id_).with_for_update(of=model)
        row = (await self.session.execute(locked)).one_or_none()
        if row is None:
            raise UnknownRecord()
        return row

    async def _enter_in_ledger(
        self, entity: GdprEntity, id_: int, actor_id: int | None
    ) -> datetime | None:
        """When the record entered the ledger; None when it was there already."""
        stmt = (
            insert(Anonymization)
            .values(entity=entity, entity_id=id_, anonymized_by=actor_id)
            .on_conflict_do_nothing()
            .returning(Anonymization.anonymized_at)
        )
        anonymized_at: datetime | None = (await self.session.execute(stmt)).scalar_one_or_none()
        return anonymized_at

    async def _clear(
        self, model: Any, ids: Sequence[int], fields: Sequence[str], *, required: str = "name"
    ) -> None:
        """Null the fields, but the NOT NULL one (`required`), which gets the neutral name."""
        if ids:
            await self.session.execute(
                update(model)
                .where(model.id.in_(ids))
                .values(_cleared(fields, required=required))
                .execution_options(synchronize_session=False)
            )

    async def _all(self, stmt: Any) -> list[Any]:
        return list((await self.session.execute(stmt.order_by("id"))).scalars().all())


# The former values of a person, read before they are cleared: what jobs and the outbox are
# searched for, and the text whose search words may have to go (migration 0007's sources).
_INVESTOR_VALUES = select(
    Investor.id,
    array(
        [Investor.name, Investor.email, Investor.phone, Investor.website, Investor.company]
    ).label("values"),
    Investor.fuzzy_text.label("words"),
)
_CONTACT_VALUES = select(
    Contact.id,
    Contact.investor_id,
    array([Contact.name, Contact.email, Contact.phone]).label("values"),
    Contact.search_text.label("words"),
)
_LEDGER = select(Anonymization.entity, Anonymization.entity_id)
