"""Tasks: the routes, due windows on the Paris calendar (with the clock moved, never slept),
who may change what, the trash and bad input."""

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from httpx import AsyncClient

from core.clock import use_clock
from tests.conftest import error_of
from tests.factories import (
    bearer,
    create_user,
    execute,
    fetch,
    insert_interaction,
    insert_investor,
    make_investor,
    scalar,
)
from tests.test_schedules import FakeClock

TASKS = "/api/v1/tasks"
Headers = dict[str, str]
# Thursday 26 November 2026, 10:00 in Paris (UTC+1).
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
TODAY = date(2026, 11, 26)


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    """The application's clock, stopped at NOW until the test moves it."""
    fake = FakeClock(NOW)
    previous = use_clock(fake)
    yield fake
    use_clock(previous)


async def make_task(client: AsyncClient, headers: Headers, **fields: Any) -> Any:
    body = {"title": "Appeler Jeanne", "due_date": TODAY.isoformat(), **fields}
    response = await client.post(TASKS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def ids_of(client: AsyncClient, headers: Headers, query: str = "") -> list[int]:
    response = await client.get(f"{TASKS}?{query}", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["items"])
    return [item["id"] for item in body["items"]]


# --- create, read ----------------------------------------------------------------------------


async def test_a_task_is_given_to_its_creator_by_default(
    client: AsyncClient, user_headers: Headers, user_id: int, clock: FakeClock
) -> None:
    task = await make_task(client, user_headers, due_time="14:30", description="Avant midi")
    assert {k: v for k, v in task.items() if k not in ("id", "created_at", "updated_at")} == {
        "title": "Appeler Jeanne",
        "description": "Avant midi",
        "due_date": "2026-11-26",
        "due_time": "14:30",
        "priority": "normale",
        "status": "a_faire",
        "assignee_id": user_id,
        "investor_id": None,
        "interaction_id": None,
        "source": "manual",
        "created_by": user_id,
        "completed_at": None,
    }
    read = await client.get(f"{TASKS}/{task['id']}", headers=user_headers)
    assert read.status_code == 200
    assert read.json() == task


async def test_a_task_linked_to_an_interaction_is_about_its_investor(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await insert_investor()
    interaction = await insert_interaction(investor)
    task = await make_task(client, admin_headers, interaction_id=interaction)
    assert (task["investor_id"], task["interaction_id"]) == (investor, interaction)
    other = await insert_investor("Autre Capital")
    mismatch = await client.post(
        TASKS,
        json={
            "title": "x",
            "due_date": "2026-11-26",
            "investor_id": other,
            "interaction_id": interaction,
        },
        headers=admin_headers,
    )
    assert mismatch.status_code == 422
    assert error_of(mismatch)["code"] == "interaction_not_of_investor"


async def test_a_task_assigned_to_someone_else_is_theirs(
    client: AsyncClient, user_headers: Headers, user_id: int, clock: FakeClock
) -> None:
    colleague = await create_user("colleague@crm.test")
    task = await make_task(client, user_headers, assignee_id=colleague)
    assert (task["assignee_id"], task["created_by"]) == (colleague, user_id)
    colleague_headers = await bearer(colleague)
    mine = await ids_of(client, colleague_headers, "assignee_id=me")
    assert mine == [task["id"]]
    # Told so; the author, who assigned its own task too, is not.
    await make_task(client, user_headers)
    told = (await client.get("/api/v1/notifications", headers=colleague_headers)).json()
    assert [(n["kind"], n["title"], n["link"]) for n in told["items"]] == [
        ("task_assigned", task["title"], f"{TASKS}/{task['id']}")
    ]
    own = (await client.get("/api/v1/notifications", headers=user_headers)).json()
    assert own["items"] == []


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"due_date": "2026-11-26"}, "title"),
        ({"title": "   ", "due_date": "2026-11-26"}, "title"),
        ({"title": "x" * 201, "due_date": "2026-11-26"}, "title"),
        # A time alone is no due date.
        ({"title": "x", "due_time": "10:00"}, "due_date"),
        ({"title": "x", "due_date": "26/11/2026"}, "due_date"),
        ({"title": "x", "due_date": "2026-11-26", "due_time": "25:00"}, "due_time"),
        ({"title": "x", "due_date": "2026-11-26", "due_time": "10:00:00"}, "due_time"),
        ({"title": "x", "due_date": "2026-11-26", "priority": "critique"}, "priority"),
        ({"title": "x", "due_date": "2026-11-26", "status": "done"}, "status"),
        ({"title": "x", "due_date": "2026-11-26", "source": "rule:stage_client"}, "source"),
        (
            {"title": "x", "due_date": "2026-11-26", "completed_at": "2026-11-26T10:00:00Z"},
            "completed_at",
        ),
        ({"title": "x\u0000", "due_date": "2026-11-26"}, "title"),
    ],
)
async def test_an_invalid_body_is_422(
    client: AsyncClient, user_headers: Headers, body: dict[str, Any], field: str
) -> None:
    response = await client.post(TASKS, json=body, headers=user_headers)
    assert response.status_code == 422, response.text
    assert any(field in item["loc"] for item in response.json()["detail"]), response.text


async def test_an_unknown_or_inactive_assignee_is_422(
    client: AsyncClient, user_headers: Headers
) -> None:
    gone = await create_user("gone@crm.test", is_active=False)
    for assignee in (gone, 2_000_000_000):
        response = await client.post(
            TASKS,
            json={"title": "x", "due_date": "2026-11-26", "assignee_id": assignee},
            headers=user_headers,
        )
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "invalid_assignee"
    assert await scalar("SELECT count(*) FROM tasks") == 0


async def test_an_unknown_or_trashed_investor_is_422(
    client: AsyncClient, admin_headers: Headers
) -> None:
    trashed = await make_investor(client, admin_headers, name="Supprimé Capital")
    deleted = await client.delete(f"/api/v1/investors/{trashed['id']}", headers=admin_headers)
    assert deleted.status_code == 204
    for investor in (trashed["id"], 2_000_000_000):
        response = await client.post(
            TASKS,
            json={"title": "x", "due_date": "2026-11-26", "investor_id": investor},
            headers=admin_headers,
        )
        assert response.status_code == 422, response.text
        assert error_of(response)["code"] == "unknown_investor"
    unknown = await client.post(
        TASKS,
        json={"title": "x", "due_date": "2026-11-26", "interaction_id": 2_000_000_000},
        headers=admin_headers,
    )
    assert error_of(unknown)["code"] == "unknown_interaction"


async def test_a_missing_task_is_404(client: AsyncClient, admin_headers: Headers) -> None:
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/complete")):
        response = await client.request(
            method, f"{TASKS}/2000000000{suffix}", json={"title": "x"}, headers=admin_headers
        )
        assert response.status_code == 404, (method, response.text)


# --- list, filters, due windows, summary -----------------------------------------------------


async def test_the_default_order_is_due_date_then_most_urgent_then_id(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    low = await make_task(client, admin_headers, priority="basse")
    urgent = await make_task(client, admin_headers, priority="urgente")
    high = await make_task(client, admin_headers, priority="haute")
    earlier = await make_task(client, admin_headers, due_date="2026-11-20", priority="basse")
    later = await make_task(client, admin_headers, due_date="2026-12-01")
    expected = [earlier["id"], urgent["id"], high["id"], low["id"], later["id"]]
    assert await ids_of(client, admin_headers) == expected
    assert await ids_of(client, admin_headers, "sort=-due_date") == expected[::-1]
    assert (await ids_of(client, admin_headers, "sort=priority"))[0] == urgent["id"]


async def test_due_windows_follow_the_paris_calendar(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    overdue = await make_task(client, admin_headers, due_date="2026-11-25")
    done_late = await make_task(client, admin_headers, due_date="2026-11-20", status="terminee")
    today = await make_task(client, admin_headers, due_date="2026-11-26")
    tomorrow = await make_task(client, admin_headers, due_date="2026-11-27")
    in_a_week = await make_task(client, admin_headers, due_date="2026-12-03")
    later = await make_task(client, admin_headers, due_date="2026-12-04")
    assert await ids_of(client, admin_headers, "due=overdue") == [overdue["id"]]
    assert await ids_of(client, admin_headers, "due=today") == [today["id"]]
    assert await ids_of(client, admin_headers, "due=week") == [tomorrow["id"], in_a_week["id"]]
    assert await ids_of(client, admin_headers, "due=later") == [later["id"]]
    assert done_late["id"] not in await ids_of(client, admin_headers, "due=overdue")
    # 23:30 UTC is already 00:30 on the 27th in Paris: the 26th's task is now overdue.
    await clock.move_to(datetime(2026, 11, 26, 23, 30, tzinfo=UTC))
    assert await ids_of(client, admin_headers, "due=today") == [tomorrow["id"]]
    assert await ids_of(client, admin_headers, "due=overdue") == [overdue["id"], today["id"]]


async def test_filters_combine(
    client: AsyncClient,
    user_headers: Headers,
    user_id: int,
    admin_headers: Headers,
    clock: FakeClock,
) -> None:
    investor = await insert_investor()
    mine = await make_task(client, user_headers, investor_id=investor, priority="haute")
    started = await make_task(client, user_headers, status="en_cours", due_date="2026-11-28")
    done = await make_task(client, user_headers, status="terminee")
    theirs = await make_task(client, admin_headers, investor_id=investor)
    assert await ids_of(client, user_headers, "assignee_id=me") == [
        mine["id"],
        done["id"],
        started["id"],
    ]
    assert await ids_of(
        client, admin_headers, f"assignee_id={user_id}&status=en_cours&status=terminee"
    ) == [
        done["id"],
        started["id"],
    ]
    assert await ids_of(client, user_headers, "priority=haute") == [mine["id"]]
    assert await ids_of(client, user_headers, f"investor_id={investor}") == [
        mine["id"],
        theirs["id"],
    ]
    assert await ids_of(client, user_headers, "due_from=2026-11-27&due_to=2026-11-30") == [
        started["id"]
    ]
    for query in (
        "assignee_id=someone",
        "status=fini",
        "due=tomorrow",
        "due_from=26-11-2026",
        "sort=title",
    ):
        response = await client.get(f"{TASKS}?{query}", headers=user_headers)
        assert response.status_code == 422, query


async def test_the_summary_counts_the_caller_s_open_tasks(
    client: AsyncClient, user_headers: Headers, admin_headers: Headers, clock: FakeClock
) -> None:
    for due in ("2026-11-20", "2026-11-25", "2026-11-26", "2026-11-30", "2026-12-03", "2027-01-10"):
        await make_task(client, user_headers, due_date=due)
    await make_task(client, user_headers, due_date="2026-11-20", status="terminee")
    await make_task(client, user_headers, due_date="2026-11-26", status="annulee")
    await make_task(client, admin_headers, due_date="2026-11-26")
    response = await client.get(f"{TASKS}/summary", headers=user_headers)
    assert response.status_code == 200
    assert response.json() == {"overdue": 2, "today": 1, "week": 2, "open": 6}


# --- changes ---------------------------------------------------------------------------------


async def test_completing_sets_completed_at_once_and_reopening_clears_it(
    client: AsyncClient, user_headers: Headers, clock: FakeClock
) -> None:
    task = await make_task(client, user_headers)
    done = await client.post(f"{TASKS}/{task['id']}/complete", headers=user_headers)
    assert done.status_code == 200
    assert done.json()["status"] == "terminee"
    assert done.json()["completed_at"] == "2026-11-26T09:00:00Z"
    await clock.move_to(datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    again = await client.post(f"{TASKS}/{task['id']}/complete", headers=user_headers)
    assert again.status_code == 200
    assert again.json()["completed_at"] == "2026-11-26T09:00:00Z"
    reopened = await client.patch(
        f"{TASKS}/{task['id']}", json={"status": "en_cours"}, headers=user_headers
    )
    assert reopened.status_code == 200
    assert (reopened.json()["status"], reopened.json()["completed_at"]) == ("en_cours", None)


async def test_an_update_changes_only_the_fields_sent(
    client: AsyncClient, user_headers: Headers, clock: FakeClock
) -> None:
    task = await make_task(client, user_headers, description="Garder", due_time="09:15")
    response = await client.put(
        f"{TASKS}/{task['id']}",
        json={"title": "Rappeler Paul", "priority": "urgente", "due_time": None},
        headers=user_headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["title"], body["priority"], body["due_time"]) == ("Rappeler Paul", "urgente", None)
    assert (body["description"], body["due_date"]) == ("Garder", "2026-11-26")
    for field in ("title", "due_date", "status", "assignee_id"):
        refused = await client.patch(
            f"{TASKS}/{task['id']}", json={field: None}, headers=user_headers
        )
        assert refused.status_code == 422, field


async def test_snooze_moves_the_due_date(
    client: AsyncClient, user_headers: Headers, clock: FakeClock
) -> None:
    future = await make_task(client, user_headers, due_date="2026-12-01")
    overdue = await make_task(client, user_headers, due_date="2026-11-01")
    moved = await client.post(
        f"{TASKS}/{future['id']}/snooze", json={"days": 2}, headers=user_headers
    )
    assert moved.json()["due_date"] == "2026-12-03"
    # Overdue: from today, not from a date already past.
    moved = await client.post(
        f"{TASKS}/{overdue['id']}/snooze", json={"days": 1}, headers=user_headers
    )
    assert moved.json()["due_date"] == "2026-11-27"
    moved = await client.post(
        f"{TASKS}/{overdue['id']}/snooze", json={"until": "2026-11-26"}, headers=user_headers
    )
    assert moved.json()["due_date"] == "2026-11-26"


@pytest.mark.parametrize(
    "body", [{}, {"days": 0}, {"days": 91}, {"days": 2, "until": "2026-12-01"}, {"days": "2"}]
)
async def test_a_snooze_needs_one_valid_delay(
    client: AsyncClient, user_headers: Headers, body: dict[str, Any], clock: FakeClock
) -> None:
    task = await make_task(client, user_headers)
    response = await client.post(f"{TASKS}/{task['id']}/snooze", json=body, headers=user_headers)
    assert response.status_code == 422, response.text


async def test_a_snooze_to_the_past_or_of_a_finished_task_is_refused(
    client: AsyncClient, user_headers: Headers, clock: FakeClock
) -> None:
    task = await make_task(client, user_headers)
    past = await client.post(
        f"{TASKS}/{task['id']}/snooze", json={"until": "2026-11-25"}, headers=user_headers
    )
    assert past.status_code == 422
    assert error_of(past)["code"] == "invalid_snooze"
    for status in ("terminee", "annulee"):
        await client.patch(f"{TASKS}/{task['id']}", json={"status": status}, headers=user_headers)
        finished = await client.post(
            f"{TASKS}/{task['id']}/snooze", json={"days": 1}, headers=user_headers
        )
        assert finished.status_code == 409
        assert error_of(finished)["code"] == "task_finished"
    assert (await client.get(f"{TASKS}/{task['id']}", headers=user_headers)).json()["due_date"] == (
        "2026-11-26"
    )


# --- permissions -----------------------------------------------------------------------------


async def test_a_user_changes_only_the_tasks_given_to_it_or_written_by_it(
    client: AsyncClient,
    user_headers: Headers,
    user_id: int,
    admin_headers: Headers,
    clock: FakeClock,
) -> None:
    given = await make_task(client, admin_headers, assignee_id=user_id)
    written = await make_task(client, user_headers, assignee_id=await first_admin())
    foreign = await make_task(client, admin_headers)
    for task in (given, written):
        changed = await client.patch(
            f"{TASKS}/{task['id']}", json={"priority": "haute"}, headers=user_headers
        )
        assert changed.status_code == 200, changed.text
    # It sees every task, changes none of another's.
    assert (await client.get(f"{TASKS}/{foreign['id']}", headers=user_headers)).status_code == 200
    for method, suffix, body in (
        ("PATCH", "", {"priority": "haute"}),
        ("POST", "/complete", None),
        ("POST", "/snooze", {"days": 1}),
        ("DELETE", "", None),
    ):
        refused = await client.request(
            method, f"{TASKS}/{foreign['id']}{suffix}", json=body, headers=user_headers
        )
        assert refused.status_code == 403, (method, suffix)
        assert error_of(refused) == {
            "detail": "Not allowed: only the task's assignee, its author, a manager or an admin "
            "may change it",
            "code": "forbidden",
        }


async def test_a_viewer_reads_tasks_only(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    viewer = await bearer(await create_user("viewer@crm.test", role="viewer"))
    task = await make_task(client, admin_headers)
    assert (await client.get(f"{TASKS}/{task['id']}", headers=viewer)).status_code == 200
    assert (await client.get(f"{TASKS}/summary", headers=viewer)).status_code == 200
    created = await client.post(
        TASKS, json={"title": "x", "due_date": "2026-11-26"}, headers=viewer
    )
    assert created.status_code == 403


# --- an investor's tasks, the trash, the audit trail -----------------------------------------


async def test_an_investor_s_tasks_in_any_status_by_due_date(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await insert_investor()
    late = await make_task(client, admin_headers, investor_id=investor, due_date="2026-12-10")
    done = await make_task(client, admin_headers, investor_id=investor, status="terminee")
    await make_task(client, admin_headers)
    response = await client.get(f"/api/v1/investors/{investor}/tasks", headers=admin_headers)
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["items"]] == [done["id"], late["id"]]
    missing = await client.get("/api/v1/investors/2000000000/tasks", headers=admin_headers)
    assert missing.status_code == 404


async def test_a_deleted_task_goes_to_the_trash_and_comes_back(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    task = await make_task(client, admin_headers)
    assert (await client.delete(f"{TASKS}/{task['id']}", headers=admin_headers)).status_code == 204
    assert (await client.get(f"{TASKS}/{task['id']}", headers=admin_headers)).status_code == 404
    assert await ids_of(client, admin_headers) == []
    trash = (await client.get("/api/v1/trash?entity=task", headers=admin_headers)).json()
    assert [(item["id"], item["label"]) for item in trash["items"]] == [(task["id"], task["title"])]
    restored = await client.post(f"/api/v1/trash/task/{task['id']}/restore", headers=admin_headers)
    assert restored.status_code == 200, restored.text
    assert restored.json() == task


async def test_task_writes_are_audited(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    task = await make_task(client, admin_headers)
    await client.post(f"{TASKS}/{task['id']}/snooze", json={"days": 3}, headers=admin_headers)
    rows = await fetch(
        "SELECT action, changes FROM audit_log WHERE entity = 'task' AND entity_id = :id "
        "ORDER BY id",
        id=task["id"],
    )
    assert [row.action for row in rows] == ["create", "update"]
    assert rows[0].changes["title"] == "Appeler Jeanne"
    assert rows[1].changes == {"due_date": ["2026-11-26", "2026-11-29"]}


async def first_admin() -> int:
    return int(await scalar("SELECT min(id) FROM users WHERE role = 'admin'"))


async def test_a_deleted_assignee_leaves_the_task_unassigned(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    leaving = await create_user("leaving@crm.test")
    task = await make_task(client, admin_headers, assignee_id=leaving)
    await execute("DELETE FROM users WHERE id = :id", id=leaving)
    assert (await client.get(f"{TASKS}/{task['id']}", headers=admin_headers)).json()[
        "assignee_id"
    ] is None
