"""Users: CRUD with unique emails and the last-active-admin guard, and the callers' cache."""

import time
import uuid
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import Uuid, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY

from core.exceptions import BadRequestError, ConflictError
from core.password_policy import check_password_strength
from core.security import passwords
from models.audit import AuditAction
from models.session import CLOCK_SKEW_MARGIN, AuthSession
from models.user import AuthenticatedUser, User, UserRole
from schemas.notification import Preferences, PreferencesUpdate
from schemas.user import UserCreate, UserUpdate
from services.base import BaseService, FieldChanges


class InvalidCurrentPassword(BadRequestError):
    """The caller's own password, asked again before a sensitive change, is wrong."""

    code = "invalid_password"
    message = "The current password is incorrect"


class DuplicateUserEmail(ConflictError):
    code = "duplicate_email"
    message = "A user with this email already exists"


# Serialises user updates and deletions: two admins demoting each other at once would otherwise
# lock their own rows first, then each other's, and deadlock.
_USER_CHANGE_LOCK_KEY = 0x7F3A_0002


# PostgreSQL notifies every change to users on this channel (migration 0006's triggers).
USER_CHANGES_CHANNEL = "crm_user_changed"


class CallerCache:
    """The active accounts behind recent tokens, so most requests skip looking them up.

    Trusted only while this process LISTENs on USER_CHANGES_CHANNEL: every committed change
    to an account (API, another process, plain SQL) evicts it here within milliseconds, and
    losing the connection empties the cache and bypasses it until it is back. Entries also
    expire after `ttl_s`, a bound in case a notification were ever missed, and an admin's
    after `admin_ttl_s`: what a missed notification could leave an admin is kept shortest.
    """

    def __init__(self, size: int = 4096, ttl_s: float = 30.0, admin_ttl_s: float = 5.0) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.admin_ttl_s = admin_ttl_s
        self.listening = False
        # Bumped by every eviction: a lookup started before one must not store what it read.
        self.generation = 0
        self._entries: dict[int, tuple[AuthenticatedUser, float]] = {}

    def get(self, user_id: int) -> AuthenticatedUser | None:
        entry = self._entries.get(user_id) if self.listening else None
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, user: AuthenticatedUser, generation: int) -> None:
        if not self.listening or generation != self.generation:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()
        ttl_s = self.admin_ttl_s if user.is_admin else self.ttl_s
        self._entries[user.id] = (user, time.monotonic() + ttl_s)

    def evict(self, user_id: int) -> None:
        self.generation += 1
        self._entries.pop(user_id, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def on_notification(self, payload: str) -> None:
        """A user id, or '*' when the table was emptied (or restored: scripts/restore.sh)."""
        if payload.isdigit():
            self.evict(int(payload))
        else:
            self.clear()

    def set_listening(self, listening: bool) -> None:
        self.listening = listening
        self.clear()


caller_cache = CallerCache()


class UserService(BaseService[User, UserCreate, UserUpdate]):
    model = User
    sort_fields: ClassVar = {
        "email": User.email,
        "full_name": User.full_name,
        "created_at": User.created_at,
    }
    default_sort = "email"
    not_found_message = "User not found"
    audit_entity = "user"
    # The stamp is what every token carries: a change shows, its values never.
    audit_secret_fields = frozenset({"hashed_password", "security_stamp"})

    def _values(self, data: BaseModel, *, exclude_unset: bool) -> dict[str, Any]:
        values = super()._values(data, exclude_unset=exclude_unset)
        # Hashed off the event loop by create and update_user, which set hashed_password.
        values.pop("password", None)
        if "email" in values:
            values["email"] = values["email"].lower()
        return values

    async def get_by_email(self, email: str) -> User | None:
        stmt = select(User).where(func.lower(User.email) == email.lower())
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def create(self, data: UserCreate, **extra: Any) -> User:
        """Create a user; a taken email (any case) is 409 duplicate_email, a weak password 422."""
        await check_password_strength(
            data.password, email=data.email, full_name=data.full_name, field="password"
        )
        hashed_password = await passwords.hash(data.password)
        async with self.integrity_guard(unique=DuplicateUserEmail):
            return await super().create(data, hashed_password=hashed_password, **extra)

    async def get_caller(self, user_id: int) -> AuthenticatedUser | None:
        """The active account behind a token, or None (unknown, deleted or deactivated)."""
        cached = caller_cache.get(user_id)
        if cached is not None:
            return cached
        generation = caller_cache.generation
        result = await self.session.execute(_CALLER, {"user_id": user_id})
        row = result.mappings().one_or_none()
        if row is None or not row["is_active"]:
            return None
        user = AuthenticatedUser(
            id=row["id"],
            email=row["email"],
            full_name=row["full_name"],
            role=row["role"],
            is_active=True,
            security_stamp=row["security_stamp"],
            revoked_sessions=frozenset(row["revoked_sessions"]),
            two_factor_enabled=row["two_factor_enabled"],
        )
        caller_cache.put(user, generation)
        return user

    async def get_for_change(self, user_id: int) -> User:
        """The user, locked for an update or a deletion (one such change at a time)."""
        # Forgotten here at once, so this process's next request reads the change; other
        # processes learn of it by notification when it commits.
        caller_cache.evict(user_id)
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _USER_CHANGE_LOCK_KEY}
        )
        return await self.get(user_id, for_update=True)

    async def update_user(self, user_id: int, data: UserUpdate) -> User:
        """Partial update that never leaves the system without an active admin; a new password,
        a new role or a deactivation ends every session of the account (end_all_sessions)."""
        values = data.model_dump(exclude_unset=True)
        # Checked and hashed before the account is locked: waiting for a hashing slot (a login
        # flood takes them all) must not hold the user-change lock and a pooled connection
        # meanwhile.
        new_hash = None
        if "password" in values:
            current = await self.get(user_id)
            await check_password_strength(
                values["password"],
                email=values.get("email", current.email),
                full_name=values.get("full_name", current.full_name),
                field="password",
            )
            new_hash = await passwords.hash(values["password"])
        user = await self.get_for_change(user_id)
        loses_admin = values.get("role", user.role) != UserRole.admin or not values.get(
            "is_active", user.is_active
        )
        if user.is_admin and user.is_active and loses_admin:
            await self._ensure_another_active_admin(user)
        rotate = (
            "password" in values
            or values.get("role", user.role) != user.role
            or (user.is_active and not values.get("is_active", True))
        )
        async with self.integrity_guard(unique=DuplicateUserEmail):
            # Set inside the savepoint, whose start flushes: update() records them with the
            # fields it sets, as one entry.
            if new_hash is not None:
                user.hashed_password = new_hash
            if rotate:
                # Without autoflush: the new password and stamp stay pending, so the entry
                # update() records holds them with the fields it sets.
                with self.session.no_autoflush:
                    await self.end_all_sessions(user)
            await super().update(user, data)
        return user

    def audit_action(self, changes: FieldChanges) -> AuditAction:
        """A new role, else a new password, names the entry: the changes an auditor looks for."""
        if "role" in changes:
            return AuditAction.role_changed
        if "hashed_password" in changes:
            return AuditAction.password_changed
        return AuditAction.update

    async def end_all_sessions(self, user: User) -> None:
        """A new security stamp and every session revoked: every access and refresh token issued
        before is refused, by every process, as soon as the transaction commits (and by this one
        at once)."""
        # Imported here: services.sessions builds on this module (the callers' cache).
        from services.sessions import SessionService

        user.security_stamp = uuid.uuid4()
        await SessionService(self.session).end_all(user.id)
        caller_cache.evict(user.id)

    async def preferences(self, user_id: int) -> Preferences:
        """The user's own settings."""
        return Preferences.model_validate(await self.get(user_id))

    async def set_preferences(self, user_id: int, data: PreferencesUpdate) -> Preferences:
        """Replace the user's own settings (recorded in the audit trail when they change)."""
        user = await self.get(user_id, for_update=True)
        user.daily_digest = data.daily_digest
        await self.save(user)
        return Preferences.model_validate(user)

    async def log_out_everywhere(self, user_id: int) -> None:
        """End every session of the account (its own request, logout-all)."""
        await self.end_all_sessions(await self.get(user_id, for_update=True))
        await self.session.flush()

    async def delete_user(self, user: User, *, acting_user: AuthenticatedUser) -> None:
        """Delete a user, except oneself or the last active admin."""
        if user.id == acting_user.id:
            raise ConflictError("You cannot delete your own account")
        if user.is_admin and user.is_active:
            await self._ensure_another_active_admin(user)
        await super().delete(user)

    async def _ensure_another_active_admin(self, user: User) -> None:
        # Lock every active admin (in id order, so no deadlock) so that two concurrent
        # demotions serialise and the second one sees the first.
        stmt = (
            select(User.id)
            .where(User.role == UserRole.admin, User.is_active.is_(True))
            .order_by(User.id)
            .with_for_update()
        )
        admin_ids = (await self.session.execute(stmt)).scalars().all()
        if not [admin_id for admin_id in admin_ids if admin_id != user.id]:
            raise ConflictError("The last active admin cannot be removed or demoted")

    async def count(self) -> int:
        return (await self.session.execute(select(func.count(User.id)))).scalar_one()


_users = User.__table__.c
_sessions = AuthSession.__table__.c
# The account's revoked sessions whose access tokens may not have expired yet: an index of
# their own keeps this to the few revoked, however many sessions the account has.
_REVOKED_SESSIONS = func.array(
    select(_sessions.id)
    .where(
        _sessions.user_id == _users.id,
        _sessions.revoked_at.is_not(None),
        # Written into the statement: a bound value would cost its encoding on every lookup.
        _sessions.access_expires_at
        > func.now() - text(f"interval '{CLOCK_SKEW_MARGIN.total_seconds():.0f} seconds'"),
    )
    .scalar_subquery(),
    type_=ARRAY(Uuid()),
)
# Read on every authenticated request the cache does not answer: plain Core on the table (see
# services.investors._detail_statement), built once (see services.investors._STATS).
_CALLER = select(
    _users.id,
    _users.email,
    _users.full_name,
    _users.role,
    _users.is_active,
    _users.security_stamp,
    _REVOKED_SESSIONS.label("revoked_sessions"),
    _users.totp_secret.is_not(None).label("two_factor_enabled"),
).where(_users.id == bindparam("user_id"))
