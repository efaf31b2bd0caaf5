"""Notifications: created in the transaction of what they tell, listed and read by their user,
purged after NOTIFICATION_RETENTION_DAYS. Their live delivery is services/notification_stream.py."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from models.notification import Notification, NotificationKind
from services.base import BaseService

# Catch-up reads of a stream take at most this many rows at a time.
CATCH_UP_BATCH = 100


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification to one user, told once per `dedup_key` (`task_due:12:2026-07-13`)."""

    user_id: int
    kind: NotificationKind
    title: str
    dedup_key: str
    body: str | None = None
    link: str | None = None


def _row(
    user_id: int,
    kind: NotificationKind,
    title: str,
    body: str | None,
    link: str | None,
    *,
    dedup_key: str | None = None,
) -> dict[str, Any]:
    """One notification's column values (the title cut to its column's length)."""
    return {
        "user_id": user_id,
        "kind": kind,
        "title": title[:200],
        "body": body,
        "link": link,
        "dedup_key": dedup_key,
    }


class NotificationService(BaseService[Notification, BaseModel, BaseModel]):
    model = Notification
    not_found_message = "Notification not found"

    async def notify(
        self,
        user_ids: Iterable[int | None],
        kind: NotificationKind,
        title: str,
        body: str | None = None,
        link: str | None = None,
        *,
        actor_id: int | None,
    ) -> list[int]:
        """Notify these users (each once, never the actor: nobody hears of their own action)
        in the caller's transaction; the ids. Open streams hear of them when it commits (the
        table's trigger notifies), never if it rolls back."""
        recipients = sorted({user_id for user_id in user_ids if user_id not in (None, actor_id)})
        if not recipients:
            return []
        rows = [_row(user_id, kind, title, body, link) for user_id in recipients]
        result = await self.session.execute(insert(Notification).returning(Notification.id), rows)
        return list(result.scalars())

    async def notify_once(self, notices: Sequence[Notice]) -> int:
        """Insert each notice unless its user was told its key already (by an earlier run of
        the same job), in the caller's transaction; how many are new. Only those reach the
        open streams: the trigger fires for inserted rows alone."""
        if not notices:
            return 0
        rows = [
            _row(n.user_id, n.kind, n.title, n.body, n.link, dedup_key=n.dedup_key) for n in notices
        ]
        stmt = (
            pg_insert(Notification)
            .on_conflict_do_nothing(
                index_elements=[Notification.user_id, Notification.dedup_key],
                index_where=Notification.dedup_key.is_not(None),
            )
            .returning(Notification.id)
        )
        return len((await self.session.execute(stmt, rows)).all())

    async def list_for(
        self, user_id: int, *, unread_only: bool, skip: int, limit: int
    ) -> tuple[list[Notification], int]:
        """A page of the user's notifications, unread first, then newest."""
        where = [Notification.user_id == user_id]
        if unread_only:
            where.append(Notification.read_at.is_(None))
        # The order of ix_notifications_user_id_unread_first.
        order_by: list[ColumnElement[Any]] = [
            Notification.read_at.is_not(None),
            Notification.created_at.desc(),
            Notification.id.desc(),
        ]
        return await self.paginate(
            select(Notification), where=where, order_by=order_by, skip=skip, limit=limit
        )

    async def unread_count(self, user_id: int) -> int:
        """How many of the user's notifications are unread."""
        return int((await self.session.execute(_UNREAD_COUNT, {"user_id": user_id})).scalar_one())

    async def mark_read(self, user_id: int, notification_id: int) -> Notification:
        """The user's notification, read (when first read is kept); 404 for another's."""
        stmt = (
            update(Notification)
            .where(Notification.id == notification_id, Notification.user_id == user_id)
            .values(read_at=func.coalesce(Notification.read_at, func.now()))
            .returning(Notification)
            .execution_options(populate_existing=True)
        )
        notification = (await self.session.execute(stmt)).scalar_one_or_none()
        if notification is None:
            raise self.not_found()
        return notification

    async def mark_all_read(self, user_id: int) -> int:
        """Every unread notification of the user, read; how many."""
        stmt = (
            update(Notification)
            .where(Notification.user_id == user_id, Notification.read_at.is_(None))
            .values(read_at=func.now())
            .execution_options(synchronize_session=False)
        )
        return int((await self.session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def latest_id(self, user_id: int) -> int:
        """The id of the user's newest notification (0 when none): a stream starts after it."""
        stmt = select(func.coalesce(func.max(Notification.id), 0)).where(
            Notification.user_id == user_id
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def after(self, user_id: int, last_id: int) -> list[Notification]:
        """The user's notifications after `last_id`, oldest first (a batch at most)."""
        stmt = (
            select(Notification)
            .where(Notification.user_id == user_id, Notification.id > last_id)
            .order_by(Notification.id)
            .limit(CATCH_UP_BATCH)
        )
        return list((await self.session.execute(stmt)).scalars())

    async def purge_expired(self, retention_days: int) -> int:
        """Delete the notifications older than the retention; how many."""
        stmt = (
            delete(Notification)
            .where(Notification.created_at < func.now() - timedelta(days=retention_days))
            .execution_options(synchronize_session=False)
        )
        return int((await self.session.execute(stmt)).rowcount)  # type: ignore[attr-defined]

    async def scrub(self, values: Sequence[str], replacement: str) -> int:
        """Replace the title and clear the body of every notification mentioning one of these
        values (a forgotten person's name, email, phone); how many."""
        needles = sorted({value.lower() for value in values if value})
        if not needles:
            return 0
        mentions = [
            func.lower(column).contains(needle, autoescape=True)
            for column in (Notification.title, Notification.body)
            for needle in needles
        ]
        stmt = (
            update(Notification)
            .where(or_(*mentions))
            .values(title=replacement, body=None)
            .execution_options(synchronize_session=False)
        )
        return int((await self.session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


# The hottest read of the feature (the SPA's badge): built once, an index-only count on the
# partial index of unread rows.
_UNREAD_COUNT = (
    select(func.count())
    .select_from(Notification)
    .where(Notification.user_id == bindparam("user_id"), Notification.read_at.is_(None))
)
