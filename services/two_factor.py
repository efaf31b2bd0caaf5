"""Two-factor login (TOTP, RFC 6238): setup, enabling with recovery codes, the second factor of
a login, disabling, and an admin's reset (docs/securite.md, docs/adr/0011)."""

import asyncio
import base64
import hashlib
import hmac
import io
import logging
import secrets
import time

import pyotp
import segno
from sqlalchemy import delete, insert, or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.encryption import DecryptionError, keyring
from core.exceptions import AuthError, BadRequestError, ConflictError
from core.security import passwords
from models.two_factor import RecoveryCode
from models.user import User
from schemas.two_factor import RecoveryCodes, TwoFactorSetup
from services.users import InvalidCurrentPassword, UserService, caller_cache

logger = logging.getLogger(__name__)

# The name authenticator apps show beside the account's email.
ISSUER = "TPM Finance CRM"
# A code of the step before or after the server's is accepted too: phone clocks drift, and a
# code typed in the last seconds of its step arrives in the next one.
ALLOWED_DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
# Four groups of four base32 letters: 80 random bits, so a SHA-256 digest is enough to keep
# them (no guessing from a stolen digest), and a login can look one up by its digest.
_RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_RECOVERY_GROUPS = 4
_RECOVERY_GROUP_LENGTH = 4


class OtpRequired(AuthError):
    code = "otp_required"
    message = "Two-factor login is on for this account: send a code in the field otp"


class InvalidLoginOtp(AuthError):
    code = "invalid_otp"
    message = "Invalid or already used two-factor code"


class InvalidOtp(BadRequestError):
    code = "invalid_otp"
    message = "Invalid or already used two-factor code"


class TwoFactorAlreadyEnabled(ConflictError):
    code = "2fa_already_enabled"
    message = "Two-factor login is already on; disable it before setting it up again"


class TwoFactorSetupRequired(ConflictError):
    code = "2fa_setup_required"
    message = "No two-factor setup is pending: start with POST /api/v1/auth/2fa/setup"


class TwoFactorNotEnabled(ConflictError):
    code = "2fa_not_enabled"
    message = "Two-factor login is not on for this account"


def totp_context(user_id: int) -> str:
    """What a user's sealed TOTP secret is bound to: copied into another row, it does not open."""
    return f"users.totp_secret:{user_id}"


def _open(sealed: str, user_id: int) -> str:
    try:
        return keyring().decrypt(sealed, context=totp_context(user_id))
    except DecryptionError:
        # A server fault (500), named for the operator: the key changed or was lost.
        logger.error(
            "The TOTP secret of user %s does not decrypt: ENCRYPTION_KEY (or "
            "data/encryption_key) is not the key it was sealed with",
            user_id,
        )
        raise


def _qr_png_base64(uri: str) -> str:
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(buffer, kind="png", scale=5)
    return base64.b64encode(buffer.getvalue()).decode()


def _matching_step(secret: str, code: str, *, after: int | None) -> int | None:
    """The time step, within the allowed drift and later than `after`, whose code is `code`."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(time.time())
    for step in range(current - ALLOWED_DRIFT_STEPS, current + ALLOWED_DRIFT_STEPS + 1):
        if (after is None or step > after) and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _new_recovery_code() -> str:
    return "-".join(
        "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_GROUP_LENGTH))
        for _ in range(_RECOVERY_GROUPS)
    )


def recovery_code_digest(code: str) -> str:
    """What is kept of a recovery code, from the code as typed: in either case, with or without
    its hyphens."""
    return hashlib.sha256(code.lower().replace("-", "").encode()).hexdigest()


class TwoFactorService:
    """Two-factor login on top of the users table and the recovery codes."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.users = UserService(session)

    async def start_setup(self, user_id: int) -> TwoFactorSetup:
        """A new secret, kept encrypted as pending (replacing any pending one) until a first
        code enables it; 409 2fa_already_enabled while two-factor login is on."""
        user = await self.users.get(user_id, for_update=True)
        if user.two_factor_enabled:
            raise TwoFactorAlreadyEnabled()
        secret = pyotp.random_base32()  # 160 bits, as RFC 4226 recommends
        user.totp_pending_secret = keyring().encrypt(secret, context=totp_context(user.id))
        await self.session.flush()
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)
        # About 20 ms of pure Python: off the event loop, which serves every other request.
        qr_png = await asyncio.to_thread(_qr_png_base64, uri)
        return TwoFactorSetup(secret=secret, otpauth_uri=uri, qr_png_base64=qr_png)

    async def enable(self, user_id: int, code: str) -> RecoveryCodes:
        """Turn two-factor login on with a code of the pending secret; the recovery codes are
        returned here only."""
        user = await self.users.get(user_id, for_update=True)
        if user.two_factor_enabled:
            raise TwoFactorAlreadyEnabled()
        if user.totp_pending_secret is None:
            raise TwoFactorSetupRequired()
        step = _matching_step(_open(user.totp_pending_secret, user.id), code, after=None)
        if step is None:
            raise InvalidOtp()
        user.totp_secret, user.totp_pending_secret = user.totp_pending_secret, None
        # The code just typed does not open a login afterwards.
        user.totp_last_step = step
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        await self.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        await self.session.execute(
            insert(RecoveryCode),
            [{"user_id": user.id, "code_hash": recovery_code_digest(code)} for code in codes],
        )
        await self.session.flush()
        # This process sees the flag at once; the others when the change commits (NOTIFY).
        caller_cache.evict(user.id)
        logger.info("Two-factor login enabled for user %s", user.id)
        return RecoveryCodes(recovery_codes=codes)

    async def accept_code(self, user: User, code: str) -> bool:
        """Whether `code` is a TOTP code of `user` not used before (its step is recorded) or an
        unused recovery code (then spent): each code opens one login at most."""
        if user.totp_secret is None:
            return False
        if len(code) == 6 and code.isascii() and code.isdigit():
            secret = _open(user.totp_secret, user.id)
            step = _matching_step(secret, code, after=user.totp_last_step)
            if step is None:
                return False
            # Conditional: of two requests with the same code, one updates the row.
            recorded = await self.session.execute(
                update(User)
                .where(
                    User.id == user.id,
                    or_(User.totp_last_step.is_(None), User.totp_last_step < step),
                )
                # A login is no change to the account: updated_at stays.
                .values(totp_last_step=step, updated_at=User.updated_at)
                .returning(User.id)
            )
            return recorded.first() is not None
        spent = await self.session.execute(
            delete(RecoveryCode)
            .where(
                RecoveryCode.user_id == user.id,
                RecoveryCode.code_hash == recovery_code_digest(code),
            )
            .returning(RecoveryCode.id)
        )
        return spent.first() is not None

    async def disable(self, user_id: int, password: str, code: str) -> None:
        """Turn two-factor login off, with the password (400 invalid_password) and a TOTP or
        recovery code (400 invalid_otp)."""
        # The hashing slot before the row lock, as for a password change.
        async with passwords.slot():
            user = await self.users.get(user_id, for_update=True)
            if not user.two_factor_enabled:
                raise TwoFactorNotEnabled()
            if not await passwords.verify(password, user.hashed_password):
                raise InvalidCurrentPassword()
        if not await self.accept_code(user, code):
            raise InvalidOtp()
        await self._turn_off(user.id)

    async def reset(self, user_id: int) -> None:
        """An admin turns a user's two-factor login off (a lost phone); 404 for an unknown id."""
        user = await self.users.get(user_id, for_update=True)
        await self._turn_off(user.id)

    async def _turn_off(self, user_id: int) -> None:
        await self.session.execute(
            update(User)
            .where(User.id == user_id)
            .values(totp_secret=None, totp_pending_secret=None, totp_last_step=None)
        )
        await self.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        caller_cache.evict(user_id)
        logger.info("Two-factor login disabled for user %s", user_id)
