"""Password hashing (argon2 only) and JWT access tokens with pinned algorithm and claims."""

import re
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from jose import JWTError, jwt
from passlib.context import CryptContext

from core.config import JWT_AUDIENCE, JWT_ISSUER, Settings
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


class InvalidTokenError(AuthError):
    code = "invalid_token"
    message = "Invalid or expired token"


def hash_password(password: str) -> str:
    return _password_context.hash(password)


def verify_password(password: str, hashed: str | None) -> bool:
    """Check a password; with no hash, still spend the same time and answer False."""
    if hashed is None:
        _password_context.verify(password, _DUMMY_HASH)
        return False
    return bool(_password_context.verify(password, hashed))


def create_access_token(user_id: int, settings: Settings) -> tuple[str, int]:
    """Sign a token for the user; returns it with its lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = timedelta(hours=settings.jwt_expiration_hours)
    claims = {
        "sub": str(user_id),
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
        self._entries: OrderedDict[tuple[str, str, str], tuple[int, int]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> tuple[int, int] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, str, str], user_id: int, expires_at: int) -> None:
        self._entries[key] = (user_id, expires_at)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)


_verified_tokens = _VerifiedTokens(size=4096)


def decode_access_token(token: str, settings: Settings) -> int:
    """Verify signature, algorithm, expiry, issuer, audience and type; return the user id."""
    cache_key = (token, settings.signing_key(), settings.jwt_algorithm)
    cached = _verified_tokens.get(cache_key)
    if cached is not None:
        user_id, expires_at = cached
        if time.time() >= expires_at:
            raise InvalidTokenError()
        return user_id
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
    user_id = _user_id(claims.get("sub"))
    _verified_tokens.put(cache_key, user_id, int(claims["exp"]))
    return user_id


def _user_id(subject: object) -> int:
    if not isinstance(subject, str) or not _USER_ID.fullmatch(subject):
        raise InvalidTokenError()
    user_id = int(subject)
    if user_id > PG_INT_MAX:  # users.id is an INTEGER
        raise InvalidTokenError()
    return user_id
