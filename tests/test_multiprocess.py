"""The deployment that scales out, in real processes on one database: two API processes
(uvicorn, RUN_WORKER=false) and worker processes (`python -m worker` with a test job type and
schedule, tests/worker_schedules.py), all on 127.0.0.1 and the test database's socket."""

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from itertools import takewhile
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.factories import bearer, create_user, fetch, first_admin_id, scalar
from tests.uvicorn_process import uvicorn_process
from tests.worker_process import worker_subprocess
from tests.worker_schedules import (
    EFFECT_JOB_TYPE,
    SCHEDULED_MARKER,
    TEST_SCHEDULE,
    effect_name,
)

pytestmark = pytest.mark.committing

T = TypeVar("T")

API_ENV = {"RUN_WORKER": "false"}
# Every other second: a slot comes up often enough to see several in a few seconds.
EVERY_TWO_SECONDS = "* * * * * */2"
STOP_TIMEOUT_S = 30.0


@contextmanager
def worker_process(
    database_url: str, log: Path, *, schedule_cron: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m worker` with the test job type (and schedule), with the default concurrency and
    heartbeat; stopped by SIGTERM at the end, killed if it outlives STOP_TIMEOUT_S."""
    settings = {
        "RUN_WORKER": "false",
        "WORKER_SHUTDOWN_GRACE_SECONDS": "1",
        "WORKER_CONCURRENCY": "4",
        "JOB_HEARTBEAT_TIMEOUT_SECONDS": "60",
    }
    if schedule_cron is not None:
        settings["TEST_SCHEDULE_CRON"] = schedule_cron
    with worker_subprocess(
        database_url, log, module="tests.worker_schedules", **settings
    ) as worker:
        try:
            yield worker
        finally:
            worker.terminate()
            with suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=STOP_TIMEOUT_S)


async def eventually(probe: Callable[[], Awaitable[T]], what: str, limit_s: float = 30.0) -> T:
    """`probe()`'s first truthy answer, asked every 50 ms for up to `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not (answer := await probe()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.05)
    return answer


async def effects() -> Counter[str]:
    """How many times each test job's effect (an investor named after it) was committed."""
    return Counter(row.name for row in await fetch("SELECT name FROM investors"))


async def test_a_user_disabled_through_one_api_process_is_refused_by_another_within_a_second(
    database_url: str,
) -> None:
    user_id = await create_user()
    user = await bearer(user_id)
    admin = await bearer(await first_admin_id())
    with (
        uvicorn_process(database_url, env=API_ENV) as (api_a, _),
        uvicorn_process(database_url, env=API_ENV) as (api_b, _),
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            # B has met the user: the account sits in its caller cache from now on.
            me = await http.get(f"{api_b}/api/v1/auth/me", headers=user)
            assert me.status_code == 200, me.text
            assert me.json()["id"] == user_id

            disabled = await http.put(
                f"{api_a}/api/v1/users/{user_id}", json={"is_active": False}, headers=admin
            )
            assert disabled.status_code == 200, disabled.text
            assert disabled.json()["is_active"] is False

            deadline = time.monotonic() + 1.0
            while True:
                refused = await http.get(f"{api_b}/api/v1/auth/me", headers=user)
                if refused.status_code != 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert refused.status_code == 401, refused.text
            assert refused.json()["code"] == "invalid_token"


async def test_a_job_retried_through_an_api_process_runs_once_in_the_worker(
    database_url: str, tmp_path: Path
) -> None:
    # A job of the test type that failed its one attempt; no API route enqueues one yet.
    job_id = await scalar(
        "INSERT INTO jobs (type, status, payload, attempts, max_attempts, last_error, "
        "started_at, finished_at) VALUES (:type, 'failed', CAST(:payload AS jsonb), 1, 1, "
        "'RuntimeError: the first attempt failed', now(), now()) RETURNING id",
        type=EFFECT_JOB_TYPE,
        payload='{"marker": "retried"}',
    )
    admin = await bearer(await first_admin_id())
    with (
        worker_process(database_url, tmp_path / "worker.log"),
        uvicorn_process(database_url, env=API_ENV) as (api_a, _),
    ):
        async with httpx.AsyncClient(timeout=10) as http:
            retried = await http.post(f"{api_a}/api/v1/jobs/{job_id}/retry", headers=admin)
        assert retried.status_code == 202, retried.text
        assert retried.json()["status"] == "queued"

        async def finished() -> Any:
            (job,) = await fetch(
                "SELECT status, attempts, last_error FROM jobs WHERE id = :id", id=job_id
            )
            return job if job.status in ("succeeded", "failed") else None

        job = await eventually(finished, "the retried job to finish")

    assert (job.status, job.attempts, job.last_error) == ("succeeded", 1, None)
    assert (await effects())[effect_name("retried", job_id)] == 1
    # Nothing of it is left on the queue for another run.
    assert await scalar("SELECT count(*) FROM pgqueuer") == 0


async def test_a_schedule_runs_once_per_slot_with_two_workers(
    database_url: str, tmp_path: Path
) -> None:
    async def three_slots_run() -> bool:
        done = await scalar(
            "SELECT count(*) FROM schedule_runs JOIN jobs ON jobs.id = schedule_runs.job_id "
            "WHERE schedule = :name AND jobs.status = 'succeeded'",
            name=TEST_SCHEDULE,
        )
        return bool(done >= 3)

    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    with ExitStack() as stack:
        workers = [
            stack.enter_context(worker_process(database_url, log, schedule_cron=EVERY_TWO_SECONDS))
            for log in logs
        ]
        await eventually(three_slots_run, "three slots run", 40)
        assert [worker.poll() for worker in workers] == [None, None], "a worker stopped early"
    assert [worker.returncode for worker in workers] == [0, 0]
    for log in logs:
        assert "Worker started" in log.read_text(errors="replace")

    claims = await fetch(
        "SELECT slot, job_id, status, attempts FROM schedule_runs LEFT JOIN jobs "
        "ON jobs.id = schedule_runs.job_id WHERE schedule = :name ORDER BY slot",
        name=TEST_SCHEDULE,
    )
    slots = [claim.slot for claim in claims]
    assert len(set(slots)) == len(slots)
    assert all(slot.second % 2 == 0 for slot in slots)
    # The first slot seen is recorded without running (by each worker, if both started at once
    # on either side of a slot's boundary); every later one runs.
    first_sights = list(takewhile(lambda claim: claim.job_id is None, claims))
    assert 1 <= len(first_sights) <= len(workers)
    ran = claims[len(first_sights) :]
    assert all(claim.job_id is not None for claim in ran)

    # One job per slot, no job without its slot...
    jobs = await fetch(
        "SELECT id FROM jobs WHERE type = :type AND payload ->> 'marker' = :marker",
        type=EFFECT_JOB_TYPE,
        marker=SCHEDULED_MARKER,
    )
    assert sorted(job.id for job in jobs) == sorted(claim.job_id for claim in ran)
    # ...and each slot's job ran once: its effect committed once, in its one attempt. A slot
    # claimed just as the workers stopped may still wait in the queue, not run.
    done = await effects()
    for claim in ran:
        runs = done[effect_name(SCHEDULED_MARKER, claim.job_id)]
        if claim.status == "succeeded":
            assert (claim.attempts, runs) == (1, 1), claim
        else:
            assert (claim.status, runs) == ("queued", 0), claim
    assert sum(claim.status == "succeeded" for claim in ran) >= 3
