from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Index, Integer, LargeBinary, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class PasswordResetToken(Base):
    """A reset link's token, kept only as its SHA-256 digest: a copy of the table (a backup, a
    leaked dump) opens no account. Deleted when used, or when a newer one is minted."""

    __tablename__ = "password_reset_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    # The purge of expired tokens (services.password_reset) scans this.
    expires_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, index=True
    )


class PasswordResetRequest(Base):
    """One accepted reset request, counted per email over the last hour. The email is kept as a
    keyed hash: the table never names an address, whether an account uses it or not."""

    __tablename__ = "password_reset_requests"
    __table_args__ = (
        Index("ix_password_reset_requests_email_key_requested_at", "email_key", "requested_at"),
        # The purge of expired rows.
        Index("ix_password_reset_requests_requested_at", "requested_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    email_key: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
