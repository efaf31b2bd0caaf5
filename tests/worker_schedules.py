"""`python -m worker` with a test job type, and a test schedule when TEST_SCHEDULE_CRON is set:
`python -m tests.worker_schedules`, started by tests/test_multiprocess.py.

Each run of the test job leaves one investor named after the job (marker and job id), in the
handler's transaction: the test counts a job's runs by counting those rows. Importing this
module registers nothing; only running it does.
"""

import asyncio
import os

from pydantic import BaseModel, Field
from sqlalchemy import text

from core.jobs import JobContext, RetryPolicy, job_types
from core.schedules import Schedule, schedules

EFFECT_JOB_TYPE = "test.sched.effect"
TEST_SCHEDULE = "test.sched.schedule"
SCHEDULED_MARKER = "scheduled"


class EffectPayload(BaseModel):
    marker: str = Field(max_length=50)


def effect_name(marker: str, job_id: int) -> str:
    return f"{marker} job {job_id}"


async def leave_effect(payload: EffectPayload, context: JobContext) -> None:
    await context.session.execute(
        text("INSERT INTO investors (name) VALUES (:name)"),
        {"name": effect_name(payload.marker, context.job_id)},
    )


def scheduled_payload() -> EffectPayload:
    return EffectPayload(marker=SCHEDULED_MARKER)


def register_test_tasks() -> None:
    job_types.register(EFFECT_JOB_TYPE, EffectPayload, retry=RetryPolicy(max_attempts=1))(
        leave_effect
    )
    if cron := os.environ.get("TEST_SCHEDULE_CRON"):
        schedules.add(Schedule(TEST_SCHEDULE, cron, EFFECT_JOB_TYPE, scheduled_payload))


if __name__ == "__main__":
    from worker.__main__ import main

    register_test_tasks()
    asyncio.run(main())
