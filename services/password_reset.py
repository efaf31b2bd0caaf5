"""Password reset by email: the request (counted per email, answered alike for every address),
the job that mints a single-use token and emails the link, and the confirmation that sets the
new password and ends every session of the account."""

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings, settings
from core.email import OutgoingEmail
from core.exceptions import BadRequestError
from core.jobs import JobContext, job_types
from core.password_policy import check_password_strength
from core.security import passwords
from models.password_reset import PasswordResetRequest, PasswordResetToken
from models.user import User
from schemas.common import PG_INT_MAX
from services.emails import EMAIL_RETRY, deliver
from services.jobs import JobService
from services.users import UserService

PASSWORD_RESET_JOB = "auth.password_reset"  # noqa: S105

TOKEN_BYTES = 32  # 256 bits from `secrets`
TOKEN_LIFETIME = timedelta(minutes=30)
MAX_REQUESTS = 3
REQUEST_WINDOW = timedelta(hours=1)
# Every request answers no sooner than this: long enough to cover, on a loaded server, what an
# existing account costs more (the job's rows and the queue's NOTIFY), so the time does not
# tell whether the address has an account.
REQUEST_FLOOR_S = 0.3
# Expired rows deleted by each request (requests) or each minted token (tokens): the tables
# stay as small as their windows whatever the traffic.
PURGE_BATCH = 100

# First key of the per-email request locks, pg_advisory_xact_lock(int, int): services.auth
# uses 0x7F3A for its login locks.
_REQUEST_LOCK_SPACE = 0x7F3B
_REQUEST_LOCK = text("SELECT pg_advisory_xact_lock(:space, :key)")
# Domain separation: the signing key also signs the access tokens.
_EMAIL_KEY_CONTEXT = b"tpm-crm password reset request\x00"


class InvalidResetToken(BadRequestError):
    code = "invalid_reset_token"
    message = "This reset link is invalid, used or expired; ask for a new one"


class PasswordResetPayload(BaseModel):
    """The job's payload: the account only. The token is minted when the email is sent, so it
    is never stored in clear, not even in the queue."""

    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=PG_INT_MAX, strict=True)


def token_digest(token: str) -> bytes:
    """What the table keeps of a token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()


def _email_key(email: str, settings: Settings) -> bytes:
    """The keyed hash the request counter stores instead of the address."""
    message = _EMAIL_KEY_CONTEXT + email.lower().encode()
    return hmac.new(settings.signing_key().encode(), message, hashlib.sha256).digest()


def reset_link(token: str, settings: Settings) -> str:
    """PASSWORD_RESET_URL with the token as its `token` query parameter (others kept)."""
    url = urlsplit(settings.password_reset_url)
    query = [(name, value) for name, value in parse_qsl(url.query) if name != "token"]
    return urlunsplit(url._replace(query=urlencode([*query, ("token", token)])))


def reset_email(user: User, token: str, settings: Settings) -> OutgoingEmail:
    minutes = int(TOKEN_LIFETIME.total_seconds() // 60)
    text = (
        f"Bonjour {user.full_name},\n\n"
        "Une réinitialisation du mot de passe de votre compte TPM Finance CRM a été demandée. "
        f"Pour choisir un nouveau mot de passe, ouvrez ce lien dans les {minutes} minutes :\n\n"
        f"{reset_link(token, settings)}\n\n"
        "Ce lien ne sert qu'une fois ; une nouvelle demande annule le précédent. Une fois le "
        "mot de passe changé, toutes vos sessions sont fermées.\n\n"
        "Si vous n'êtes pas à l'origine de cette demande, ignorez ce message : votre mot de "
        "passe reste inchangé.\n"
    )
    return OutgoingEmail(
        to=[user.email], subject="Réinitialisation de votre mot de passe", text=text
    )


@asynccontextmanager
async def lasting_at_least(seconds: float) -> AsyncIterator[None]:
    """The block, then a wait until `seconds` have passed since it started (not after an
    error: those answers do not depend on the account)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    yield
    await asyncio.sleep(max(0.0, started + seconds - loop.time()))


class PasswordResetService:
    """Reset requests, tokens and their use, on top of the users table."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.users = UserService(session)

    async def request_reset(self, email: str, settings: Settings) -> None:
        """Queue the reset email of the active account using `email`, unless the address had
        MAX_REQUESTS accepted requests in the last hour; else nothing, silently. Both ways run
        the same statements up to the enqueue, which only an active account gets."""
        key = _email_key(email, settings)
        # Per email, on every process: two parallel requests cannot both take the last place.
        lock_key = int.from_bytes(key[:4], "big", signed=True)
        await self.session.execute(_REQUEST_LOCK, {"space": _REQUEST_LOCK_SPACE, "key": lock_key})
        since = func.now() - REQUEST_WINDOW
        recent = (
            await self.session.execute(
                select(func.count()).where(
                    PasswordResetRequest.email_key == key,
                    PasswordResetRequest.requested_at > since,
                )
            )
        ).scalar_one()
        expired = (
            select(PasswordResetRequest.id)
            .where(PasswordResetRequest.requested_at <= since)
            .order_by(PasswordResetRequest.requested_at)
            .limit(PURGE_BATCH)
        )
        await self.session.execute(
            delete(PasswordResetRequest).where(PasswordResetRequest.id.in_(expired))
        )
        user = await self.users.get_by_email(email)
        # Dropped requests are not recorded: flooding an address cannot keep its owner from
        # asking again an hour after the last accepted request.
        if recent >= MAX_REQUESTS:
            return
        await self.session.execute(insert(PasswordResetRequest).values(email_key=key))
        if user is not None and user.is_active:
            await JobService(self.session).enqueue(
                PASSWORD_RESET_JOB, PasswordResetPayload(user_id=user.id)
            )

    async def mint_token(self, user_id: int) -> str:
        """A new token for the user, their earlier ones revoked; stored as its digest only."""
        await self.session.execute(
            delete(PasswordResetToken).where(PasswordResetToken.user_id == user_id)
        )
        expired = (
            select(PasswordResetToken.id)
            .where(PasswordResetToken.expires_at <= func.now())
            .limit(PURGE_BATCH)
        )
        await self.session.execute(
            delete(PasswordResetToken).where(PasswordResetToken.id.in_(expired))
        )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        await self.session.execute(
            insert(PasswordResetToken).values(
                token_hash=token_digest(token),
                user_id=user_id,
                expires_at=func.now() + TOKEN_LIFETIME,
            )
        )
        return token

    async def confirm(self, token: str, new_password: str) -> None:
        """Set the new password of the token's account and end every session of it; a used,
        expired or unknown token (or a deactivated account) is 400 invalid_reset_token. A weak
        password is 422 and leaves the token usable (the transaction is rolled back)."""
        async with passwords.slot():
            # Found by its digest through the unique index: the database compares digests of
            # 256-bit secrets, never the token, so the lookup's time tells nothing about any
            # valid token. Deleted as it is found: of two concurrent uses, one gets it.
            consume = (
                delete(PasswordResetToken)
                .where(
                    PasswordResetToken.token_hash == token_digest(token),
                    PasswordResetToken.expires_at > func.now(),
                )
                .returning(PasswordResetToken.user_id)
            )
            user_id = (await self.session.execute(consume)).scalar_one_or_none()
            if user_id is None:
                raise InvalidResetToken()
            user = await self.users.get(user_id)
            if not user.is_active:
                raise InvalidResetToken()
            await check_password_strength(
                new_password, email=user.email, full_name=user.full_name, field="new_password"
            )
            new_hash = await passwords.hash(new_password)
        # Locked only now: the hashing above must not hold the user-change lock.
        user = await self.users.get_for_change(user_id)
        if not user.is_active:
            raise InvalidResetToken()
        user.hashed_password = new_hash
        await self.session.execute(
            delete(PasswordResetToken).where(PasswordResetToken.user_id == user_id)
        )
        await self.users.end_all_sessions(user)
        await self.session.flush()


@job_types.register(PASSWORD_RESET_JOB, PasswordResetPayload, retry=EMAIL_RETRY)
async def send_reset_link(payload: PasswordResetPayload, context: JobContext) -> None:
    """Mint the user's token and email the link, in the job's transaction: an attempt that fails
    leaves no token behind, and every attempt's token revokes the ones before it."""
    user = await context.session.get(User, payload.user_id)
    if user is None or not user.is_active:
        return  # deleted or deactivated since the request: nothing to send
    token = await PasswordResetService(context.session).mint_token(user.id)
    await deliver(reset_email(user, token, settings), context)
