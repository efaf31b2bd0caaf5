from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from models.user import UserRole
from schemas.common import (
    Email,
    InputModel,
    Name,
    Password,
    ReadModel,
    StrictBool,
    SubmittedPassword,
    bounded_str,
    omittable,
)
from schemas.two_factor import SecondFactor


class UserCreate(InputModel):
    email: Email
    full_name: Name
    password: Password
    role: UserRole = UserRole.user
    is_active: StrictBool = True


class UserUpdate(InputModel):
    email: Email = omittable()
    full_name: Name = omittable()
    password: Password = omittable()
    role: UserRole = omittable()
    is_active: StrictBool = omittable()


class UserRead(ReadModel):
    id: int
    email: str
    full_name: str
    role: UserRole
    is_admin: bool
    is_active: bool
    two_factor_enabled: bool
    created_at: datetime
    updated_at: datetime


UserSort = Literal["email", "-email", "full_name", "-full_name", "created_at", "-created_at"]


class LoginJSON(InputModel):
    email: Email
    password: SubmittedPassword
    # With two-factor login on: a TOTP code or an unused recovery code.
    otp: SecondFactor | None = None


class Token(ReadModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


# Issued ones have 43 characters; the bound only keeps absurd bodies out.
RefreshTokenText: Any = bounded_str(256, min_length=1)


class RefreshRequest(InputModel):
    refresh_token: Annotated[
        RefreshTokenText, Field(description="The refresh token of the login or last refresh")
    ]


class PasswordChange(InputModel):
    current_password: SubmittedPassword
    new_password: Password


class Me(ReadModel):
    id: int
    email: str
    full_name: str
    role: UserRole
    is_admin: bool
    is_active: bool
    two_factor_enabled: bool


class MeUpdate(InputModel):
    """One's own profile; a new email needs the current password."""

    full_name: Name = omittable()
    email: Email = omittable()
    current_password: SubmittedPassword = omittable()


class PasswordResetRequestBody(InputModel):
    email: Email


class PasswordResetAccepted(ReadModel):
    message: str = (
        "If an active account uses this address, a reset link valid 30 minutes is on its way."
    )


# What the reset email's link carries: URL-safe base64 (43 characters today), with room for a
# longer token.
ResetToken = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$"
    ),
]


class PasswordResetConfirm(InputModel):
    token: ResetToken
    new_password: Password
