"""Sessions that can be revoked: a login starts one (a refresh-token family), a refresh rotates its
refresh token, a logout or a reused refresh token revokes it."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings
from core.exceptions import AuthError
from core.security import create_access_token
from models.session import CLOCK_SKEW_MARGIN, AuthSession, RefreshToken
from models.user import User
from services.users import caller_cache

# 256 bits from the operating system's generator, 43 URL-safe characters.
REFRESH_TOKEN_BYTES = 32


class InvalidRefreshToken(AuthError):
    code = "invalid_refresh_token"
    message = "Invalid, expired or revoked refresh token"


class RefreshTokenReused(AuthError):
    code = "refresh_token_reused"
    message = "This refresh token was already used: its session is revoked, log in again"


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """What a login or a refresh hands out (schemas.user.Token)."""

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


def refresh_token_digest(refresh_token: str) -> bytes:
    """What is stored of a refresh token, and looked up: a lookup by digest compares no secret
    byte by byte, and a copy of the table gives no token back. A fast hash is enough for 256
    random bits, which no one can guess."""
    return hashlib.sha256(refresh_token.encode()).digest()


def _mint(
    user_id: int, stamp: uuid.UUID, session_id: uuid.UUID, settings: Settings
) -> IssuedTokens:
    access_token, expires_in = create_access_token(user_id, stamp, session_id, settings)
    return IssuedTokens(
        access_token=access_token,
        expires_in=expires_in,
        refresh_token=secrets.token_urlsafe(REFRESH_TOKEN_BYTES),
        refresh_expires_in=settings.refresh_token_days * 86400,
    )


def _session_expiries(issued: IssuedTokens) -> dict[str, Any]:
    return {
        "expires_at": func.now() + timedelta(seconds=issued.refresh_expires_in),
        "access_expires_at": func.now() + timedelta(seconds=issued.expires_in),
    }


class SessionService:
    """The sessions of the users table's accounts, and their refresh tokens."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def start(self, user: User, settings: Settings) -> IssuedTokens:
        """A new session for the user (a login): an access token and its first refresh token.
        The user's ended sessions are purged first, which keeps the tables small."""
        await self.session.execute(
            delete(AuthSession).where(
                AuthSession.user_id == user.id,
                AuthSession.expires_at < func.now(),
                AuthSession.access_expires_at < func.now() - CLOCK_SKEW_MARGIN,
            )
        )
        session_id = uuid.uuid4()
        issued = _mint(user.id, user.security_stamp, session_id, settings)
        await self.session.execute(
            insert(AuthSession).values(id=session_id, user_id=user.id, **_session_expiries(issued))
        )
        await self._store_refresh_token(session_id, issued)
        return issued

    async def refresh(self, refresh_token: str, settings: Settings) -> IssuedTokens:
        """The session's next tokens in exchange for its current refresh token, used up
        (rotation). 401 invalid_refresh_token for an unknown, expired or revoked one, or a
        deactivated account's; 401 refresh_token_reused, its session revoked, for one already
        used (it or a copy was stolen). The caller commits the revocation before answering."""
        stmt = (
            select(
                RefreshToken.id,
                RefreshToken.session_id,
                RefreshToken.used_at,
                (RefreshToken.expires_at > func.now()).label("live"),
                AuthSession.user_id,
                AuthSession.revoked_at,
                User.security_stamp,
                User.is_active,
            )
            .join(AuthSession, AuthSession.id == RefreshToken.session_id)
            .join(User, User.id == AuthSession.user_id)
            .where(RefreshToken.token_hash == refresh_token_digest(refresh_token))
            # Two refreshes with one token: the second waits here, then reads it used.
            .with_for_update(of=RefreshToken)
        )
        found = (await self.session.execute(stmt)).one_or_none()
        if found is None or not found.live:
            raise InvalidRefreshToken()
        if found.used_at is not None:
            await self._revoke(found.user_id, AuthSession.id == found.session_id)
            raise RefreshTokenReused()
        if found.revoked_at is not None or not found.is_active:
            raise InvalidRefreshToken()
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == found.id)
            .values(used_at=func.now())
            .execution_options(synchronize_session=False)
        )
        # An expired token is refused as unknown, used or not: its row has nothing left to say.
        await self.session.execute(
            delete(RefreshToken).where(
                RefreshToken.session_id == found.session_id,
                RefreshToken.expires_at <= func.now(),
            )
        )
        issued = _mint(found.user_id, found.security_stamp, found.session_id, settings)
        await self.session.execute(
            update(AuthSession)
            .where(AuthSession.id == found.session_id)
            .values(**_session_expiries(issued))
            .execution_options(synchronize_session=False)
        )
        await self._store_refresh_token(found.session_id, issued)
        return issued

    async def end(self, user_id: int, session_id: uuid.UUID) -> None:
        """Revoke one session of the user (a logout): its refresh token and access tokens are
        refused from then on."""
        await self._revoke(user_id, AuthSession.id == session_id)

    async def end_all(self, user_id: int) -> None:
        """Revoke every session of the user (UserService.end_all_sessions)."""
        await self._revoke(user_id)

    async def _revoke(self, user_id: int, *which: ColumnElement[bool]) -> None:
        await self.session.execute(
            update(AuthSession)
            .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None), *which)
            .values(revoked_at=func.now())
            .execution_options(synchronize_session=False)
        )
        # This process refuses the sessions' access tokens at once; every other one when the
        # revocation commits and is notified (migration 0013's trigger).
        caller_cache.evict(user_id)

    async def _store_refresh_token(self, session_id: uuid.UUID, issued: IssuedTokens) -> None:
        await self.session.execute(
            insert(RefreshToken).values(
                session_id=session_id,
                token_hash=refresh_token_digest(issued.refresh_token),
                expires_at=func.now() + timedelta(seconds=issued.refresh_expires_in),
            )
        )
