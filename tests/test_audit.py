"""The audit trail: one entry per write through the API, in the write's transaction, with the
changed values and never a secret; the /audit list and an investor's history; the table stays
append-only for the application role; retention purge and anonymisation scrub."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import pool, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine

from core.config import settings
from core.schedules import schedules
from models.investor import PIPELINE_ORDER
from schemas.audit import AUDIT_ENTITIES, AUDIT_TOTAL_CAP
from schemas.contact import ContactCreate
from services.audit import AuditService
from services.audit_recorder import record_failed_logins
from services.contacts import ContactService
from tests.conftest import connection_as, error_of
from tests.factories import (
    CONTACTS,
    INVESTORS,
    USER_PASSWORD,
    bearer,
    create_user,
    execute,
    fetch,
    first_admin_id,
    insert_investor,
    make_contact,
    make_investor,
    scalar,
)

AUDIT = "/api/v1/audit"
INTERACTIONS = "/api/v1/interactions"
KPIS = "/api/v1/kpis"
USERS = "/api/v1/users"
NEW_PASSWORD = "Tulipe-Horizon-Quartz-92"


async def last_entry_id() -> int:
    return int(await scalar("SELECT coalesce(max(id), 0) FROM audit_log"))


async def entries_since(since: int) -> list[dict[str, Any]]:
    rows = await fetch("SELECT * FROM audit_log WHERE id > :since ORDER BY id", since=since)
    return [dict(row._mapping) for row in rows]


class Recorded:
    """What one request added to the trail."""

    def __init__(self) -> None:
        self.since = 0

    async def __aenter__(self) -> "Recorded":
        self.since = await last_entry_id()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.entries = await entries_since(self.since)

    @property
    def one(self) -> dict[str, Any]:
        assert len(self.entries) == 1, self.entries
        return self.entries[0]


def assert_entry(
    entry: dict[str, Any],
    *,
    action: str,
    entity: str,
    entity_id: int,
    investor_id: int | None,
    actor_id: int,
) -> None:
    assert (entry["action"], entry["entity"], entry["entity_id"]) == (action, entity, entity_id)
    assert entry["investor_id"] == investor_id
    assert (entry["actor_kind"], entry["actor_id"]) == ("user", actor_id)
    assert entry["client_address"] == "127.0.0.1"
    assert entry["request_id"]
    assert entry["count"] == 1


# Writes through the API, entity by entity.


async def test_investor_writes_each_record_one_entry(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = await first_admin_id()
    async with Recorded() as created:
        response = await client.post(
            INVESTORS,
            json={"name": "Acme Capital", "email": "contact@acme.test"},
            headers={**admin_headers, "X-Request-ID": "audit-create-1"},
        )
    assert response.status_code == 201
    investor = response.json()
    iid = investor["id"]
    entry = created.one
    assert_entry(
        entry, action="create", entity="investor", entity_id=iid, investor_id=iid, actor_id=admin
    )
    assert entry["request_id"] == "audit-create-1"
    changes = entry["changes"]
    assert changes["name"] == "Acme Capital"
    assert changes["email"] == "contact@acme.test"
    assert changes["pipeline_stage"] == PIPELINE_ORDER[0].value
    assert changes["owner_id"] == admin
    # Server-kept timestamps and generated columns stay out.
    assert not {"created_at", "updated_at", "pipeline_rank", "search_text"} & set(changes)

    # Only the fields whose value changed: the name sent again is not one.
    async with Recorded() as updated:
        response = await client.patch(
            f"{INVESTORS}/{iid}",
            json={"name": "Acme Capital", "notes": "Met in Paris"},
            headers=admin_headers,
        )
    assert response.status_code == 200
    assert_entry(
        updated.one, action="update", entity="investor", entity_id=iid, investor_id=iid,
        actor_id=admin,
    )  # fmt: skip
    assert updated.one["changes"] == {"notes": [None, "Met in Paris"]}

    async with Recorded() as replaced:
        response = await client.put(
            f"{INVESTORS}/{iid}", json={"company": "Acme SA"}, headers=admin_headers
        )
    assert response.status_code == 200
    assert replaced.one["changes"] == {"company": [None, "Acme SA"]}

    async with Recorded() as moved:
        response = await client.put(f"{INVESTORS}/{iid}/move-to-next-stage", headers=admin_headers)
    assert response.status_code == 200
    assert_entry(
        moved.one, action="move_stage", entity="investor", entity_id=iid, investor_id=iid,
        actor_id=admin,
    )  # fmt: skip
    assert moved.one["changes"] == {
        "pipeline_stage": [PIPELINE_ORDER[0].value, PIPELINE_ORDER[1].value]
    }

    async with Recorded() as deleted:
        response = await client.delete(f"{INVESTORS}/{iid}", headers=admin_headers)
    assert response.status_code == 204
    assert_entry(
        deleted.one, action="delete", entity="investor", entity_id=iid, investor_id=iid,
        actor_id=admin,
    )  # fmt: skip
    last = deleted.one["changes"]
    assert (last["name"], last["notes"], last["company"]) == (
        "Acme Capital",
        "Met in Paris",
        "Acme SA",
    )
    assert last["pipeline_stage"] == PIPELINE_ORDER[1].value


async def test_contact_writes_each_record_one_entry(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = await first_admin_id()
    iid = (await make_investor(client, admin_headers))["id"]
    async with Recorded() as created:
        contact = await make_contact(client, admin_headers, iid, email="jeanne@acme.test")
    cid = contact["id"]
    expected = {"entity": "contact", "entity_id": cid, "investor_id": iid, "actor_id": admin}
    assert_entry(created.one, action="create", **expected)
    assert created.one["changes"]["email"] == "jeanne@acme.test"
    assert created.one["changes"]["investor_id"] == iid

    async with Recorded() as patched:
        response = await client.patch(
            f"{CONTACTS}/{cid}", json={"phone": "01 23 45 67 89"}, headers=admin_headers
        )
    assert response.status_code == 200
    assert_entry(patched.one, action="update", **expected)
    assert patched.one["changes"] == {"phone": [None, "01 23 45 67 89"]}

    async with Recorded() as put:
        response = await client.put(
            f"{CONTACTS}/{cid}", json={"name": "Jeanne Dupont"}, headers=admin_headers
        )
    assert response.status_code == 200
    assert put.one["changes"] == {"name": ["Jeanne Martin", "Jeanne Dupont"]}

    async with Recorded() as deleted:
        response = await client.delete(f"{CONTACTS}/{cid}", headers=admin_headers)
    assert response.status_code == 204
    assert_entry(deleted.one, action="delete", **expected)
    assert deleted.one["changes"]["name"] == "Jeanne Dupont"


async def test_interaction_writes_each_record_one_entry(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = await first_admin_id()
    iid = (await make_investor(client, admin_headers))["id"]
    # Long past: no follow-up task (and its own entry) comes with it (docs/taches-relances.md).
    async with Recorded() as created:
        response = await client.post(
            f"{INTERACTIONS}/investor/{iid}",
            json={"type": "appel", "date": "2024-11-02", "subject": "Premier appel"},
            headers=admin_headers,
        )
    assert response.status_code == 201
    xid = response.json()["id"]
    expected = {"entity": "interaction", "entity_id": xid, "investor_id": iid, "actor_id": admin}
    assert_entry(created.one, action="create", **expected)
    assert created.one["changes"]["date"] == "2024-11-02"
    assert created.one["changes"]["created_by"] == admin

    async with Recorded() as updated:
        response = await client.put(
            f"{INTERACTIONS}/{xid}",
            json={"subject": "Premier appel", "duration_minutes": 30},
            headers=admin_headers,
        )
    assert response.status_code == 200
    assert_entry(updated.one, action="update", **expected)
    assert updated.one["changes"] == {"duration_minutes": [None, 30]}

    async with Recorded() as deleted:
        response = await client.delete(f"{INTERACTIONS}/{xid}", headers=admin_headers)
    assert response.status_code == 204
    assert_entry(deleted.one, action="delete", **expected)
    assert deleted.one["changes"]["duration_minutes"] == 30


async def test_kpi_writes_each_record_one_entry(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = await first_admin_id()
    iid = (await make_investor(client, admin_headers))["id"]
    month = {"year": 2026, "month": 10}
    async with Recorded() as created:
        response = await client.post(
            f"{KPIS}/investor/{iid}", json={**month, "rdv_count": 2}, headers=admin_headers
        )
    assert response.status_code == 201
    kid = response.json()["id"]
    expected = {"entity": "kpi", "entity_id": kid, "investor_id": iid, "actor_id": admin}
    assert_entry(created.one, action="create", **expected)
    assert created.one["changes"]["rdv_count"] == 2
    assert created.one["changes"]["revenue"] == "0.00"

    # The upsert of an existing month: an update, with the metric that changed only.
    async with Recorded() as upserted:
        response = await client.post(
            f"{KPIS}/investor/{iid}",
            json={**month, "rdv_count": 2, "revenue": 1500.5},
            headers=admin_headers,
        )
    assert response.status_code == 200
    assert_entry(upserted.one, action="update", **expected)
    assert upserted.one["changes"] == {"revenue": ["0.00", "1500.50"]}

    async with Recorded() as updated:
        response = await client.put(f"{KPIS}/{kid}", json={"pitchs": 3}, headers=admin_headers)
    assert response.status_code == 200
    assert_entry(updated.one, action="update", **expected)
    assert updated.one["changes"] == {"pitchs": [0, 3]}

    async with Recorded() as deleted:
        response = await client.delete(f"{KPIS}/{kid}", headers=admin_headers)
    assert response.status_code == 204
    assert_entry(deleted.one, action="delete", **expected)
    assert deleted.one["changes"]["pitchs"] == 3


async def test_user_writes_each_record_one_entry_and_never_a_secret(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = await first_admin_id()
    async with Recorded() as created:
        response = await client.post(
            USERS,
            json={"email": "new.hire@crm.test", "full_name": "New Hire", "password": NEW_PASSWORD},
            headers=admin_headers,
        )
    assert response.status_code == 201
    uid = response.json()["id"]
    expected = {"entity": "user", "entity_id": uid, "investor_id": None, "actor_id": admin}
    assert_entry(created.one, action="create", **expected)
    assert created.one["changes"]["email"] == "new.hire@crm.test"
    assert created.one["changes"]["hashed_password"] == "***"
    assert created.one["changes"]["security_stamp"] == "***"

    async with Recorded() as renamed:
        response = await client.put(
            f"{USERS}/{uid}", json={"full_name": "Newer Hire"}, headers=admin_headers
        )
    assert response.status_code == 200
    assert_entry(renamed.one, action="update", **expected)
    assert renamed.one["changes"] == {"full_name": ["New Hire", "Newer Hire"]}

    async with Recorded() as promoted:
        response = await client.put(
            f"{USERS}/{uid}", json={"role": "manager"}, headers=admin_headers
        )
    assert response.status_code == 200
    assert_entry(promoted.one, action="role_changed", **expected)
    # A new role ends every session: the stamp changed too, shown but never written out.
    assert promoted.one["changes"] == {
        "role": ["user", "manager"],
        "security_stamp": ["***", "***"],
    }

    async with Recorded() as reset:
        response = await client.put(
            f"{USERS}/{uid}", json={"password": "Another-Strong-Pass-77"}, headers=admin_headers
        )
    assert response.status_code == 200
    assert_entry(reset.one, action="password_changed", **expected)
    assert reset.one["changes"] == {
        "hashed_password": ["***", "***"],
        "security_stamp": ["***", "***"],
    }

    async with Recorded() as deleted:
        response = await client.delete(f"{USERS}/{uid}", headers=admin_headers)
    assert response.status_code == 204
    assert_entry(deleted.one, action="delete", **expected)
    assert deleted.one["changes"]["hashed_password"] == "***"

    hashes = [row.hashed_password for row in await fetch("SELECT hashed_password FROM users")]
    trail = await scalar("SELECT string_agg(changes::text, ' ') FROM audit_log")
    assert not any(value in trail for value in hashes)
    assert "argon2" not in trail


async def test_a_write_with_no_change_records_nothing(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    iid = (await make_investor(client, admin_headers, notes="Same"))["id"]
    async with Recorded() as unchanged:
        response = await client.patch(
            f"{INVESTORS}/{iid}", json={"notes": "Same"}, headers=admin_headers
        )
    assert response.status_code == 200
    assert unchanged.entries == []


async def test_a_refused_write_records_nothing(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, email="taken@acme.test")
    async with Recorded() as refused:
        response = await client.post(
            INVESTORS, json={"name": "Other", "email": "taken@acme.test"}, headers=admin_headers
        )
    assert response.status_code == 409
    assert refused.entries == []


async def test_the_entry_goes_with_a_rolled_back_transaction(session: AsyncSession) -> None:
    investor_id = await insert_investor()
    since = await last_entry_id()
    contact = await ContactService(session).create_for_investor(
        investor_id, ContactCreate(name="Paul Durand")
    )
    in_transaction = await session.scalar(
        text("SELECT count(*) FROM audit_log WHERE entity = 'contact' AND entity_id = :id"),
        {"id": contact.id},
    )
    assert in_transaction == 1
    await session.rollback()
    assert await entries_since(since) == []


async def test_a_write_outside_any_request_is_the_system_s(session: AsyncSession) -> None:
    investor_id = await insert_investor()
    since = await last_entry_id()
    contact = await ContactService(session).create_for_investor(
        investor_id, ContactCreate(name="Paul Durand")
    )
    await session.commit()
    (entry,) = await entries_since(since)
    assert (entry["actor_kind"], entry["actor_id"], entry["client_address"]) == (
        "system",
        None,
        None,
    )
    assert (entry["entity"], entry["entity_id"]) == ("contact", contact.id)


async def test_the_actor_of_one_request_is_not_the_next_one_s(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    """An in-process client serves each request in the test's own task: what the last request
    declared must not leak into a write made after it."""
    await make_investor(client, admin_headers)
    await test_a_write_outside_any_request_is_the_system_s(session)


async def test_auditing_switched_off_records_nothing(
    client: AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "audit_enabled", False)
    async with Recorded() as off:
        iid = (await make_investor(client, admin_headers))["id"]
        response = await client.post(
            f"{KPIS}/investor/{iid}", json={"year": 2026, "month": 1}, headers=admin_headers
        )
        assert response.status_code == 201
    assert off.entries == []


# GET /audit


async def _arrange_trail(client: AsyncClient, headers: dict[str, str]) -> dict[str, int]:
    """Five entries: investor created, updated, moved; a contact created; another investor."""
    iid = (await make_investor(client, headers))["id"]
    await client.patch(f"{INVESTORS}/{iid}", json={"notes": "x"}, headers=headers)
    await client.put(f"{INVESTORS}/{iid}/move-to-next-stage", headers=headers)
    cid = (await make_contact(client, headers, iid))["id"]
    other = (await make_investor(client, headers, name="Other Fund"))["id"]
    return {"investor": iid, "contact": cid, "other": other}


async def test_the_list_is_newest_first_and_filtered(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    ids = await _arrange_trail(client, admin_headers)
    response = await client.get(AUDIT, headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 5
    assert "next_cursor" not in body
    entry_ids = [item["id"] for item in body["items"]]
    assert entry_ids == sorted(entry_ids, reverse=True)
    assert [(item["action"], item["entity"]) for item in body["items"]] == [
        ("create", "investor"),
        ("create", "contact"),
        ("move_stage", "investor"),
        ("update", "investor"),
        ("create", "investor"),
    ]

    async def listed(**params: Any) -> list[tuple[str, str, int]]:
        response = await client.get(AUDIT, params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        return [(item["action"], item["entity"], item["entity_id"]) for item in items]

    iid = ids["investor"]
    assert await listed(entity="contact") == [("create", "contact", ids["contact"])]
    assert await listed(entity="investor", entity_id=iid) == [
        ("move_stage", "investor", iid),
        ("update", "investor", iid),
        ("create", "investor", iid),
    ]
    assert await listed(action="update") == [("update", "investor", iid)]
    assert len(await listed(actor_id=await first_admin_id())) == 5
    assert await listed(actor_id=2_000_000_000) == []
    first_at = await scalar("SELECT min(at) FROM audit_log")
    assert len(await listed(**{"from": first_at.isoformat(), "to": first_at.isoformat()})) == 5
    assert await listed(**{"to": "2000-01-01T00:00:00Z"}) == []


async def test_period_and_entity_errors(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await client.get(
        AUDIT,
        params={"from": "2026-02-01T00:00:00+01:00", "to": "2026-01-31T00:00:00Z"},
        headers=admin_headers,
    )
    assert response.status_code == 422
    body = error_of(response)
    assert body["code"] == "invalid_period"
    assert body["detail"][0]["loc"] == ["query", "from"]

    response = await client.get(AUDIT, params={"entity": "investors"}, headers=admin_headers)
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert all(f"'{name}'" in message for name in AUDIT_ENTITIES), message

    response = await client.get(
        AUDIT, params={"from": "2026-01-01T00:00:00"}, headers=admin_headers
    )
    assert response.status_code == 422  # a moment without its offset is ambiguous


async def test_the_cursor_walks_every_page_once(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await _arrange_trail(client, admin_headers)
    every = [
        item["id"] for item in (await client.get(AUDIT, headers=admin_headers)).json()["items"]
    ]
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        body = (await client.get(AUDIT, params=params, headers=admin_headers)).json()
        assert body["total"] == 5
        seen += [item["id"] for item in body["items"]]
        if "next_cursor" not in body:
            break
        params = {"limit": 2, "cursor": body["next_cursor"]}
    assert seen == every

    for bad in ("eyJpZCI6MH0", "eyJpZCI6IjEifQ", "not-a-cursor"):
        response = await client.get(AUDIT, params={"cursor": bad}, headers=admin_headers)
        assert response.status_code == 422, bad
    cursor = (await client.get(AUDIT, params={"limit": 1}, headers=admin_headers)).json()
    response = await client.get(
        AUDIT, params={"cursor": cursor["next_cursor"], "skip": 1}, headers=admin_headers
    )
    assert response.status_code == 422


async def test_the_total_stops_at_the_cap(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await execute(
        "INSERT INTO audit_log (actor_kind, action, entity, entity_id) "
        "SELECT 'system', 'update', 'kpi', n FROM generate_series(1, :n) AS n",
        n=AUDIT_TOTAL_CAP + 5,
    )
    body = (await client.get(AUDIT, params={"limit": 3}, headers=admin_headers)).json()
    assert body["total"] == AUDIT_TOTAL_CAP
    assert len(body["items"]) == 3
    assert body["items"][0]["entity_id"] == AUDIT_TOTAL_CAP + 5
    small = (await client.get(AUDIT, params={"entity_id": 7}, headers=admin_headers)).json()
    assert small["total"] == 1
    openapi = (await client.get("/openapi.json")).json()
    description = openapi["paths"][AUDIT]["get"]["description"]
    assert f"{AUDIT_TOTAL_CAP:,} or more" in description


async def test_a_manager_reads_the_trail_a_user_may_not(client: AsyncClient) -> None:
    manager = await bearer(await create_user("manager@crm.test", role="manager"))
    assert (await client.get(AUDIT, headers=manager)).status_code == 200
    user = await bearer(await create_user("user@crm.test", role="user"))
    response = await client.get(AUDIT, headers=user)
    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"


# GET /investors/{id}/history


async def test_an_investor_s_history_gathers_its_contacts_interactions_and_kpis(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    iid = (await make_investor(client, admin_headers))["id"]
    other = (await make_investor(client, admin_headers, name="Other Fund"))["id"]
    cid = (await make_contact(client, admin_headers, iid))["id"]
    await make_contact(client, admin_headers, other)
    interaction = await client.post(
        f"{INTERACTIONS}/investor/{iid}",
        json={"type": "appel", "date": "2024-11-02"},
        headers=admin_headers,
    )
    kpi = await client.post(
        f"{KPIS}/investor/{iid}", json={"year": 2026, "month": 3}, headers=admin_headers
    )
    await client.patch(f"{CONTACTS}/{cid}", json={"title": "CFO"}, headers=admin_headers)

    viewer = await bearer(await create_user("viewer@crm.test", role="viewer"))
    response = await client.get(f"{INVESTORS}/{iid}/history", headers=viewer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(item["action"], item["entity"], item["entity_id"]) for item in body["items"]] == [
        ("update", "contact", cid),
        ("create", "kpi", kpi.json()["id"]),
        ("create", "interaction", interaction.json()["id"]),
        ("create", "contact", cid),
        ("create", "investor", iid),
    ]
    assert body["total"] == 5
    assert {item["investor_id"] for item in body["items"]} == {iid}

    first = (
        await client.get(f"{INVESTORS}/{iid}/history", params={"limit": 3}, headers=viewer)
    ).json()
    rest = (
        await client.get(
            f"{INVESTORS}/{iid}/history", params={"cursor": first["next_cursor"]}, headers=viewer
        )
    ).json()
    assert [item["id"] for item in first["items"] + rest["items"]] == [
        item["id"] for item in body["items"]
    ]

    missing = await client.get(f"{INVESTORS}/2000000000/history", headers=viewer)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"


# Append-only, purge and scrub


@asynccontextmanager
async def app_role_connection(url: str) -> AsyncIterator[AsyncConnection]:
    """A connection of the application role's own, rolled back at the end."""
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            yield conn
            await conn.rollback()
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET changes = '{}' WHERE id = :id",
        "DELETE FROM audit_log WHERE id = :id",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_log_append_only ON audit_log",
    ],
)
async def test_the_application_role_can_only_insert_and_read(
    database_url: str, statement: str
) -> None:
    async with app_role_connection(database_url) as conn:
        entry_id = await conn.scalar(
            text(
                "INSERT INTO audit_log (actor_kind, action, entity, entity_id) "
                "VALUES ('system', 'update', 'investor', 1) RETURNING id"
            )
        )
        assert (
            await conn.scalar(
                text("SELECT count(*) FROM audit_log WHERE id = :id"), {"id": entry_id}
            )
            == 1
        )
        with pytest.raises(DBAPIError) as refused:
            await conn.execute(text(statement), {"id": entry_id})
        assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value)


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET count = 2", "DELETE FROM audit_log", "TRUNCATE audit_log"],
)
async def test_even_the_owner_is_refused_by_the_trigger(statement: str) -> None:
    async with connection_as("owner") as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_log (actor_kind, action, entity, entity_id) "
                "VALUES ('system', 'update', 'investor', 1)"
            )
        )
        with pytest.raises(DBAPIError, match="append-only"):
            await conn.execute(text(statement))
        await conn.rollback()


async def test_the_purge_through_the_app_role_keeps_the_retention_period(
    session: AsyncSession,
) -> None:
    await execute(
        "INSERT INTO audit_log (at, actor_kind, action, entity, entity_id) VALUES "
        "(now() - interval '3651 days', 'system', 'update', 'investor', 1), "
        "(now() - interval '3649 days', 'system', 'update', 'investor', 2), "
        "(now(), 'system', 'update', 'investor', 3)"
    )
    removed = await AuditService(session).purge(3650)
    assert removed == 1
    rows = await session.execute(
        text("SELECT action, entity, entity_id, count, changes FROM audit_log ORDER BY id")
    )
    assert [tuple(row) for row in rows] == [
        ("update", "investor", 2, 1, None),
        ("update", "investor", 3, 1, None),
        ("purge", "audit", None, 1, {"retention_days": 3650}),
    ]
    # Nothing older than a year may go, whoever asks.
    with pytest.raises(DBAPIError, match="at least 365 days"):
        await AuditService(session).purge(30)


def test_the_purge_runs_every_night() -> None:
    import worker.tasks  # noqa: F401  (registers the schedules)

    (purge,) = [schedule for schedule in schedules if schedule.job_type == "audit.purge"]
    assert purge.cron == "45 3 * * *"


async def test_the_scrub_anonymises_the_named_fields_of_the_named_records(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    iid = (await make_investor(client, admin_headers))["id"]
    jeanne = (await make_contact(client, admin_headers, iid, email="jeanne@acme.test"))["id"]
    paul = (await make_contact(client, admin_headers, iid, name="Paul", email="paul@acme.test"))[
        "id"
    ]
    await client.patch(
        f"{CONTACTS}/{jeanne}", json={"email": "j.martin@acme.test"}, headers=admin_headers
    )
    scrubbed = await AuditService(session).scrub("contact", [jeanne], ["email", "name"])
    assert scrubbed == 2
    rows = await session.execute(
        text(
            "SELECT entity_id, action, changes FROM audit_log WHERE entity = 'contact' ORDER BY id"
        )
    )
    (created, paul_created, updated) = [tuple(row) for row in rows]
    assert created[2]["email"] == created[2]["name"] == "anonymized"
    assert created[2]["investor_id"] == iid
    assert updated[2] == {"email": "anonymized"}
    assert paul_created[0] == paul
    assert paul_created[2]["email"] == "paul@acme.test"
    trail = await session.scalar(text("SELECT string_agg(changes::text, ' ') FROM audit_log"))
    assert "jeanne@acme.test" not in trail
    assert "j.martin@acme.test" not in trail


# Logins and password changes

LOGIN = "/api/v1/auth/login"


async def _login(client: AsyncClient, email: str, password: str) -> int:
    response = await client.post(LOGIN, json={"email": email, "password": password})
    return response.status_code


async def _fail_earlier(email: str, address: str, times: int, minutes_ago: int) -> None:
    """Failures recorded as the login route does, in one minute that is over."""
    await execute(
        "INSERT INTO login_failures (email, client_address, failed_at) "
        "SELECT :email, :address, date_trunc('minute', now()) - make_interval(mins => :ago) "
        "+ make_interval(secs => n) FROM generate_series(1, :times) AS n",
        email=email,
        address=address,
        ago=minutes_ago,
        times=times,
    )


async def test_a_login_is_recorded(client: AsyncClient) -> None:
    user_id = await create_user("jeanne@crm.test")
    async with Recorded() as login:
        assert await _login(client, "Jeanne@crm.test", USER_PASSWORD) == 200
    assert_entry(
        login.one, action="login", entity="user", entity_id=user_id, investor_id=None,
        actor_id=user_id,
    )  # fmt: skip
    assert login.one["changes"] is None


async def test_failed_logins_are_one_entry_per_account_address_and_minute(
    client: AsyncClient, session: AsyncSession
) -> None:
    user_id = await create_user("jeanne@crm.test")
    await _fail_earlier("jeanne@crm.test", "127.0.0.1", times=2, minutes_ago=5)
    await _fail_earlier("jeanne@crm.test", "203.0.113.9", times=1, minutes_ago=5)
    await _fail_earlier("jeanne@crm.test", "127.0.0.1", times=1, minutes_ago=3)
    await _fail_earlier("nobody@crm.test", "127.0.0.1", times=2, minutes_ago=5)

    # The next attempt (failed too) writes the minutes that are over; its own waits.
    async with Recorded() as attempt:
        assert await _login(client, "jeanne@crm.test", "wrong-password") == 401
    minute = await scalar("SELECT date_trunc('minute', now()) - interval '5 minutes'")
    counted = sorted((e["client_address"], e["count"], e["at"]) for e in attempt.entries)
    assert counted == [
        ("127.0.0.1", 1, minute + (await scalar("SELECT interval '2 minutes'"))),
        ("127.0.0.1", 2, minute),
        ("203.0.113.9", 1, minute),
    ]
    for entry in attempt.entries:
        assert (entry["action"], entry["entity"], entry["entity_id"]) == (
            "login_failed",
            "user",
            user_id,
        )
        assert entry["actor_id"] is None

    # Written once: another attempt, or the sweep, inserts nothing for those minutes again.
    async with Recorded() as again:
        assert await _login(client, "jeanne@crm.test", "wrong-password") == 401
        await record_failed_logins(session)
    assert again.entries == []

    # The unknown account's failures never reach the trail, not even its email.
    assert await scalar("SELECT count(*) FROM audit_log WHERE changes::text LIKE '%nobody%'") == 0
    trail = await fetch("SELECT * FROM audit_log")
    assert "nobody@crm.test" not in repr(trail)


async def test_a_success_records_the_failures_it_forgets(client: AsyncClient) -> None:
    user_id = await create_user("jeanne@crm.test")
    async with Recorded() as attempts:
        assert await _login(client, "jeanne@crm.test", "wrong-password") == 401
        assert await _login(client, "jeanne@crm.test", "wrong-password") == 401
        assert await _login(client, "jeanne@crm.test", USER_PASSWORD) == 200
    failed, login = attempts.entries
    assert (failed["action"], failed["entity_id"], failed["count"]) == ("login_failed", user_id, 2)
    assert failed["client_address"] == "127.0.0.1"
    assert login["action"] == "login"


async def test_the_sweep_records_accounts_no_later_attempt_came_for(
    session: AsyncSession,
) -> None:
    user_id = await create_user("paul@crm.test")
    await _fail_earlier("paul@crm.test", "198.51.100.4", times=4, minutes_ago=2)
    since = await last_entry_id()
    await record_failed_logins(session)
    (entry,) = await entries_since(since)
    assert (entry["action"], entry["entity_id"], entry["count"]) == ("login_failed", user_id, 4)
    assert (entry["actor_kind"], entry["request_id"]) == ("user", None)
    import worker.tasks  # noqa: F401  (registers the schedules)

    assert "audit.failed_logins" in {schedule.job_type for schedule in schedules}


async def test_changing_one_s_own_password_is_recorded(client: AsyncClient) -> None:
    user_id = await create_user("jeanne@crm.test")
    async with Recorded() as changed:
        response = await client.put(
            "/api/v1/auth/me/password",
            json={"current_password": USER_PASSWORD, "new_password": NEW_PASSWORD},
            headers=await bearer(user_id),
        )
    assert response.status_code == 204
    assert_entry(
        changed.one, action="password_changed", entity="user", entity_id=user_id,
        investor_id=None, actor_id=user_id,
    )  # fmt: skip
    assert changed.one["changes"] == {
        "hashed_password": ["***", "***"],
        "security_stamp": ["***", "***"],
    }


async def test_a_restore_and_a_purge_from_the_trash_are_recorded(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    admin = await first_admin_id()
    created = await client.post(INVESTORS, json={"name": "Corbeille"}, headers=admin_headers)
    investor = created.json()["id"]
    async with Recorded() as deleted:
        await client.delete(f"{INVESTORS}/{investor}", headers=admin_headers)
    assert_entry(
        deleted.one,
        action="delete",
        entity="investor",
        entity_id=investor,
        investor_id=investor,
        actor_id=admin,
    )
    async with Recorded() as restored:
        response = await client.post(
            f"/api/v1/trash/investor/{investor}/restore", headers=admin_headers
        )
        assert response.status_code == 200, response.text
    assert_entry(
        restored.one,
        action="restore",
        entity="investor",
        entity_id=investor,
        investor_id=investor,
        actor_id=admin,
    )
    await client.delete(f"{INVESTORS}/{investor}", headers=admin_headers)
    async with Recorded() as purged:
        response = await client.delete(f"/api/v1/trash/investor/{investor}", headers=admin_headers)
        assert response.status_code == 204, response.text
    assert_entry(
        purged.one,
        action="purge",
        entity="investor",
        entity_id=investor,
        investor_id=investor,
        actor_id=admin,
    )
    # The record is gone; its history stays for the retention period.
    actions = await fetch(
        "SELECT action FROM audit_log WHERE investor_id = :id ORDER BY id", id=investor
    )
    assert [row.action for row in actions] == ["create", "delete", "restore", "delete", "purge"]
