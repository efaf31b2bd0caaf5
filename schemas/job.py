from datetime import datetime

from models.job import JobStatus
from schemas.common import ReadModel


class JobRead(ReadModel):
    id: int
    type: str
    status: JobStatus
    attempts: int
    max_attempts: int
    progress: int
    created_by: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
