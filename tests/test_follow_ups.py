"""Automatic follow-ups: every default rule (with the clock moved, never slept), the rules'
settings, no pile-up (also under concurrent requests), `perdu`, the transaction, the trash and
the anonymisation."""

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text

from core.clock import use_clock
from core.config import PROJECT_ROOT
from core.db import db
from schemas.investor import InvestorUpdate
from services.follow_ups import DEFAULT_RULES
from services.investors import InvestorService
from services.users import UserService
from tests.conftest import error_of
from tests.factories import (
    INVESTORS,
    bearer,
    create_user,
    fetch,
    first_admin_id,
    insert_interaction,
    insert_investor,
    make_investor,
    scalar,
)
from tests.test_schedules import FakeClock

RULES = "/api/v1/follow-up-rules"
TASKS = "/api/v1/tasks"
INTERACTIONS = "/api/v1/interactions"
Headers = dict[str, str]
# Thursday 26 November 2026, 10:00 in Paris.
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
TODAY = date(2026, 11, 26)

STAGE_RULES = [
    ("prospect_chaud", "stage_prospect_chaud", 3, "Relancer Acme Capital"),
    ("en_negociation", "stage_en_negociation", 7, "Point négociation avec Acme Capital"),
    ("client", "stage_client", 1, "Appel d'accueil Acme Capital"),
]
INTERACTION_RULES = [
    ("reunion", "interaction_reunion", 1, "Envoyer le compte rendu à Acme Capital"),
    ("appel", "interaction_appel", 3, "Rappeler Acme Capital"),
    ("email", "interaction_email", 5, "Relancer Acme Capital (email)"),
]


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    """The application's clock, stopped at NOW until the test moves it."""
    fake = FakeClock(NOW)
    previous = use_clock(fake)
    yield fake
    use_clock(previous)


async def rule_tasks(investor_id: int) -> list[Any]:
    return await fetch(
        "SELECT id, title, due_date, priority, status, assignee_id, investor_id, interaction_id, "
        "source, created_by FROM tasks WHERE investor_id = :i AND source <> 'manual' ORDER BY id",
        i=investor_id,
    )


async def log(client: AsyncClient, headers: Headers, investor_id: int, type_: str, on: date) -> Any:
    response = await client.post(
        f"{INTERACTIONS}/investor/{investor_id}",
        json={"type": type_, "date": on.isoformat()},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def to_stage(client: AsyncClient, headers: Headers, investor_id: int, stage: str) -> None:
    response = await client.patch(
        f"{INVESTORS}/{investor_id}", json={"pipeline_stage": stage}, headers=headers
    )
    assert response.status_code == 200, response.text


# --- the rules -------------------------------------------------------------------------------


def test_the_migration_creates_the_application_s_default_rules() -> None:
    # The migration keeps its own frozen copy; the tests reseed emptied tables from the app's.
    path = PROJECT_ROOT / "alembic" / "versions" / "0019_tasks.py"
    spec = importlib.util.spec_from_file_location("migration_0019", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert migration.DEFAULT_RULES == DEFAULT_RULES


async def test_the_six_default_rules(client: AsyncClient, user_headers: Headers) -> None:
    response = await client.get(RULES, headers=user_headers)
    assert response.status_code == 200
    assert response.json() == [
        {
            "key": key,
            "trigger": trigger,
            "enabled": True,
            "delay_days": delay,
            "title": title,
            "priority": "normale",
        }
        for key, trigger, delay, title in DEFAULT_RULES
    ]


async def test_a_manager_changes_a_rule_and_the_next_task_follows_it(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    manager = await bearer(await create_user("manager@crm.test", role="manager"))
    change = {"delay_days": 10, "title": "Relance {investor} {x}", "priority": "urgente"}
    response = await client.put(f"{RULES}/stage_prospect_chaud", json=change, headers=manager)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "key": "stage_prospect_chaud",
        "trigger": "stage:prospect_chaud",
        "enabled": True,
        **change,
    }
    investor = await make_investor(client, admin_headers, pipeline_stage="prospect_chaud")
    [task] = await rule_tasks(investor["id"])
    # Only `{investor}` is replaced: other braces stay as written.
    assert (task.title, task.due_date, task.priority) == (
        "Relance Acme Capital {x}",
        TODAY + timedelta(days=10),
        "urgente",
    )
    audited = await fetch("SELECT action, changes FROM audit_log WHERE entity = 'follow_up_rule'")
    assert [(row.action, row.changes["delay_days"]) for row in audited] == [("update", [3, 10])]


async def test_a_disabled_rule_creates_nothing(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    response = await client.put(
        f"{RULES}/interaction_appel", json={"enabled": False}, headers=admin_headers
    )
    assert response.status_code == 200
    investor = await make_investor(client, admin_headers)
    await log(client, admin_headers, investor["id"], "appel", TODAY)
    assert await rule_tasks(investor["id"]) == []


@pytest.mark.parametrize("role", ["user", "viewer"])
async def test_only_a_manager_or_an_admin_changes_the_rules(client: AsyncClient, role: str) -> None:
    headers = await bearer(await create_user(f"{role}@crm.test", role=role))
    response = await client.put(f"{RULES}/stage_client", json={"delay_days": 2}, headers=headers)
    assert response.status_code == 403
    assert "follow-up rules" in error_of(response)["detail"]
    assert await scalar("SELECT delay_days FROM follow_up_rules WHERE key = 'stage_client'") == 1


@pytest.mark.parametrize(
    ("key", "body", "status"),
    [
        ("no_such_rule", {"delay_days": 2}, 404),
        ("stage_client", {"delay_days": 91}, 422),
        ("stage_client", {"delay_days": -1}, 422),
        ("stage_client", {"title": " "}, 422),
        ("stage_client", {"title": "x" * 201}, 422),
        ("stage_client", {"enabled": "yes"}, 422),
        ("stage_client", {"priority": "max"}, 422),
        ("stage_client", {"enabled": None}, 422),
        ("stage_client", {"key": "other"}, 422),
        ("stage_client", {"trigger": "stage:perdu"}, 422),
    ],
)
async def test_bad_rule_changes_are_refused(
    client: AsyncClient, admin_headers: Headers, key: str, body: dict[str, Any], status: int
) -> None:
    response = await client.put(f"{RULES}/{key}", json=body, headers=admin_headers)
    assert response.status_code == status, response.text
    assert await scalar("SELECT delay_days FROM follow_up_rules WHERE key = 'stage_client'") == 1


# --- every default rule ----------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "key", "delay", "title"), STAGE_RULES)
async def test_entering_a_stage_creates_its_follow_up_for_the_owner(
    client: AsyncClient,
    admin_headers: Headers,
    clock: FakeClock,
    stage: str,
    key: str,
    delay: int,
    title: str,
) -> None:
    owner = await create_user("owner@crm.test")
    investor = await make_investor(client, admin_headers, owner_id=owner)
    # Another day: the delay counts from the day of the change, on the Paris calendar
    # (23:30 UTC on the 27th is the 28th in Paris).
    await clock.move_to(datetime(2026, 11, 27, 23, 30, tzinfo=UTC))
    await to_stage(client, admin_headers, investor["id"], stage)
    [task] = await rule_tasks(investor["id"])
    admin = await first_admin_id()
    assert task._asdict() | {"id": None} == {
        "id": None,
        "title": title,
        "due_date": date(2026, 11, 28) + timedelta(days=delay),
        "priority": "normale",
        "status": "a_faire",
        "assignee_id": owner,
        "investor_id": investor["id"],
        "interaction_id": None,
        "source": f"rule:{key}",
        "created_by": admin,
    }


async def test_moving_to_the_next_stage_and_creating_at_a_stage_fire_too(
    client: AsyncClient, user_headers: Headers, user_id: int, clock: FakeClock
) -> None:
    investor = await make_investor(client, user_headers, pipeline_stage="prospect_tiede")
    assert await rule_tasks(investor["id"]) == []
    moved = await client.put(
        f"{INVESTORS}/{investor['id']}/move-to-next-stage", headers=user_headers
    )
    assert moved.status_code == 200
    created = await make_investor(
        client, user_headers, name="Client Direct", pipeline_stage="client"
    )
    assert [t.source for t in await rule_tasks(investor["id"])] == ["rule:stage_prospect_chaud"]
    assert [t.source for t in await rule_tasks(created["id"])] == ["rule:stage_client"]


@pytest.mark.parametrize(("type_", "key", "delay", "title"), INTERACTION_RULES)
async def test_logging_an_interaction_creates_its_follow_up(
    client: AsyncClient,
    user_headers: Headers,
    user_id: int,
    clock: FakeClock,
    type_: str,
    key: str,
    delay: int,
    title: str,
) -> None:
    # No owner: the task goes to whoever logged the interaction.
    investor = await insert_investor("Acme Capital")
    on = TODAY - timedelta(days=1)
    interaction = await log(client, user_headers, investor, type_, on)
    [task] = await rule_tasks(investor)
    assert (task.title, task.source, task.assignee_id, task.interaction_id) == (
        title,
        f"rule:{key}",
        user_id,
        interaction["id"],
    )
    # From the interaction's date, but never before today.
    assert task.due_date == max(on + timedelta(days=delay), TODAY)


async def test_interaction_rules_look_at_the_last_30_days_only(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(client, admin_headers)
    await log(client, admin_headers, investor["id"], "appel", TODAY - timedelta(days=31))
    await log(client, admin_headers, investor["id"], "email", TODAY + timedelta(days=1))
    await log(client, admin_headers, investor["id"], "webinaire", TODAY)
    assert await rule_tasks(investor["id"]) == []
    # 30 days ago: in the window, and its due date (30 + 3 days on) is today's at the latest.
    await log(client, admin_headers, investor["id"], "appel", TODAY - timedelta(days=30))
    [task] = await rule_tasks(investor["id"])
    assert task.due_date == TODAY


async def test_interactions_written_outside_the_api_create_no_task(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(client, admin_headers)
    for _ in range(3):
        await insert_interaction(investor["id"], TODAY, type_="appel")
    assert await rule_tasks(investor["id"]) == []


# --- no pile-up ------------------------------------------------------------------------------


async def test_a_new_trigger_moves_the_open_task_instead_of_adding_one(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(client, admin_headers)
    first = await log(client, admin_headers, investor["id"], "appel", TODAY)
    await clock.move_to(NOW + timedelta(days=2))
    second = await log(client, admin_headers, investor["id"], "appel", TODAY + timedelta(days=2))
    [task] = await rule_tasks(investor["id"])
    assert task.due_date == TODAY + timedelta(days=5)
    assert task.interaction_id == second["id"] != first["id"]
    # Another rule is another task.
    await log(client, admin_headers, investor["id"], "email", TODAY + timedelta(days=2))
    assert len(await rule_tasks(investor["id"])) == 2
    # Once done, the next trigger creates a new one.
    done = await client.post(f"{TASKS}/{task.id}/complete", headers=admin_headers)
    assert done.status_code == 200
    await log(client, admin_headers, investor["id"], "appel", TODAY + timedelta(days=2))
    assert [t.status for t in await rule_tasks(investor["id"])] == [
        "terminee",
        "a_faire",
        "a_faire",
    ]


async def test_reopening_a_follow_up_beside_a_newer_open_one_is_409(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(client, admin_headers)
    await log(client, admin_headers, investor["id"], "appel", TODAY)
    [first] = await rule_tasks(investor["id"])
    await client.post(f"{TASKS}/{first.id}/complete", headers=admin_headers)
    await log(client, admin_headers, investor["id"], "appel", TODAY)
    reopened = await client.patch(
        f"{TASKS}/{first.id}", json={"status": "a_faire"}, headers=admin_headers
    )
    assert reopened.status_code == 409, reopened.text
    assert error_of(reopened)["code"] == "follow_up_already_open"
    assert [t.status for t in await rule_tasks(investor["id"])] == ["terminee", "a_faire"]


@pytest.mark.committing
async def test_concurrent_interactions_never_pile_up_tasks(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(client, admin_headers)
    responses = await asyncio.gather(
        *(
            client.post(
                f"{INTERACTIONS}/investor/{investor['id']}",
                json={"type": "appel", "date": TODAY.isoformat()},
                headers=admin_headers,
            )
            for _ in range(8)
        )
    )
    assert [response.status_code for response in responses] == [201] * 8
    tasks = await rule_tasks(investor["id"])
    assert len(tasks) == 1
    assert await scalar("SELECT count(*) FROM interactions") == 8
    # Every request but the first moved it (to its own interaction): one creation, then seven
    # updates in the audit trail.
    actions = await fetch(
        "SELECT action FROM audit_log WHERE entity = 'task' AND entity_id = :id", id=tasks[0].id
    )
    assert sorted(row.action for row in actions) == ["create"] + ["update"] * 7


# --- perdu, the transaction ------------------------------------------------------------------


async def test_a_lost_investor_s_open_follow_ups_are_cancelled(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(client, admin_headers, pipeline_stage="prospect_chaud")
    await log(client, admin_headers, investor["id"], "reunion", TODAY)
    await log(client, admin_headers, investor["id"], "email", TODAY)
    manual = await client.post(
        TASKS,
        json={
            "title": "Envoyer la plaquette",
            "due_date": "2026-11-30",
            "investor_id": investor["id"],
        },
        headers=admin_headers,
    )
    email_task = (await rule_tasks(investor["id"]))[2]
    await client.post(f"{TASKS}/{email_task.id}/complete", headers=admin_headers)
    await to_stage(client, admin_headers, investor["id"], "perdu")
    assert [t.status for t in await rule_tasks(investor["id"])] == [
        "annulee",
        "annulee",
        "terminee",
    ]
    kept = await client.get(f"{TASKS}/{manual.json()['id']}", headers=admin_headers)
    assert kept.json()["status"] == "a_faire"


async def test_a_rolled_back_stage_change_leaves_no_task(clock: FakeClock) -> None:
    investor_id = await scalar("INSERT INTO investors (name) VALUES ('Acme') RETURNING id")
    async with db.sessionmaker() as session:
        caller = await UserService(session).get_caller(await first_admin_id())
        assert caller is not None
        update = InvestorUpdate.model_validate({"pipeline_stage": "client"})
        await InvestorService(session).update_investor(investor_id, update, caller=caller)
        created = await session.execute(COUNT_TASKS, {"i": investor_id})
        assert created.scalar_one() == 1
        await session.rollback()
    assert await rule_tasks(investor_id) == []
    assert await scalar("SELECT pipeline_stage FROM investors WHERE id = :i", i=investor_id) == (
        "prospect_froid"
    )


COUNT_TASKS = text("SELECT count(*) FROM tasks WHERE investor_id = :i")


# --- the trash, the anonymisation ------------------------------------------------------------


async def test_an_investor_s_tasks_go_to_the_trash_and_come_back_with_it(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(client, admin_headers, pipeline_stage="client")
    manual = await client.post(
        TASKS,
        json={"title": "Signer", "due_date": "2026-11-30", "investor_id": investor["id"]},
        headers=admin_headers,
    )
    task_ids = {manual.json()["id"], (await rule_tasks(investor["id"]))[0].id}
    deleted = await client.delete(f"{INVESTORS}/{investor['id']}", headers=admin_headers)
    assert deleted.status_code == 204
    entries = await fetch(
        "SELECT DISTINCT t.trash_entry_id, e.entity_id FROM tasks t "
        "JOIN trash_entries e ON e.id = t.trash_entry_id WHERE t.investor_id = :i",
        i=investor["id"],
    )
    assert [row.entity_id for row in entries] == [investor["id"]]
    listed = await client.get(f"{TASKS}?investor_id={investor['id']}", headers=admin_headers)
    assert listed.json()["total"] == 0
    # A task cannot come back without its investor.
    alone = await client.post(
        f"/api/v1/trash/task/{manual.json()['id']}/restore", headers=admin_headers
    )
    assert alone.status_code == 409
    assert error_of(alone)["code"] == "parent_in_trash"
    restored = await client.post(
        f"/api/v1/trash/investor/{investor['id']}/restore", headers=admin_headers
    )
    assert restored.status_code == 200
    back = await client.get(f"{TASKS}?investor_id={investor['id']}", headers=admin_headers)
    assert {item["id"] for item in back.json()["items"]} == task_ids
    # Purged with it.
    await client.delete(f"{INVESTORS}/{investor['id']}", headers=admin_headers)
    purged = await client.delete(f"/api/v1/trash/investor/{investor['id']}", headers=admin_headers)
    assert purged.status_code == 204
    assert await scalar("SELECT count(*) FROM tasks") == 0
    assert await scalar("SELECT count(*) FROM trash_entries") == 0


async def test_anonymising_an_investor_clears_its_tasks(
    client: AsyncClient, admin_headers: Headers, clock: FakeClock
) -> None:
    investor = await make_investor(
        client, admin_headers, name="Jeanne Martin", pipeline_stage="client"
    )
    manual = await client.post(
        TASKS,
        json={
            "title": "Appeler Jeanne Martin",
            "description": "06 12 34 56 78",
            "due_date": "2026-11-30",
            "investor_id": investor["id"],
        },
        headers=admin_headers,
    )
    assert manual.status_code == 201
    other = await client.post(
        TASKS, json={"title": "Rapport mensuel", "due_date": "2026-11-30"}, headers=admin_headers
    )
    response = await client.post(
        "/api/v1/gdpr/anonymize",
        json={"entity": "investor", "id": investor["id"]},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    rows = await fetch(
        "SELECT title, description FROM tasks WHERE investor_id = :i", i=investor["id"]
    )
    assert [tuple(row) for row in rows] == [("Anonymisé", None), ("Anonymisé", None)]
    audit = await fetch(
        "SELECT changes FROM audit_log "
        "WHERE entity = 'task' AND entity_id = :id AND action = 'create'",
        id=manual.json()["id"],
    )
    assert audit[0].changes["title"] == "anonymized"
    assert audit[0].changes["description"] == "anonymized"
    kept = await client.get(f"{TASKS}/{other.json()['id']}", headers=admin_headers)
    assert kept.json()["title"] == "Rapport mensuel"
