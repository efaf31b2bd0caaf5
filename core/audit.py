"""Who the audit trail names as the author of a change: the request's caller, else the system.

api/deps.py declares the caller of each writing request once it has resolved it; anything
else (the worker, scheduled jobs, start-up) writes as `system`.
"""

from contextvars import ContextVar
from dataclasses import dataclass

from core.observability import RequestContext, current_request
from models.audit import ActorKind


@dataclass(frozen=True, slots=True)
class Actor:
    kind: ActorKind
    id: int | None = None
    client_address: str | None = None


SYSTEM = Actor(ActorKind.system)

# The caller, with the request it was declared for: an actor left over from an earlier request
# served by the same task (an in-process client, a request that ended in a 500) is never taken
# for the current one's, and no request has to clear it.
_caller: ContextVar[tuple[RequestContext, Actor] | None] = ContextVar("audit_actor", default=None)


def declare_actor(actor: Actor) -> None:
    """Make `actor` the author of what the current request writes."""
    request = current_request()
    if request is not None:
        _caller.set((request, actor))


def current_actor() -> Actor:
    declared = _caller.get()
    if declared is None or declared[0] is not current_request():
        return SYSTEM
    return declared[1]
