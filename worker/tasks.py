"""The application's job types and schedules: importing this module registers them all."""

from pydantic import BaseModel

from core.config import settings
from core.jobs import JobContext, RetryPolicy, job_types
from core.queue import delete_finished_jobs, purge_queue_log
from core.schedules import Schedule, schedules

# Feature modules that declare job types, imported for their registrations.
from services import digest, emails, import_job, password_reset
from services.audit import AuditService
from services.audit_recorder import record_failed_logins
from services.notifications import NotificationService
from services.stream_tickets import StreamTicketService
from services.trash import TrashService

FEATURE_JOB_MODULES = (digest, emails, import_job, password_reset)


class PurgePayload(BaseModel):
    pass


@job_types.register("jobs.purge", PurgePayload, retry=RetryPolicy(max_attempts=3))
async def purge_finished_jobs(_: PurgePayload, context: JobContext) -> None:
    """Jobs finished more than JOB_RETENTION_DAYS ago, and the queue's own old log rows."""
    await delete_finished_jobs(context.session, settings.job_retention_days)
    await purge_queue_log(context.session, settings.job_retention_days)


schedules.add(Schedule("jobs.purge.daily", "15 3 * * *", "jobs.purge", PurgePayload))


@job_types.register("trash.purge", PurgePayload, retry=RetryPolicy(max_attempts=3))
async def purge_expired_trash(_: PurgePayload, context: JobContext) -> None:
    """What has been in the trash longer than TRASH_RETENTION_DAYS, destroyed."""
    await TrashService(context.session).purge_expired()


schedules.add(Schedule("trash.purge.daily", "45 3 * * *", "trash.purge", PurgePayload))


class AuditPurgePayload(BaseModel):
    pass


@job_types.register("audit.purge", AuditPurgePayload, retry=RetryPolicy(max_attempts=3))
async def purge_audit_trail(_: AuditPurgePayload, context: JobContext) -> None:
    """Audit entries older than AUDIT_RETENTION_DAYS (the purge records itself in the trail)."""
    await AuditService(context.session).purge(settings.audit_retention_days)


schedules.add(Schedule("audit.purge.daily", "45 3 * * *", "audit.purge", AuditPurgePayload))


class FailedLoginsPayload(BaseModel):
    pass


@job_types.register("audit.failed_logins", FailedLoginsPayload, retry=RetryPolicy(max_attempts=1))
async def record_failed_login_minutes(_: FailedLoginsPayload, context: JobContext) -> None:
    """The login_failed entries of the minutes that are over, for the accounts no later attempt
    recorded (their failures expire after LOGIN_FAILURE_WINDOW_MINUTES)."""
    await record_failed_logins(context.session)


schedules.add(
    Schedule("audit.failed_logins", "*/5 * * * *", "audit.failed_logins", FailedLoginsPayload)
)


class NotificationPurgePayload(BaseModel):
    pass


@job_types.register(
    "notifications.purge", NotificationPurgePayload, retry=RetryPolicy(max_attempts=3)
)
async def purge_old_notifications(_: NotificationPurgePayload, context: JobContext) -> None:
    """Notifications older than NOTIFICATION_RETENTION_DAYS, and expired stream tickets."""
    await NotificationService(context.session).purge_expired(settings.notification_retention_days)
    await StreamTicketService(context.session).purge_expired()


schedules.add(
    Schedule(
        "notifications.purge.daily", "30 3 * * *", "notifications.purge", NotificationPurgePayload
    )
)
