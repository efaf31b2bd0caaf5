"""Background jobs as the Jobs API shows them: enqueue, list, read, retry, cancel."""

from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, insert, update

from core import queue
from core.exceptions import ConflictError
from core.jobs import job_types
from models.job import Job, JobStatus
from services.base import BaseService


class JobNotRetryable(ConflictError):
    code = "job_not_retryable"
    message = "Only a failed job can be retried"


class JobNotCancellable(ConflictError):
    code = "job_not_cancellable"
    message = "Only a queued job can be cancelled"


class JobService(BaseService[Job, BaseModel, BaseModel]):
    model = Job
    # Newest first; the list offers no other order.
    default_sort = "-id"
    not_found_message = "Job not found"
    owner_columns = (Job.created_by,)

    async def enqueue(
        self, job_type: str, payload: BaseModel, *, created_by: int | None = None
    ) -> int:
        """Queue a job in the session's transaction (it exists only if that transaction
        commits); its id."""
        spec = job_types.get(job_type)
        if not isinstance(payload, spec.payload_model):
            raise TypeError(f"{job_type} takes a {spec.payload_model.__name__} payload")
        stmt = (
            insert(Job)
            .values(
                type=job_type,
                status=JobStatus.queued,
                payload=payload.model_dump(mode="json"),
                max_attempts=spec.retry.max_attempts,
                created_by=created_by,
            )
            .returning(Job.id)
        )
        job_id: int = (await self.session.execute(stmt)).scalar_one()
        await queue.push(self.session, job_type, job_id)
        return job_id

    async def list_jobs(
        self,
        *,
        status: JobStatus | None,
        job_type: str | None,
        created_by: int | None,
        skip: int,
        limit: int,
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first; only those `created_by` caused, when given."""
        where = []
        if created_by is not None:
            where.append(Job.created_by == created_by)
        if status is not None:
            where.append(Job.status == status)
        if job_type is not None:
            where.append(Job.type == job_type)
        return await self.list(where=where, skip=skip, limit=limit)

    async def _transition(self, job_id: int, source: JobStatus, **values: Any) -> Job | None:
        """The job moved from `source` (checked and changed in one statement), or None."""
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status == source)
            .values(**values)
            .returning(Job)
            .execution_options(populate_existing=True)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def retry(self, job_id: int) -> Job:
        """A failed job queued again, with a fresh set of attempts."""
        job = await self._transition(
            job_id,
            JobStatus.failed,
            status=JobStatus.queued,
            attempts=0,
            progress=0,
            started_at=None,
            finished_at=None,
        )
        if job is None:
            await self.ensure_exists(job_id)
            raise JobNotRetryable()
        await queue.push(self.session, job.type, job.id)
        return job

    async def cancel(self, job_id: int) -> Job:
        """A queued job cancelled and withdrawn from the queue; a running or finished one is
        left alone (a worker that picked it meanwhile finds it cancelled and drops it)."""
        job = await self._transition(
            job_id, JobStatus.queued, status=JobStatus.cancelled, finished_at=func.now()
        )
        if job is None:
            await self.ensure_exists(job_id)
            raise JobNotCancellable()
        await queue.withdraw(self.session, job_id)
        return job
