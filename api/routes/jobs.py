"""Background jobs: list, read, retry, cancel (administrators; a job's author may read it)."""

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentUser, IdPath, JobReader, JobWriter, PageParams
from api.responses import AUTHENTICATED, errors
from core.policy import Action, may
from models.job import JobStatus
from schemas.common import Page
from schemas.job import JobRead

router = APIRouter(prefix="/jobs", tags=["jobs"])

ADMIN = (*AUTHENTICATED, 403)


@router.get("", response_model=Page[JobRead], responses=errors(*ADMIN))
async def list_jobs(
    caller: CurrentUser,
    jobs: JobReader,
    page: PageParams,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    job_type: Annotated[str | None, Query(alias="type", min_length=1, max_length=100)] = None,
) -> Page[JobRead]:
    """List jobs, newest first, optionally by status and type (a salesperson sees only the jobs
    they caused)."""
    items, total = await jobs.list_jobs(
        status=job_status,
        job_type=job_type,
        created_by=None if may(caller.role, Action.follow_jobs) else caller.id,
        skip=page.skip,
        limit=page.limit,
    )
    return page.of(JobRead, items, total)


@router.get("/{job_id:id}", response_model=JobRead, responses=errors(*ADMIN, 404))
async def read_job(job_id: IdPath, _: CurrentUser, jobs: JobReader) -> JobRead:
    """One job: a manager or an admin sees any, a salesperson only the jobs they caused."""
    return JobRead.model_validate(await jobs.get(job_id))


@router.post(
    "/{job_id:id}/retry",
    response_model=JobRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(*ADMIN, 404, 409),
)
async def retry_job(job_id: IdPath, _: CurrentUser, jobs: JobWriter) -> JobRead:
    """Queue a failed job again, with a fresh set of attempts (409 job_not_retryable otherwise)."""
    return JobRead.model_validate(await jobs.retry(job_id))


@router.post("/{job_id:id}/cancel", response_model=JobRead, responses=errors(*ADMIN, 404, 409))
async def cancel_job(job_id: IdPath, _: CurrentUser, jobs: JobWriter) -> JobRead:
    """Withdraw a queued job (409 job_not_cancellable once it runs or has finished)."""
    return JobRead.model_validate(await jobs.cancel(job_id))
