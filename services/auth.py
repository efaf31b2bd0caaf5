"""Login with throttling counted in PostgreSQL, token issue and the first admin."""

import logging
import math
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings
from core.exceptions import AuthError, BadRequestError, TooManyAttemptsError
from core.security import create_access_token, hash_password, verify_password
from models.user import LoginFailure, User, UserRole
from services.users import UserService

logger = logging.getLogger(__name__)


class InvalidCredentials(AuthError):
    code = "invalid_credentials"
    message = "Incorrect email or password"


DEFAULT_ADMIN_EMAIL = "admin@example.com"


# Serialises first-admin creation across workers starting at the same time.
_FIRST_ADMIN_LOCK_KEY = 0x7F3A_0001


class AuthService:
    """Authentication on top of the users table."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.users = UserService(session)

    async def check_throttle(self, email: str, settings: Settings) -> None:
        """429 with Retry-After while the email has too many recent failures."""
        window = timedelta(minutes=settings.login_failure_window_minutes)
        stmt = select(func.count(), func.min(LoginFailure.failed_at)).where(
            LoginFailure.email == email.lower(),
            LoginFailure.failed_at > func.now() - window,
        )
        count, oldest = (await self.session.execute(stmt)).one()
        if count >= settings.login_max_failures and oldest is not None:
            remaining = (oldest + window - datetime.now(UTC)).total_seconds()
            raise TooManyAttemptsError(max(1, math.ceil(remaining)))

    async def authenticate(self, email: str, password: str, settings: Settings) -> User | None:
        """The active user with these credentials, or None after recording the failure."""
        await self.check_throttle(email, settings)
        user = await self.users.get_by_email(email)
        valid = verify_password(password, user.hashed_password if user else None)
        if user is None or not valid or not user.is_active:
            self.session.add(LoginFailure(email=email.lower()))
            await self.session.flush()
            logger.info("Failed login attempt")
            return None
        await self.session.execute(delete(LoginFailure).where(LoginFailure.email == email.lower()))
        return user

    def issue_token(self, user: User, settings: Settings) -> tuple[str, int]:
        return create_access_token(user.id, settings)

    async def change_password(self, user_id: int, current: str, new: str) -> None:
        """Replace the password after checking the current one (400 invalid_password)."""
        # Locked: two concurrent changes cannot both pass the check against the old password.
        user = await self.users.get(user_id, for_update=True)
        if not verify_password(current, user.hashed_password):
            raise BadRequestError("The current password is incorrect", code="invalid_password")
        user.hashed_password = hash_password(new)
        await self.session.flush()

    async def ensure_first_admin(self, settings: Settings) -> str | None:
        """Create an admin when no user exists; returns the generated password, if any."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _FIRST_ADMIN_LOCK_KEY}
        )
        if await self.users.count() > 0:
            return None
        generated = None
        email = settings.first_admin_email or DEFAULT_ADMIN_EMAIL
        if settings.first_admin_password is not None:
            password = settings.first_admin_password.get_secret_value()
        else:
            password = generated = secrets.token_urlsafe(16)
        self.session.add(
            User(
                email=email.lower(),
                full_name="Administrator",
                hashed_password=hash_password(password),
                role=UserRole.admin,
                is_active=True,
            )
        )
        await self.session.flush()
        return generated
