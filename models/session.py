"""Sessions that can be revoked: one per login (a refresh-token family), and its refresh tokens."""

import uuid
from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# A revoked session is still listed for the callers this long after its last access token
# expired: the database's clock dates sessions, the API servers' checks a token's `exp`, and the
# two may differ a little. Past it (and past its refresh token's expiry), a session is purged.
CLOCK_SKEW_MARGIN = timedelta(minutes=5)


class AuthSession(Base):
    """A login and every refresh token rotated from it. Its id is the `sid` of each access token
    issued for it: revoking the session refuses those too (services.users, the callers' cache)."""

    __tablename__ = "auth_sessions"
    __table_args__ = (
        # Read with the caller on every request the cache does not answer: the account's revoked
        # sessions whose access tokens may still be alive, however many live sessions it has.
        Index(
            "ix_auth_sessions_user_id_access_expires_at_revoked",
            "user_id",
            "access_expires_at",
            postgresql_where=text("revoked_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    # When its newest refresh token expires: past it (and past access_expires_at), the session
    # is over and purged.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # When the newest access token issued for it expires: a revoked session must be known as
    # such until then, whatever JWT_EXPIRATION_HOURS says by that time.
    access_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RefreshToken(Base):
    """One refresh token of a session, stored as the SHA-256 digest of its text only. Used once:
    presenting it again (the token or its copy was stolen) revokes its session."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("auth_sessions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    issued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
