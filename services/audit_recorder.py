"""Recording audit entries, in the transaction of the change they describe.

BaseService's create / update / delete call `record` for every entity service that declares
`audit_entity`; writes that bypass those methods (a pipeline move, the KPI upsert, a password
change, a login) call it themselves.
"""

from collections.abc import Mapping, Sequence
from typing import Any, cast

from pydantic_core import to_jsonable_python
from sqlalchemy import Table, insert, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import Actor, current_actor
from core.config import settings
from core.observability import current_request_id
from models.audit import AuditAction, AuditEntry

# Secrets never enter the trail: a changed hash, token or stamp shows as this.
SECRET = "***"  # noqa: S105 (what stands for a secret)

# Built once (see services.investors._STATS): each entry only binds its values.
_INSERT = insert(cast(Table, AuditEntry.__table__))
_INSERT_MANY = _INSERT.returning(AuditEntry.id)


async def record(
    session: AsyncSession,
    action: AuditAction,
    entity: str,
    entity_id: int | None,
    changes: Mapping[str, Any] | None = None,
    *,
    investor_id: int | None = None,
    actor: Actor | None = None,
) -> None:
    """Insert one entry; the author is the request's caller (or `actor`), else the system."""
    if not settings.audit_enabled:
        return
    author = actor or current_actor()
    await session.execute(
        _INSERT,
        _entry(author, action, entity, entity_id, changes, investor_id, current_request_id()),
    )


def _entry(
    author: Actor,
    action: AuditAction,
    entity: str,
    entity_id: int | None,
    changes: Mapping[str, Any] | None,
    investor_id: int | None,
    request_id: str | None,
) -> dict[str, Any]:
    """The values of one audit entry."""
    return {
        "actor_id": author.id,
        "actor_kind": author.kind,
        "action": action,
        "entity": entity,
        "entity_id": entity_id,
        "investor_id": investor_id,
        "changes": None if changes is None else to_jsonable_python(changes),
        "request_id": request_id,
        "client_address": author.client_address,
    }


async def record_many(
    session: AsyncSession,
    action: AuditAction,
    entity: str,
    entries: Sequence[tuple[int, Mapping[str, Any] | None, int | None]],
    *,
    actor: Actor | None = None,
) -> None:
    """`record` for many rows of one entity at once, each (entity_id, changes, investor_id):
    one batched statement, where an import would otherwise pay a round trip per row."""
    if not settings.audit_enabled or not entries:
        return
    author = actor or current_actor()
    request_id = current_request_id()
    # With RETURNING, SQLAlchemy sends the rows as multi-row INSERTs ("insertmanyvalues"),
    # a thousand per statement, instead of one execution per row.
    await session.execute(
        _INSERT_MANY,
        [
            _entry(author, action, entity, entity_id, changes, investor_id, request_id)
            for entity_id, changes, investor_id in entries
        ],
    )


# login_failed: one entry per account, client address and minute, with how many attempts
# failed. The application role may not update an entry, so the count is never incremented:
# the minute's entry is written once the minute is over, counted from login_failures (which
# holds every failure, with its email, address and time). The unique partial index on
# (entity_id, client_address, at) makes a second writer of the same minute (another login
# attempt, the sweep job) insert nothing. Only emails of existing accounts join `users`: the
# email of an unknown account never reaches the trail (docs/adr/0013-journal-d-audit.md).
_FAILED_LOGINS = text(
    """
    INSERT INTO audit_log (at, actor_kind, action, entity, entity_id, client_address, count)
    SELECT date_trunc('minute', f.failed_at, 'UTC'), 'user', 'login_failed', 'user', u.id,
           f.client_address, count(*)
    FROM login_failures AS f
    JOIN users AS u ON lower(u.email) = f.email
    WHERE (CAST(:email AS varchar) IS NULL OR f.email = :email)
      AND (CAST(:client_address AS varchar) IS NULL OR f.client_address = :client_address)
      AND (:current_minute OR f.failed_at < date_trunc('minute', now(), 'UTC'))
    GROUP BY 1, u.id, f.client_address
    ON CONFLICT (entity_id, client_address, at) WHERE action = 'login_failed' DO NOTHING
    """
)


async def record_failed_logins(
    session: AsyncSession,
    *,
    email: str | None = None,
    client_address: str | None = None,
    current_minute: bool = False,
) -> None:
    """Write the login_failed entries of the minutes that are over (of one email, or every
    one), or of the current minute too when its failures are about to be deleted (a success
    forgets the address's failures)."""
    if not settings.audit_enabled:
        return
    params = {"email": email, "client_address": client_address, "current_minute": current_minute}
    await session.execute(_FAILED_LOGINS, params)
