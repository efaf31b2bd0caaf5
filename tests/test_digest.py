"""The morning round (services/digest.py): the `task_due` and `task_overdue` notifications
every morning, and on business days one digest email per user, delivered by a real worker to a
real SMTP server (aiosmtpd on 127.0.0.1); the clock is moved, never slept."""

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from httpx import AsyncClient
from sqlalchemy import make_url, text
from sqlalchemy.dialects import postgresql

from core.clock import use_clock
from core.config import settings
from core.db import db
from core.email import send_email
from core.jobs import JobContext
from core.schedules import schedules
from models.notification import NOTIFICATIONS_CHANNEL
from services.digest import (
    DIGEST_TASK_LIMIT,
    MORNING_CRON,
    MORNING_JOB,
    MORNING_SCHEDULE,
    DigestService,
    MorningPayload,
    due_tasks_statement,
    is_business_day,
    morning_round,
)
from services.digest_email import Digest, DigestTask, digest_email
from tests.conftest import engine_event
from tests.factories import bearer, create_user, execute, fetch, insert_investor, scalar
from tests.test_email import Mailbox, parse, smtp_server
from tests.test_schedules import FakeClock, scheduler
from tests.worker_process import enqueue, finished, until, worker_in_process

API = "/api/v1"
PARIS = ZoneInfo("Europe/Paris")
MONDAY = date(2026, 7, 13)
SUNDAY = MONDAY - timedelta(days=1)
SATURDAY = date(2026, 7, 18)
BASTILLE_DAY = date(2026, 7, 14)  # a Tuesday
ASCENSION = date(2026, 5, 14)  # a Thursday
Headers = dict[str, str]


def paris_instant(day: date, hour: int = 8, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), PARIS).astimezone(UTC)


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    """Monday 13 July 2026, 08:00 in Paris, for the whole process (core.clock)."""
    fake = FakeClock(paris_instant(MONDAY))
    previous = use_clock(fake)
    yield fake
    use_clock(previous)


async def add_task(
    assignee_id: int,
    title: str,
    due: date,
    *,
    investor_id: int | None = None,
    status: str = "a_faire",
    due_time: time | None = None,
) -> int:
    return int(
        await scalar(
            "INSERT INTO tasks (title, due_date, due_time, status, assignee_id, created_by, "
            "investor_id, completed_at) VALUES (:title, :due, :due_time, :status, :assignee, "
            ":assignee, :investor, CASE WHEN :done THEN now() END) RETURNING id",
            title=title,
            due=due,
            due_time=due_time,
            status=status,
            done=status == "terminee",
            assignee=assignee_id,
            investor=investor_id,
        )
    )


async def run_morning_job(day: date) -> None:
    """The morning job of `day` through the queue, as the schedule queues it, then the email
    jobs it queued, all run by a real worker."""
    job_id = await enqueue(MORNING_JOB, MorningPayload(day=day))
    async with worker_in_process(db):
        assert (await finished(job_id)).status == "succeeded"
        for row in await fetch("SELECT id FROM jobs WHERE type = 'email.send' ORDER BY id"):
            assert (await finished(row.id)).status == "succeeded"


async def run_morning_round(day: date) -> None:
    """The morning job's handler in a transaction of the test's own (no worker, no delivery)."""

    async def no_progress(_: int) -> None:
        return None

    async with db.sessionmaker() as session, session.begin():
        context = JobContext(
            job_id=1, attempt=1, created_by=None, session=session, report_progress=no_progress
        )
        await morning_round(MorningPayload(day=day), context)


def received(mailbox: Mailbox) -> dict[str, EmailMessage]:
    """Each delivered message by its one recipient, parsed as a receiver would."""
    messages = {}
    for envelope in mailbox.delivered:
        assert isinstance(envelope.content, bytes)
        (recipient,) = envelope.rcpt_tos
        assert recipient not in messages, f"two digests to {recipient}"
        messages[recipient] = parse(envelope.content.replace(b"\r\n", b"\n"))
    return messages


def bodies(message: EmailMessage) -> tuple[str, str]:
    plain, page = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and page is not None
    return str(plain.get_content()), str(page.get_content())


def outbox_messages(directory: Path) -> list[EmailMessage]:
    return [parse(path.read_bytes()) for path in sorted(directory.glob("*.eml"))]


async def notifications() -> list[tuple[int, str, str, str | None]]:
    rows = await fetch("SELECT user_id, kind, title, link FROM notifications ORDER BY id")
    return [(row.user_id, row.kind, row.title, row.link) for row in rows]


# --- the digest, delivered ---------------------------------------------------------------------


@pytest.mark.committing
async def test_a_monday_morning_mails_each_user_one_digest_of_their_own_due_tasks(
    client: AsyncClient, admin_headers: Headers, smtp_backend: Any, clock: FakeClock
) -> None:
    alice = await create_user("alice@crm.test")
    bob = await create_user("bob@crm.test")
    switched_off = await create_user("carole@crm.test")
    inactive = await create_user("denis@crm.test", is_active=False)
    nothing_due = await create_user("erwan@crm.test")
    marbeuf = await insert_investor("Cabinet Marbeuf")
    lorvane = await insert_investor("Banque Lorvane")
    long_overdue = await add_task(
        alice, "Rappeler Cabinet Marbeuf", date(2026, 7, 1), investor_id=marbeuf
    )
    yesterdays = await add_task(alice, "Envoyer la plaquette", SUNDAY)
    todays = await add_task(
        alice, "Point négociation", MONDAY, investor_id=lorvane, due_time=time(14, 30)
    )
    left_out = {
        await add_task(alice, "Plus tard dans la semaine", MONDAY + timedelta(days=3)),
        await add_task(alice, "Déjà faite", MONDAY, status="terminee"),
        await add_task(alice, "Annulée", SUNDAY, status="annulee"),
        await add_task(alice, "Mise à la corbeille", MONDAY),
        await add_task(switched_off, "Tâche de Carole", MONDAY),
        await add_task(inactive, "Tâche de Denis", MONDAY),
        await add_task(nothing_due, "Tâche d'Erwan", MONDAY + timedelta(days=1)),
    }
    bobs = await add_task(bob, "Tâche de Bob", MONDAY)
    trashed = await scalar("SELECT id FROM tasks WHERE title = 'Mise à la corbeille'")
    assert (await client.delete(f"{API}/tasks/{trashed}", headers=admin_headers)).status_code == 204
    preference = await client.put(
        f"{API}/auth/me/preferences",
        json={"daily_digest": False},
        headers=await bearer(switched_off),
    )
    assert preference.status_code == 200, preference.text

    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        await run_morning_job(MONDAY)
        messages = received(mailbox)
        assert sorted(messages) == ["alice@crm.test", "bob@crm.test"]

        alices = messages["alice@crm.test"]
        assert (
            alices["Subject"] == "Vos tâches du lundi 13 juillet 2026 : 2 en retard, 1 aujourd'hui"
        )
        assert alices.get_content_type() == "multipart/alternative"
        plain, page = bodies(alices)
        assert plain.startswith("Bonjour Alice,")
        assert "En retard (2) :" in plain and "Aujourd'hui (1) :" in plain
        # Oldest first within the overdue ones; today's after.
        assert (
            plain.index("Rappeler Cabinet Marbeuf")
            < plain.index("Envoyer la plaquette")
            < plain.index("Point négociation")
        )
        assert "Rappeler Cabinet Marbeuf · Cabinet Marbeuf · échéance le 01/07/2026" in plain
        assert "Point négociation · Banque Lorvane · à 14:30" in plain
        for task_id in (long_overdue, yesterdays, todays):
            assert f"/api/v1/tasks/{task_id}" in plain
            assert f'<a href="/api/v1/tasks/{task_id}">' in page
        assert "Banque Lorvane" in page
        titles = await fetch("SELECT title FROM tasks WHERE id = ANY(:ids)", ids=sorted(left_out))
        for row in [*titles, ("Tâche de Bob",)]:
            assert row[0] not in plain and row[0] not in page
        assert "daily_digest" in plain

        bobs_plain, _ = bodies(messages["bob@crm.test"])
        assert "Tâche de Bob" in bobs_plain and f"/api/v1/tasks/{bobs}" in bobs_plain
        assert "Point négociation" not in bobs_plain

        # The same day's job again (a retry, a slot queued twice): nobody gets a second one.
        await run_morning_job(MONDAY)
        assert len(mailbox.delivered) == 2
    claims = await fetch("SELECT user_id, day, job_id FROM digest_deliveries ORDER BY user_id")
    assert [(row.user_id, row.day) for row in claims] == [(alice, MONDAY), (bob, MONDAY)]
    assert all(row.job_id is not None for row in claims)
    assert await scalar("SELECT count(*) FROM jobs WHERE type = 'email.send'") == 2


@pytest.mark.parametrize(
    "day", [SATURDAY, BASTILLE_DAY, ASCENSION], ids=["saturday", "14-july", "ascension"]
)
async def test_no_digest_on_a_weekend_or_a_french_public_holiday(day: date) -> None:
    user_id = await create_user()
    await add_task(user_id, "Relancer", day - timedelta(days=2))
    await add_task(user_id, "Appeler", day)

    await run_morning_round(day)

    assert await scalar("SELECT count(*) FROM jobs WHERE type = 'email.send'") == 0
    assert await scalar("SELECT count(*) FROM digest_deliveries") == 0
    # The reminders are not a business-day matter: the task due that day is told.
    assert [kind for _, kind, _, _ in await notifications()] == ["task_due"]
    # The next business day, the digest goes out.
    next_day = day + timedelta(days=1)
    while not is_business_day(next_day):
        next_day += timedelta(days=1)
    await run_morning_round(next_day)
    assert await scalar("SELECT count(*) FROM jobs WHERE type = 'email.send'") == 1


@pytest.mark.parametrize(
    ("day", "business"),
    [
        (date(2026, 7, 13), True),
        (date(2026, 7, 17), True),
        (date(2026, 7, 18), False),
        (date(2026, 7, 19), False),
        (date(2026, 1, 1), False),
        (date(2026, 4, 6), False),  # Easter Monday
        (date(2026, 4, 3), True),  # Good Friday: a holiday in Alsace-Moselle only
        (date(2026, 5, 1), False),
        (date(2026, 5, 8), False),
        (date(2026, 5, 14), False),
        (date(2026, 5, 25), False),  # Whit Monday
        (date(2026, 7, 14), False),
        (date(2026, 11, 11), False),
        (date(2026, 12, 25), False),
        (date(2026, 12, 26), False),  # a Saturday anyway
        (date(2027, 5, 6), False),  # Ascension 2027: the calendar is computed, any year
        (date(2027, 5, 7), True),
    ],
)
def test_business_days_follow_the_national_french_calendar(day: date, business: bool) -> None:
    assert is_business_day(day) is business


# --- the reminders -----------------------------------------------------------------------------


async def test_the_morning_tells_due_and_overdue_tasks_once_each(clock: FakeClock) -> None:
    user_id = await create_user()
    investor = await insert_investor("Cabinet Marbeuf")
    due_today = await add_task(user_id, "Appeler", MONDAY, investor_id=investor)
    due_yesterday = await add_task(user_id, "Relancer", SUNDAY)
    await add_task(user_id, "Trop ancienne", MONDAY - timedelta(days=2))
    await add_task(user_id, "Demain", MONDAY + timedelta(days=1))
    await add_task(user_id, "Finie", MONDAY, status="terminee")
    inactive = await create_user("parti@crm.test", is_active=False)
    await add_task(inactive, "D'un compte désactivé", MONDAY)

    await run_morning_round(MONDAY)
    await run_morning_round(MONDAY)

    assert await notifications() == [
        (user_id, "task_overdue", "En retard : Relancer", f"/api/v1/tasks/{due_yesterday}"),
        (user_id, "task_due", "À faire aujourd'hui : Appeler", f"/api/v1/tasks/{due_today}"),
    ]
    assert await scalar("SELECT body FROM notifications WHERE kind = 'task_due'") == (
        "Investisseur : Cabinet Marbeuf"
    )
    # Tuesday: Monday's task is now overdue, told once as such; nothing else is new.
    await run_morning_round(MONDAY + timedelta(days=1))
    await run_morning_round(MONDAY + timedelta(days=1))
    tomorrow = await scalar("SELECT id FROM tasks WHERE title = 'Demain'")
    assert [(kind, link) for _, kind, _, link in await notifications()][2:] == [
        ("task_overdue", f"/api/v1/tasks/{due_today}"),
        ("task_due", f"/api/v1/tasks/{tomorrow}"),
    ]


@pytest.mark.committing
async def test_the_live_streams_hear_each_reminder_once(database_url: str) -> None:
    user_id = await create_user()
    await add_task(user_id, "Appeler", MONDAY)
    await add_task(user_id, "Relancer", SUNDAY)
    heard: list[str] = []
    listener = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        await listener.add_listener(NOTIFICATIONS_CHANNEL, lambda *args: heard.append(args[3]))
        await run_morning_round(MONDAY)

        async def told() -> bool:
            await listener.fetchval("SELECT 1")  # a round trip delivers what is pending
            return bool(heard)

        await until(told, "the reminders' notification")
        await run_morning_round(MONDAY)
        await listener.fetchval("SELECT 1")
    finally:
        await listener.close()
    # The two reminders of one transaction, one user: one NOTIFY (PostgreSQL folds equal ones);
    # the second run inserted nothing, so told the streams nothing.
    assert heard == [str(user_id)]
    assert await scalar("SELECT count(*) FROM notifications") == 2


async def test_a_snoozed_task_is_told_again_on_its_new_due_date(
    client: AsyncClient, user_id: int, user_headers: Headers, clock: FakeClock
) -> None:
    task_id = await add_task(user_id, "Appeler", MONDAY)
    await run_morning_round(MONDAY)
    snoozed = await client.post(
        f"{API}/tasks/{task_id}/snooze", json={"days": 2}, headers=user_headers
    )
    assert snoozed.status_code == 200, snoozed.text
    await run_morning_round(MONDAY + timedelta(days=2))
    await run_morning_round(MONDAY + timedelta(days=2))
    assert [kind for _, kind, _, _ in await notifications()] == ["task_due", "task_due"]


# --- the schedule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "utc_hour"),
    [(MONDAY, 6), (date(2026, 1, 12), 7)],
    ids=["summer-time", "winter-time"],
)
async def test_the_schedule_queues_the_morning_job_once_at_08_00_paris(
    day: date, utc_hour: int
) -> None:
    (declared,) = [schedule for schedule in schedules if schedule.name == MORNING_SCHEDULE]
    assert (declared.cron, declared.job_type) == (MORNING_CRON, MORNING_JOB)
    assert MORNING_CRON == "0 8 * * *"
    eight = datetime.combine(day, time(utc_hour), UTC)
    clock = FakeClock(eight - timedelta(hours=1))
    previous = use_clock(clock)
    try:
        ticking = scheduler(clock, declared)
        assert await ticking.tick() == []  # first sight: the current slot is recorded
        await clock.move_to(eight - timedelta(seconds=1))
        assert await ticking.tick() == []
        await clock.move_to(eight)
        (job_id,) = await ticking.tick()
        await clock.move_to(eight + timedelta(minutes=30))
        assert await ticking.tick() == []
    finally:
        use_clock(previous)
    (job,) = await fetch("SELECT id, type, payload FROM jobs")
    assert (job.id, job.type, job.payload) == (job_id, MORNING_JOB, {"day": day.isoformat()})


# --- the query ---------------------------------------------------------------------------------


async def test_every_user_s_digest_comes_from_one_statement(session: Any) -> None:
    users = [await create_user(f"u{n}@crm.test") for n in range(5)]
    for user_id in users:
        await add_task(user_id, "En retard", SUNDAY)
        await add_task(user_id, "Du jour", MONDAY)
    statements: list[str] = []

    def count(*args: Any) -> None:
        # The test's savepoints aside (conftest runs each test in a rolled-back transaction).
        if "SAVEPOINT" not in args[2]:
            statements.append(args[2])

    with engine_event("before_cursor_execute", count):
        digests = await DigestService(session).due_digests(MONDAY)
    assert len(statements) == 1
    assert sorted(digest.user_id for digest in digests) == users
    assert all((len(d.overdue), len(d.today)) == (1, 1) for d in digests)


async def test_the_digest_query_walks_the_open_tasks_index(session: Any) -> None:
    compiled = due_tasks_statement(MONDAY).compile(
        dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"literal_binds": True},
    )
    await session.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(row[0] for row in await session.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_tasks_open_assignee_id_due_date" in plan, plan
    assert "Seq Scan on tasks" not in plan, plan


async def test_a_long_list_stops_at_the_limit_with_today_s_tasks_kept(session: Any) -> None:
    user_id = await create_user()
    await execute(
        "INSERT INTO tasks (title, due_date, assignee_id) "
        "SELECT 'Ancienne ' || n, DATE '2026-03-01' + n, :user FROM generate_series(1, 110) n",
        user=user_id,
    )
    await add_task(user_id, "Du jour", MONDAY)

    (digest,) = await DigestService(session).due_digests(MONDAY)

    assert [task.title for task in digest.today] == ["Du jour"]
    assert len(digest.overdue) == DIGEST_TASK_LIMIT - 1
    # The latest overdue ones are kept, oldest first.
    assert digest.overdue[0].title == "Ancienne 12" and digest.overdue[-1].title == "Ancienne 110"
    assert digest.truncated
    plain = digest_email(digest).text
    assert "La liste s'arrête à 100 tâches" in plain
    assert "/api/v1/tasks?assignee_id=me&due=overdue" in plain


def test_the_html_version_escapes_what_users_typed() -> None:
    task = DigestTask(7, "<b>Appeler</b> & co", MONDAY, None, "urgente", "Dupont <SA>")
    email = digest_email(Digest(1, "a@crm.test", "Zoé <Z>", MONDAY, today=[task]))
    assert email.html is not None
    assert "&lt;b&gt;Appeler&lt;/b&gt; &amp; co" in email.html
    assert "Dupont &lt;SA&gt;" in email.html and "Zoé &lt;Z&gt;" in email.html
    assert "<b>" not in email.html
    assert "- <b>Appeler</b> & co · Dupont <SA> · priorité urgente" in email.text


# --- anonymisation -----------------------------------------------------------------------------


async def test_anonymising_an_investor_deletes_the_digest_files_naming_it(
    client: AsyncClient,
    admin_headers: Headers,
    session: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "email_outbox_dir", tmp_path)
    user_id = await create_user()
    person = await insert_investor("Zéphyrine Quintabelle")
    await add_task(user_id, "Relancer Zéphyrine Quintabelle", SUNDAY, investor_id=person)
    other_user = await create_user("autre@crm.test")
    await add_task(other_user, "Point d'équipe", MONDAY)
    outbox = settings.model_copy(update={"email_backend": "file", "email_from": "crm@tpm.test"})
    for digest in await DigestService(session).due_digests(MONDAY):
        await send_email(digest_email(digest), outbox)
    assert len(outbox_messages(tmp_path)) == 2

    response = await client.post(
        f"{API}/gdpr/anonymize", json={"entity": "investor", "id": person}, headers=admin_headers
    )

    assert response.status_code == 200, response.text
    (kept,) = outbox_messages(tmp_path)
    assert "Point d'équipe" in bodies(kept)[0]
