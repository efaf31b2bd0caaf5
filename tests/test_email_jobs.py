"""Email through the job queue: a real worker, a real SMTP server (aiosmtpd) on 127.0.0.1."""

from typing import Any

import pytest

from core.db import db
from core.email import OutgoingEmail
from services.emails import send_later
from services.jobs import JobService
from tests.factories import scalar
from tests.test_email import Mailbox, make_email, smtp_server
from tests.worker_process import finished, worker_in_process

pytestmark = pytest.mark.committing


async def queue_email(email: OutgoingEmail) -> int:
    async with db.sessionmaker() as session, session.begin():
        return await send_later(JobService(session), email)


async def test_a_refused_first_attempt_is_retried_and_the_message_arrives_once(
    smtp_backend: Any,
) -> None:
    mailbox = Mailbox(data_replies=["451 4.7.1 Greylisted, try again later"])
    email = make_email()
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        job_id = await queue_email(email)
        async with worker_in_process(db):
            assert (await finished(job_id)).status == "succeeded"
    (envelope,) = mailbox.delivered
    assert mailbox.message()["Message-ID"] == email.message_id
    assert await scalar("SELECT attempts FROM jobs WHERE id = :id", id=job_id) == 2
    assert envelope.rcpt_tos == list(email.to)


async def test_a_permanent_refusal_fails_the_job_at_once_with_the_reason(
    smtp_backend: Any,
) -> None:
    mailbox = Mailbox(rcpt_reply="550 5.1.1 No such user here")
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        job_id = await queue_email(make_email())
        async with worker_in_process(db):
            assert (await finished(job_id)).status == "failed"
    assert mailbox.delivered == []
    assert await scalar("SELECT attempts FROM jobs WHERE id = :id", id=job_id) == 1
    error = await scalar("SELECT last_error FROM jobs WHERE id = :id", id=job_id)
    assert "550" in error


async def test_an_email_queued_in_a_rolled_back_transaction_is_never_sent(
    smtp_backend: Any,
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        smtp_backend(port)
        async with db.sessionmaker() as session:
            await send_later(JobService(session), make_email(subject="Jamais envoyé"))
            await session.rollback()
        sent = await queue_email(make_email(subject="Envoyé"))
        async with worker_in_process(db):
            assert (await finished(sent)).status == "succeeded"
    assert mailbox.message()["Subject"] == "Envoyé"
    assert await scalar("SELECT count(*) FROM jobs") == 1
