"""Jobs API (issue 14): list, read, retry, cancel; administrators only, except that a user may
read the jobs they caused."""

from datetime import UTC, datetime
from typing import Any

import pytest
from httpx import AsyncClient

from core.db import db
from tests.conftest import error_of
from tests.factories import create_user, fetch, first_admin_id, scalar
from tests.worker_process import (
    EffectPayload,
    effects,
    enqueue,
    finished,
    job_row,
    worker_in_process,
)

JOBS = "/api/v1/jobs"
READ_FIELDS = {
    "id",
    "type",
    "status",
    "attempts",
    "max_attempts",
    "progress",
    "created_by",
    "created_at",
    "started_at",
    "finished_at",
    "last_error",
}
NOT_FOUND = {"detail": "Job not found", "code": "not_found"}
NOT_RETRYABLE = {"detail": "Only a failed job can be retried", "code": "job_not_retryable"}
NOT_CANCELLABLE = {"detail": "Only a queued job can be cancelled", "code": "job_not_cancellable"}
UNKNOWN_ID = 987_654


async def insert_job(status: str = "queued", job_type: str = "test.effect", **columns: Any) -> int:
    """A `jobs` row as the queue would leave it, without PgQueuer's row."""
    values = {"type": job_type, "status": status, "payload": "{}", "max_attempts": 3, **columns}
    names = ", ".join(values)
    params = ", ".join(f":{name}" for name in values)
    return int(await scalar(f"INSERT INTO jobs ({names}) VALUES ({params}) RETURNING id", **values))


def ids_of(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# GET /jobs


async def test_the_list_filters_by_status_and_type_newest_first_in_pages(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    queued = await insert_job("queued")
    failed_flaky = await insert_job("failed", "test.flaky")
    succeeded = await insert_job("succeeded")
    failed = await insert_job("failed")
    queued_flaky = await insert_job("queued", "test.flaky")

    everything = await client.get(JOBS, headers=admin_headers)
    assert ids_of(everything) == [queued_flaky, failed, succeeded, failed_flaky, queued]
    assert {k: v for k, v in everything.json().items() if k != "items"} == {
        "total": 5,
        "skip": 0,
        "limit": 50,
    }
    by_status = await client.get(JOBS, params={"status": "failed"}, headers=admin_headers)
    assert ids_of(by_status) == [failed, failed_flaky]
    assert by_status.json()["total"] == 2
    by_type = await client.get(JOBS, params={"type": "test.effect"}, headers=admin_headers)
    assert ids_of(by_type) == [failed, succeeded, queued]
    both = await client.get(
        JOBS, params={"status": "failed", "type": "test.effect"}, headers=admin_headers
    )
    assert ids_of(both) == [failed]

    page = await client.get(JOBS, params={"skip": 1, "limit": 2}, headers=admin_headers)
    assert ids_of(page) == [failed, succeeded]
    assert (page.json()["total"], page.json()["skip"], page.json()["limit"]) == (5, 1, 2)


@pytest.mark.parametrize(
    "params",
    [{"status": "done"}, {"type": ""}, {"type": "x" * 101}, {"limit": 0}, {"skip": -1}],
    ids=["unknown status", "empty type", "long type", "zero limit", "negative skip"],
)
async def test_the_list_refuses_bad_filters_with_422(
    client: AsyncClient, admin_headers: dict[str, str], params: dict[str, Any]
) -> None:
    response = await client.get(JOBS, params=params, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


# GET /jobs/{id}


async def test_a_job_reads_with_its_bookkeeping_and_nothing_else(
    client: AsyncClient, admin_headers: dict[str, str], user_id: int
) -> None:
    created = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    started = datetime(2026, 3, 1, 9, 0, 5, tzinfo=UTC)
    ended = datetime(2026, 3, 1, 9, 1, tzinfo=UTC)
    job_id = await insert_job(
        "failed",
        attempts=3,
        progress=40,
        created_by=user_id,
        last_error="FlakyJobError: refused\n  at handler.py:3 in handle",
        created_at=created,
        started_at=started,
        finished_at=ended,
    )
    response = await client.get(f"{JOBS}/{job_id}", headers=admin_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == READ_FIELDS
    assert {k: v for k, v in body.items() if not k.endswith("_at")} == {
        "id": job_id,
        "type": "test.effect",
        "status": "failed",
        "attempts": 3,
        "max_attempts": 3,
        "progress": 40,
        "created_by": user_id,
        "last_error": "FlakyJobError: refused\n  at handler.py:3 in handle",
    }
    times = [datetime.fromisoformat(body[f"{k}_at"]) for k in ("created", "started", "finished")]
    assert times == [created, started, ended]


async def test_a_user_reads_the_jobs_they_caused_and_no_other(
    client: AsyncClient, user_headers: dict[str, str], user_id: int
) -> None:
    theirs = await insert_job(created_by=user_id)
    others = await insert_job(created_by=await create_user("other@crm.test"))
    nobodys = await insert_job()

    response = await client.get(f"{JOBS}/{theirs}", headers=user_headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == theirs
    for job_id in (others, nobodys):
        refused = await client.get(f"{JOBS}/{job_id}", headers=user_headers)
        assert refused.status_code == 403, refused.text
        assert error_of(refused)["code"] == "forbidden"


async def test_a_user_lists_only_their_own_jobs(
    client: AsyncClient, user_headers: dict[str, str], user_id: int, admin_headers: dict[str, str]
) -> None:
    own = await insert_job("failed", created_by=user_id)
    others = await insert_job("failed", created_by=await first_admin_id())
    listed = await client.get(JOBS, headers=user_headers)
    assert listed.status_code == 200, listed.text
    assert [job["id"] for job in listed.json()["items"]] == [own]
    assert listed.json()["total"] == 1
    everything = await client.get(JOBS, headers=admin_headers)
    assert [job["id"] for job in everything.json()["items"]] == [others, own]


async def test_a_user_may_not_retry_or_cancel_even_their_own_jobs(
    client: AsyncClient, user_headers: dict[str, str], user_id: int
) -> None:
    failed = await insert_job("failed", created_by=user_id)
    queued = await insert_job("queued", created_by=user_id)
    for response in (
        await client.post(f"{JOBS}/{failed}/retry", headers=user_headers),
        await client.post(f"{JOBS}/{queued}/cancel", headers=user_headers),
    ):
        assert response.status_code == 403, response.text
        assert error_of(response)["code"] == "forbidden"
    rows = await fetch(
        "SELECT status FROM jobs WHERE id IN (:a, :b) ORDER BY id", a=failed, b=queued
    )
    assert [row.status for row in rows] == ["failed", "queued"]


async def test_the_jobs_api_needs_a_login(client: AsyncClient) -> None:
    job_id = await insert_job("failed")
    for response in (
        await client.get(JOBS),
        await client.get(f"{JOBS}/{job_id}"),
        await client.post(f"{JOBS}/{job_id}/retry"),
    ):
        assert response.status_code == 401, response.text


async def test_an_unknown_job_is_404_for_every_route(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    for response in (
        await client.get(f"{JOBS}/{UNKNOWN_ID}", headers=admin_headers),
        await client.post(f"{JOBS}/{UNKNOWN_ID}/retry", headers=admin_headers),
        await client.post(f"{JOBS}/{UNKNOWN_ID}/cancel", headers=admin_headers),
    ):
        assert response.status_code == 404, response.text
        assert error_of(response) == NOT_FOUND


# POST /jobs/{id}/retry


async def test_a_failed_job_is_queued_again_with_fresh_attempts(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    job_id = await insert_job(
        "failed",
        attempts=3,
        progress=60,
        last_error="FlakyJobError: refused",
        started_at=datetime(2026, 3, 1, tzinfo=UTC),
        finished_at=datetime(2026, 3, 1, 0, 1, tzinfo=UTC),
    )
    response = await client.post(f"{JOBS}/{job_id}/retry", headers=admin_headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["id"], body["status"], body["attempts"], body["progress"]) == (
        job_id,
        "queued",
        0,
        0,
    )
    assert (body["started_at"], body["finished_at"]) == (None, None)
    # A new PgQueuer row carries it.
    [queued] = await fetch(
        "SELECT q.id, q.entrypoint, q.payload, q.status FROM jobs j "
        "JOIN pgqueuer q ON q.payload = convert_to(j.id::text, 'UTF8') WHERE j.id = :id",
        id=job_id,
    )
    assert (queued.entrypoint, queued.payload, queued.status) == (
        "test.effect",
        str(job_id).encode(),
        "queued",
    )


@pytest.mark.parametrize("status", ["queued", "running", "succeeded", "cancelled"])
async def test_only_a_failed_job_can_be_retried(
    client: AsyncClient, admin_headers: dict[str, str], status: str
) -> None:
    job_id = await insert_job(status, attempts=1)
    response = await client.post(f"{JOBS}/{job_id}/retry", headers=admin_headers)
    assert response.status_code == 409, response.text
    assert error_of(response) == NOT_RETRYABLE
    assert (await job_row(job_id)).status == status
    assert await scalar("SELECT count(*) FROM pgqueuer") == 0


# POST /jobs/{id}/cancel


async def test_a_queued_job_is_cancelled_and_withdrawn_from_the_queue(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    job_id = await enqueue("test.effect", EffectPayload(marker="never"))
    queue_id = (await job_row(job_id)).queue_id
    assert await fetch("SELECT 1 FROM pgqueuer WHERE id = :id", id=queue_id)

    response = await client.post(f"{JOBS}/{job_id}/cancel", headers=admin_headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"], body["attempts"]) == (job_id, "cancelled", 0)
    assert body["finished_at"] is not None
    assert not await fetch("SELECT 1 FROM pgqueuer WHERE id = :id", id=queue_id)
    assert (await job_row(job_id)).status == "cancelled"


@pytest.mark.parametrize("status", ["running", "succeeded", "failed", "cancelled"])
async def test_only_a_queued_job_can_be_cancelled(
    client: AsyncClient, admin_headers: dict[str, str], status: str
) -> None:
    job_id = await insert_job(status, attempts=1)
    response = await client.post(f"{JOBS}/{job_id}/cancel", headers=admin_headers)
    assert response.status_code == 409, response.text
    assert error_of(response) == NOT_CANCELLABLE
    assert (await job_row(job_id)).status == status


@pytest.mark.committing
async def test_a_cancelled_job_is_never_run_by_a_worker(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    cancelled = await enqueue("test.effect", EffectPayload(marker="cancelled"))
    response = await client.post(f"{JOBS}/{cancelled}/cancel", headers=admin_headers)
    assert response.status_code == 200, response.text
    admin = await first_admin_id()
    after = await enqueue("test.effect", EffectPayload(marker="after"), created_by=admin)

    async with worker_in_process(db):
        # Had the cancelled job stayed in the queue, it would have been taken first (oldest).
        assert (await finished(after)).status == "succeeded"
    job = await job_row(cancelled)
    assert (job.status, job.attempts, job.started_at) == ("cancelled", 0, None)
    assert await effects("cancelled") == 0
    assert await effects("after") == 1
