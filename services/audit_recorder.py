"""Recording audit entries, in the transaction of the change they describe.

BaseService's create / update / delete call `record` for every entity service that declares
`audit_entity`; writes that bypass those methods (a pipeline move, the KPI upsert, a password
change, a login) call it themselves.
"""

from collections.abc import Mapping
from typing import Any, cast

from pydantic_core import to_jsonable_python
from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import Actor, current_actor
from core.config import settings
from core.observability import current_request_id
from models.audit import AuditAction, AuditEntry

# Secrets never enter the trail: a changed hash, token or stamp shows as this.
SECRET = "***"  # noqa: S105 (what stands for a secret)

# Built once (see services.investors._STATS): each entry only binds its values.
_INSERT = insert(cast(Table, AuditEntry.__table__))


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
        {
            "actor_id": author.id,
            "actor_kind": author.kind,
            "action": action,
            "entity": entity,
            "entity_id": entity_id,
            "investor_id": investor_id,
            "changes": None if changes is None else to_jsonable_python(changes),
            "request_id": current_request_id(),
            "client_address": author.client_address,
        },
    )
