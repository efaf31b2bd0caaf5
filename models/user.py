import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TimestampMixin, value_enum


class UserRole(enum.StrEnum):
    """What an account may do: core.policy holds the table."""

    admin = "admin"
    manager = "manager"
    user = "user"
    viewer = "viewer"


class User(TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        # Case-insensitive uniqueness; emails are also stored lower-cased.
        Index("uq_users_email_lower", func.lower(text("email")), unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    full_name: Mapped[str] = mapped_column(String(255), nullable=False)
    hashed_password: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[UserRole] = mapped_column(
        value_enum(UserRole, "user_role"),
        nullable=False,
        default=UserRole.user,
        server_default=UserRole.user.value,
    )
    is_active: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default="true"
    )
    # Carried in every access token and compared on every request: replacing it (password,
    # role or activity change, UserService.end_all_sessions) kills every token issued
    # before. Random, so a restored backup's reused ids never match an older account's tokens.
    security_stamp: Mapped[uuid.UUID] = mapped_column(
        Uuid, nullable=False, default=uuid.uuid4, server_default=func.gen_random_uuid()
    )
    # Two-factor login (services/two_factor.py): the TOTP secret, encrypted (core/encryption.py);
    # set, 2FA is on. The pending one waits for its first code (POST /auth/2fa/enable).
    totp_secret: Mapped[str | None] = mapped_column(String(255))
    totp_pending_secret: Mapped[str | None] = mapped_column(String(255))
    # The time step of the last code accepted: a code is accepted once, and none older after it.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    # The morning email of tasks due (PUT /auth/me/preferences); on unless switched off.
    daily_digest: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default="true"
    )

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.admin

    @property
    def two_factor_enabled(self) -> bool:
        return self.totp_secret is not None


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """The caller of a request: the account behind its token, read once per request.

    A plain value rather than a `User` entity: building and tracking an ORM instance on every
    request costs more than the lookup itself. Changes to the account load the entity.
    """

    id: int
    email: str
    full_name: str
    role: UserRole
    is_active: bool
    security_stamp: uuid.UUID
    # The account's revoked sessions (logout) whose access tokens may still be unexpired: a
    # token carrying one of them is refused. Read with the rest, so a cached caller costs no
    # extra query; a revocation evicts the account like any other change to it.
    revoked_sessions: frozenset[uuid.UUID] = frozenset()
    two_factor_enabled: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.admin


class LoginFailure(Base):
    """One failed login, counted over a sliding window per lower-cased email and client address
    (the lock), and per email (the ceiling every address shares)."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index(
            "ix_login_failures_email_client_address_failed_at",
            "email",
            "client_address",
            "failed_at",
        ),
        # The purge of expired rows (services.auth).
        Index("ix_login_failures_failed_at", "failed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    client_address: Mapped[str] = mapped_column(String(64), nullable=False)
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class LoginSuccess(Base):
    """The last successful login of a user from a client address: such an address is never
    slowed down by the failures other addresses cause on the account."""

    __tablename__ = "login_successes"

    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    client_address: Mapped[str] = mapped_column(String(64), primary_key=True)
    succeeded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
