"""Login with throttling counted in PostgreSQL, token issue and the first admin."""

import logging
import math
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit import Actor
from core.config import Settings
from core.exceptions import AuthError, InvalidFieldError, TooManyAttemptsError
from core.password_policy import check_password_strength
from core.security import passwords
from models.audit import ActorKind, AuditAction
from models.password_reset import PasswordResetToken
from models.user import LoginFailure, LoginSuccess, User, UserRole
from schemas.user import MeUpdate, UserUpdate
from services.audit_recorder import record, record_failed_logins
from services.sessions import IssuedTokens, SessionService
from services.two_factor import InvalidLoginOtp, OtpRequired, TwoFactorService
from services.users import InvalidCurrentPassword, UserService

logger = logging.getLogger(__name__)


class InvalidCredentials(AuthError):
    code = "invalid_credentials"
    message = "Incorrect email or password"


class CurrentPasswordRequired(InvalidFieldError):
    code = "current_password_required"
    message = "The current password is required to change the email"


DEFAULT_ADMIN_EMAIL = "admin@example.com"


# Serialises first-admin creation across workers starting at the same time.
_FIRST_ADMIN_LOCK_KEY = 0x7F3A_0001
# First key of the per-email login locks, pg_advisory_xact_lock(int, int): the two-key form
# never meets a one-key lock such as the one above.
_LOGIN_LOCK_SPACE = 0x7F3A
_LOGIN_LOCK = text("SELECT pg_advisory_xact_lock(:space, hashtext(:email))")

# Per email, once every address together has failed CEILING_FACTOR x LOGIN_MAX_FAILURES times in
# the window, an address the account has not logged in from lately waits after each failure
# a delay that starts here and doubles with every further one, up to the maximum.
CEILING_FACTOR = 4
CEILING_FIRST_DELAY_S = 30
CEILING_MAX_DELAY_S = 15 * 60
KNOWN_ADDRESS_DAYS = 30

# Every PURGE_EVERYth failure (by id: the same rhythm across processes) also deletes up to
# PURGE_BATCH expired failures of any email; each failure deletes its own email's at once.
PURGE_EVERY = 100
PURGE_BATCH = 1000


class AuthService:
    """Authentication on top of the users table."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.users = UserService(session)
        self.two_factor = TwoFactorService(session)

    async def authenticate(
        self,
        email: str,
        password: str,
        client_address: str,
        settings: Settings,
        *,
        otp: str | None = None,
    ) -> User | None:
        """The active user with these credentials, or None after recording the failure; 429
        while the email is locked for this address, or slowed down for every new address.
        With two-factor login on, the right password without `otp` is 401 otp_required, and
        with a wrong or used one 401 invalid_otp, recorded as a failure like a wrong password.

        The check, the password verification and the record of one attempt run under a lock
        on the email (every process), so no parallel attempt slips between count and record.
        The hashing slot comes first: logins waiting for one hold no connection and no lock.
        """
        email = email.lower()
        async with passwords.slot():
            await self.session.execute(_LOGIN_LOCK, {"space": _LOGIN_LOCK_SPACE, "email": email})
            user = await self.users.get_by_email(email)
            if user is not None:
                # Before this attempt's clean-ups delete the failures they are counted from.
                await record_failed_logins(self.session, email=email)
            await self._check_throttle(email, client_address, user, settings)
            valid = await passwords.verify(password, user.hashed_password if user else None)
            if user is None or not valid or not user.is_active:
                await self._record_failure(email, client_address, settings)
                logger.info("Failed login attempt")
                return None
            # Only past the password: a wrong one never tells whether 2FA is on.
            if user.two_factor_enabled:
                if otp is None:
                    raise OtpRequired()
                if not await self.two_factor.accept_code(user, otp):
                    await self._record_failure(email, client_address, settings)
                    logger.info("Failed two-factor login attempt")
                    raise InvalidLoginOtp()
            await self._record_success(user, client_address)
            actor = Actor(ActorKind.user, user.id, client_address)
            await record(self.session, AuditAction.login, "user", user.id, actor=actor)
            return user

    async def _check_throttle(
        self, email: str, client_address: str, user: User | None, settings: Settings
    ) -> None:
        window = timedelta(minutes=settings.login_failure_window_minutes)
        from_address = LoginFailure.client_address == client_address
        stmt = select(
            func.count().filter(from_address),
            func.min(LoginFailure.failed_at).filter(from_address),
            func.count(),
            func.max(LoginFailure.failed_at),
            func.now(),
        ).where(LoginFailure.email == email, LoginFailure.failed_at > func.now() - window)
        address_count, address_oldest, count, latest, now = (await self.session.execute(stmt)).one()
        if address_count >= settings.login_max_failures:
            raise TooManyAttemptsError(_seconds_until(address_oldest + window, now))
        beyond = count - CEILING_FACTOR * settings.login_max_failures
        if beyond < 0 or await self._is_known_address(user, client_address):
            return
        delay = min(CEILING_MAX_DELAY_S, CEILING_FIRST_DELAY_S * 2 ** min(beyond, 16))
        retry_at = latest + timedelta(seconds=delay)
        if now < retry_at:
            raise TooManyAttemptsError(_seconds_until(retry_at, now))

    async def _is_known_address(self, user: User | None, client_address: str) -> bool:
        if user is None:
            return False
        stmt = select(LoginSuccess.user_id).where(
            LoginSuccess.user_id == user.id,
            LoginSuccess.client_address == client_address,
            LoginSuccess.succeeded_at > func.now() - timedelta(days=KNOWN_ADDRESS_DAYS),
        )
        return (await self.session.execute(stmt)).first() is not None

    async def _record_failure(self, email: str, client_address: str, settings: Settings) -> None:
        expired = func.now() - timedelta(minutes=settings.login_failure_window_minutes)
        failure_id = (
            await self.session.execute(
                insert(LoginFailure)
                .values(email=email, client_address=client_address)
                .returning(LoginFailure.id)
            )
        ).scalar_one()
        await self.session.execute(
            delete(LoginFailure).where(
                LoginFailure.email == email, LoginFailure.failed_at <= expired
            )
        )
        if failure_id % PURGE_EVERY == 0:
            oldest = (
                select(LoginFailure.id)
                .where(LoginFailure.failed_at <= expired)
                .order_by(LoginFailure.failed_at)
                .limit(PURGE_BATCH)
            )
            await self.session.execute(delete(LoginFailure).where(LoginFailure.id.in_(oldest)))

    async def _record_success(self, user: User, client_address: str) -> None:
        email = user.email.lower()
        await record_failed_logins(
            self.session, email=email, client_address=client_address, current_minute=True
        )
        await self.session.execute(
            delete(LoginFailure).where(
                LoginFailure.email == email,
                LoginFailure.client_address == client_address,
            )
        )
        known = pg_insert(LoginSuccess).values(user_id=user.id, client_address=client_address)
        await self.session.execute(
            known.on_conflict_do_update(
                index_elements=[LoginSuccess.user_id, LoginSuccess.client_address],
                set_={"succeeded_at": func.now()},
            )
        )
        await self.session.execute(
            delete(LoginSuccess).where(
                LoginSuccess.user_id == user.id,
                LoginSuccess.succeeded_at <= func.now() - timedelta(days=KNOWN_ADDRESS_DAYS),
            )
        )

    async def issue_tokens(self, user: User, settings: Settings) -> IssuedTokens:
        """A new session for the authenticated user: an access token and a refresh token."""
        return await SessionService(self.session).start(user, settings)

    async def change_password(self, user_id: int, current: str, new: str) -> None:
        """Replace the password after checking the current one (400 invalid_password); every
        session ends, the caller's included: its tokens are refused from then on."""
        async with passwords.slot():
            # Locked: two concurrent changes cannot both pass the check against the old password.
            user = await self.users.get(user_id, for_update=True)
            if not await passwords.verify(current, user.hashed_password):
                raise InvalidCurrentPassword()
            await check_password_strength(
                new, email=user.email, full_name=user.full_name, field="new_password"
            )
            user.hashed_password = await passwords.hash(new)
        # Without autoflush: the new password and stamp stay pending for the entry save() records.
        with self.session.no_autoflush:
            await self.users.end_all_sessions(user)
        await self.users.save(user, AuditAction.password_changed)

    async def update_profile(self, user_id: int, data: MeUpdate) -> User:
        """Change one's own name or email; a new email needs the current password (400
        invalid_password, 422 when missing) and voids the reset links sent to the old one."""
        changes = data.model_dump(exclude_unset=True, exclude={"current_password"})
        if "email" in changes:
            async with passwords.slot():
                user = await self.users.get(user_id)
                # Stored lower-cased: the same address in other capitals is no change.
                if changes["email"].lower() == user.email:
                    del changes["email"]
                elif data.current_password is None:
                    raise CurrentPasswordRequired("body", "current_password")
                elif not await passwords.verify(data.current_password, user.hashed_password):
                    raise InvalidCurrentPassword()
        user = await self.users.update_user(user_id, UserUpdate.model_validate(changes))
        if "email" in changes:
            await self.session.execute(
                delete(PasswordResetToken).where(PasswordResetToken.user_id == user_id)
            )
        return user

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
                hashed_password=await passwords.hash(password),
                role=UserRole.admin,
                is_active=True,
            )
        )
        await self.session.flush()
        return generated


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))
