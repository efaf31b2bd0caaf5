"""Email delivery as a background job: every feature sends through `send_later`, never inside
a request (a slow or unreachable SMTP server must not hold a request, and a failed send is
retried by the queue)."""

from core.config import settings
from core.email import EmailPermanentError, OutgoingEmail, send_email
from core.jobs import JobContext, PermanentJobError, RetryPolicy, job_types
from services.jobs import JobService

SEND_EMAIL_JOB = "email.send"

# A 4xx reply or an unreachable server is retried: first after a few seconds, then doubling up
# to an hour, about eighty minutes in all, past the usual greylisting delays.
EMAIL_RETRY = RetryPolicy(max_attempts=10, first_delay_s=5.0, max_delay_s=3600.0)


@job_types.register(SEND_EMAIL_JOB, OutgoingEmail, retry=EMAIL_RETRY)
async def deliver(email: OutgoingEmail, _: JobContext) -> None:
    """Send one message. A retry after a worker died mid-send sends it again with the same
    Message-ID, by which receivers recognise it."""
    try:
        await send_email(email, settings)
    except EmailPermanentError as exc:
        raise PermanentJobError(str(exc)) from None


async def send_later(
    job_service: JobService, email: OutgoingEmail, *, created_by: int | None = None
) -> int:
    """Queue `email` in the caller's transaction, sent once it commits; the job's id."""
    return await job_service.enqueue(SEND_EMAIL_JOB, email, created_by=created_by)
