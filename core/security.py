"""Password hashing (argon2 only) and JWT access tokens with pinned algorithm and claims."""

import asyncio
import os
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from jose import JWTError, jwt
from passlib.context import CryptContext

from core.config import JWT_AUDIENCE, JWT_ISSUER, Settings, settings
from core.exceptions import AuthError
from schemas.common import PG_INT_MAX

_password_context = CryptContext(schemes=["argon2"], deprecated="auto")

# Verified against when the email is unknown, so both failure paths cost one argon2 check.
_DUMMY_HASH = _password_context.hash("not-a-real-password-timing-equaliser")

TOKEN_TYPE = "access"  # noqa: S105
# ASCII digits only: str.isdigit() also accepts "²" (int() then fails) and "٢" (read as 2).
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")
# Clock skew tolerated between the servers that sign and check: an iat further ahead is forged.
IAT_LEEWAY_SECONDS = 30
ResultT = TypeVar("ResultT")


class InvalidTokenError(AuthError):
    code = "invalid_token"
    message = "Invalid or expired token"


def hash_password(password: str) -> str:
    """Blocking: for scripts and fixtures outside the event loop; the app uses `passwords`."""
    return _password_context.hash(password)


def _verify(password: str, hashed: str | None) -> bool:
    if hashed is None:
        _password_context.verify(password, _DUMMY_HASH)
        return False
    return bool(_password_context.verify(password, hashed))


# Niceness of the hashing threads (and of the threads argon2 starts for its lanes, which inherit
# it): on a busy machine, serving requests comes before checking passwords.
HASHING_NICENESS = 10


def _lower_thread_priority() -> None:
    if sys.platform == "linux":  # elsewhere PRIO_PROCESS with a thread id is no thread's own
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


class PasswordHashing:
    """argon2 off the event loop: each hash or check runs in a thread of its own pool (argon2
    releases the GIL) at a lower priority, at most `concurrency` at a time per process, so a
    flood of logins queues in memory instead of stalling every request or allocating 64 MiB
    per attempt at once."""

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._holding: ContextVar[bool] = ContextVar("holding_hashing_slot", default=False)
        self._threads = ThreadPoolExecutor(
            concurrency, thread_name_prefix="argon2", initializer=_lower_thread_priority
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one hashing slot for the block (a login takes it before any connection or lock,
        so that the logins waiting for one hold neither)."""
        if self._holding.get():
            yield
            return
        async with self._slots:
            reset = self._holding.set(True)
            try:
                yield
            finally:
                self._holding.reset(reset)

    async def hash(self, password: str) -> str:
        return await self._run(_password_context.hash, password)

    async def verify(self, password: str, hashed: str | None) -> bool:
        """Check a password; with no hash, still spend the same time and answer False."""
        return await self._run(_verify, password, hashed)

    async def run(self, function: Callable[..., ResultT], *args: object) -> ResultT:
        """Other CPU-bound password work (strength scoring) in the same threads and slots."""
        return await self._run(function, *args)

    async def _run(self, function: Callable[..., ResultT], *args: object) -> ResultT:
        async with self.slot():
            return await asyncio.get_running_loop().run_in_executor(self._threads, function, *args)


passwords = PasswordHashing(settings.password_hashing_concurrency)


class AccessClaims(NamedTuple):
    user_id: int
    # The account's security stamp when the token was issued (models.user.User).
    stamp: uuid.UUID
    # The session (refresh-token family, models.session.AuthSession) the token belongs to.
    session_id: uuid.UUID


def create_access_token(
    user_id: int, security_stamp: uuid.UUID, session_id: uuid.UUID, settings: Settings
) -> tuple[str, int]:
    """Sign a token for the user's session; returns it with its lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = timedelta(hours=settings.jwt_expiration_hours)
    claims = {
        "sub": str(user_id),
        "stamp": security_stamp.hex,
        "sid": session_id.hex,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "typ": TOKEN_TYPE,
    }
    token = jwt.encode(claims, settings.signing_key(), algorithm=settings.jwt_algorithm)
    return token, int(lifetime.total_seconds())


class _VerifiedTokens:
    """Tokens already verified, with their user id and expiry: a client's next requests skip
    parsing and the signature check (a fifth of a cached read's cost) but not the expiry.

    Keyed by the key and algorithm too, so tokens signed under a replaced key are verified
    again (and refused). Bounded; the least recently used entries go first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str, str], tuple[AccessClaims, int]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> tuple[AccessClaims, int] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, str, str], claims: AccessClaims, expires_at: int) -> None:
        self._entries[key] = (claims, expires_at)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)


_verified_tokens = _VerifiedTokens(size=4096)


def decode_access_token(token: str, settings: Settings) -> AccessClaims:
    """Verify signature, algorithm, expiry, issuer, audience and type; return the user id, the
    security stamp and the session, which the caller compares with the account's."""
    cache_key = (token, settings.signing_key(), settings.jwt_algorithm)
    cached = _verified_tokens.get(cache_key)
    if cached is not None:
        verified, expires_at = cached
        if time.time() >= expires_at:
            raise InvalidTokenError()
        return verified
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != settings.jwt_algorithm:
            raise InvalidTokenError()
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.signing_key(),
            algorithms=[settings.jwt_algorithm],
            audience=JWT_AUDIENCE,
            issuer=JWT_ISSUER,
            options={
                "require_exp": True,
                "require_iat": True,
                "require_aud": True,
                "require_iss": True,
                "require_sub": True,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_aud": True,
                "verify_iss": True,
            },
        )
    except JWTError:
        raise InvalidTokenError() from None
    if claims.get("typ") != TOKEN_TYPE:
        raise InvalidTokenError()
    issued_at = claims.get("iat")
    # jose only checks that int(iat) succeeds, which a string or a bool passes.
    if type(issued_at) is not int or issued_at > time.time() + IAT_LEEWAY_SECONDS:
        raise InvalidTokenError()
    verified = AccessClaims(
        _user_id(claims.get("sub")),
        _hex_uuid(claims.get("stamp")),
        _hex_uuid(claims.get("sid")),
    )
    _verified_tokens.put(cache_key, verified, int(claims["exp"]))
    return verified


def _user_id(subject: object) -> int:
    if not isinstance(subject, str) or not _USER_ID.fullmatch(subject):
        raise InvalidTokenError()
    user_id = int(subject)
    if user_id > PG_INT_MAX:  # users.id is an INTEGER
        raise InvalidTokenError()
    return user_id


def _hex_uuid(claim: object) -> uuid.UUID:
    # A token without its stamp (migration 0009) or its session (migration 0013) predates them:
    # it is refused like a revoked one, since no password change or logout could end it.
    if not isinstance(claim, str) or len(claim) != 32:
        raise InvalidTokenError()
    try:
        return uuid.UUID(hex=claim)
    except ValueError:
        raise InvalidTokenError() from None
