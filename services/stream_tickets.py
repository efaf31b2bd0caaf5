"""Single-use tickets to the notification stream: an EventSource cannot send an Authorization
header, so the client trades its access token for a ticket valid seconds, sent as `?ticket=`."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.exceptions import AuthError
from models.notification import StreamTicket

TICKET_LIFETIME = timedelta(seconds=60)
# 256 bits from the operating system's generator, 43 URL-safe characters.
TICKET_BYTES = 32


class InvalidStreamTicket(AuthError):
    code = "invalid_ticket"
    message = "Invalid, expired or already used stream ticket"


@dataclass(frozen=True, slots=True)
class StreamCaller:
    """Who an open stream serves, as the token (or the ticket standing for it) said: a stream
    ends when the account's stamp or this session no longer holds."""

    user_id: int
    security_stamp: uuid.UUID
    session_id: uuid.UUID


def _digest(ticket: str) -> bytes:
    # A fast hash is enough for 256 random bits; a copy of the table gives no ticket back.
    return hashlib.sha256(ticket.encode()).digest()


class StreamTicketService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def issue(self, caller: StreamCaller) -> str:
        """A new ticket standing for the caller's token; the user's expired ones go."""
        await self.session.execute(
            delete(StreamTicket).where(
                StreamTicket.user_id == caller.user_id, StreamTicket.expires_at <= func.now()
            )
        )
        ticket = secrets.token_urlsafe(TICKET_BYTES)
        await self.session.execute(
            insert(StreamTicket).values(
                token_hash=_digest(ticket),
                user_id=caller.user_id,
                security_stamp=caller.security_stamp,
                session_id=caller.session_id,
                expires_at=func.now() + TICKET_LIFETIME,
            )
        )
        return ticket

    async def redeem(self, ticket: str) -> StreamCaller:
        """What the ticket stands for, used up in the same statement (two requests with one
        ticket: one wins); 401 invalid_ticket when unknown, used or expired."""
        stmt = (
            delete(StreamTicket)
            .where(StreamTicket.token_hash == _digest(ticket))
            .returning(
                StreamTicket.user_id,
                StreamTicket.security_stamp,
                StreamTicket.session_id,
                (StreamTicket.expires_at > func.now()).label("live"),
            )
        )
        found = (await self.session.execute(stmt)).one_or_none()
        if found is None or not found.live:
            raise InvalidStreamTicket()
        return StreamCaller(found.user_id, found.security_stamp, found.session_id)

    async def purge_expired(self) -> int:
        """Delete every expired ticket; how many."""
        stmt = delete(StreamTicket).where(StreamTicket.expires_at <= func.now())
        return int((await self.session.execute(stmt)).rowcount)  # type: ignore[attr-defined]
