import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TimestampMixin, value_enum


class UserRole(enum.StrEnum):
    admin = "admin"
    user = "user"


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

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.admin


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

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.admin


class LoginFailure(Base):
    """One failed login; counted per lower-cased email over a sliding window."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_email_failed_at", "email", "failed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
