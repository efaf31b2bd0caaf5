"""investor_counts, kpi_month_totals and interaction_type_counts: the trigger-kept counters always
equal a fresh GROUP BY of the live rows (those not in the trash).

Writes go through the API (creates, updates, stage moves, deletes to the trash with their
children, restores, purges now and by the nightly job, KPI upserts, months moved by PUT,
interactions logged, retyped and deleted), through multi-row SQL statements, and concurrently;
after each batch the counters, /investors/stats, the list totals and the month summaries are
compared with live computations over the base tables.
"""

import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import db
from models import ClientType, InteractionType, PipelineStage
from services.trash import TrashService
from tests.factories import INVESTORS, execute, make_investor

KPIS = "/api/v1/kpis"
INTERACTIONS = "/api/v1/interactions"
TRASH = "/api/v1/trash"
Headers = dict[str, str]
MONTHS = [(2025, 12), (2026, 1), (2026, 2)]

INVESTOR_COUNTERS = (
    "SELECT pipeline_stage, client_type, is_active, n FROM investor_counts WHERE n <> 0"
)
INVESTOR_LIVE = (
    "SELECT pipeline_stage, coalesce(client_type, ''), is_active, count(*) FROM investors "
    "WHERE deleted_at IS NULL GROUP BY 1, 2, 3"
)
KPI_COLUMNS = (
    "row_count, total_rdv, total_pitchs, total_due_diligences, total_closings, "
    "total_revenue, weighted_commission"
)
KPI_COUNTERS = f"SELECT year, month, {KPI_COLUMNS} FROM kpi_month_totals WHERE row_count <> 0"
KPI_EMPTIED = f"SELECT {KPI_COLUMNS} FROM kpi_month_totals WHERE row_count = 0"
KPI_LIVE = (
    "SELECT year, month, count(*), sum(rdv_count), sum(pitchs), sum(due_diligences), "
    "sum(closings), sum(revenue), sum(revenue * commission_rate) FROM kpis "
    "WHERE deleted_at IS NULL GROUP BY year, month"
)
# Only a type's sum over its slots means anything (see InteractionTypeCount).
INTERACTION_COUNTERS = (
    "SELECT type, sum(n) FROM interaction_type_counts GROUP BY type HAVING sum(n) <> 0"
)
INTERACTION_LIVE = "SELECT type, count(*) FROM interactions WHERE deleted_at IS NULL GROUP BY type"
MONTH_LIVE = (
    "SELECT count(DISTINCT investor_id), coalesce(sum(rdv_count), 0), coalesce(sum(pitchs), 0), "
    "coalesce(sum(due_diligences), 0), coalesce(sum(closings), 0), coalesce(sum(revenue), 0), "
    "round(sum(revenue * commission_rate) / nullif(sum(revenue), 0), 2), "
    "round(coalesce(sum(revenue * commission_rate), 0) / 100, 2) "
    "FROM kpis WHERE year = :year AND month = :month AND deleted_at IS NULL"
)


async def fetch(session: AsyncSession, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    rows = [tuple(row) for row in (await session.execute(text(sql), params)).all()]
    await session.rollback()
    return rows


def as_number(value: Decimal | None) -> float | int | None:
    # The API writes Decimals as JSON numbers.
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


async def assert_counters_exact(
    client: AsyncClient, headers: Headers, session: AsyncSession
) -> None:
    assert sorted(await fetch(session, INVESTOR_COUNTERS)) == sorted(
        await fetch(session, INVESTOR_LIVE)
    )
    assert sorted(await fetch(session, KPI_COUNTERS)) == sorted(await fetch(session, KPI_LIVE))
    assert all(not any(row) for row in await fetch(session, KPI_EMPTIED))
    assert sorted(await fetch(session, INTERACTION_COUNTERS)) == sorted(
        await fetch(session, INTERACTION_LIVE)
    )

    investors = await fetch(
        session,
        "SELECT pipeline_stage, client_type, is_active FROM investors WHERE deleted_at IS NULL",
    )
    response = await client.get(f"{INVESTORS}/stats", headers=headers)
    assert response.status_code == 200, response.text
    by_type: dict[str, int] = {kind.value: 0 for kind in ClientType}
    by_type["non_renseigne"] = 0
    for _, kind, _ in investors:
        by_type[kind or "non_renseigne"] += 1
    assert response.json() == {
        "total_count": len(investors),
        "active_count": sum(1 for *_, active in investors if active),
        "by_pipeline_stage": {
            stage.value: sum(1 for row in investors if row[0] == stage.value)
            for stage in PipelineStage
        },
        "by_client_type": by_type,
    }

    for stage, kind, active in [
        (PipelineStage.prospect_froid, None, None),
        (None, ClientType.wholesale, None),
        (None, None, False),
        (PipelineStage.client, ClientType.institutionnel, True),
    ]:
        params = {"pipeline_stage": stage, "client_type": kind, "is_active": active}
        query = {name: str(value).lower() for name, value in params.items() if value is not None}
        listed = await client.get(INVESTORS, params=query, headers=headers)
        assert listed.status_code == 200, listed.text
        expected = sum(
            1
            for row in investors
            if (stage is None or row[0] == stage)
            and (kind is None or row[1] == kind)
            and (active is None or row[2] is active)
        )
        assert listed.json()["total"] == expected

    for year, month in MONTHS:
        (live,) = await fetch(session, MONTH_LIVE, year=year, month=month)
        summary = await client.get(f"{KPIS}/summary/month/{year}/{month}", headers=headers)
        assert summary.status_code == 200, summary.text
        assert summary.json() == {
            "year": year,
            "month": month,
            "investor_count": live[0],
            "total_rdv": live[1],
            "total_pitchs": live[2],
            "total_due_diligences": live[3],
            "total_closings": live[4],
            "total_revenue": as_number(live[5]),
            "average_commission_rate": as_number(live[6]),
            "total_commission": as_number(live[7]),
        }

    interactions = await fetch(session, "SELECT type FROM interactions WHERE deleted_at IS NULL")
    for kind in [None, *InteractionType]:
        query = {} if kind is None else {"type": kind.value}
        listed = await client.get(INTERACTIONS, params=query, headers=headers)
        assert listed.status_code == 200, listed.text
        expected = sum(1 for (row_type,) in interactions if kind is None or row_type == kind)
        assert listed.json()["total"] == expected
        assert len(listed.json()["items"]) == min(expected, 50)

    kpis = await fetch(session, "SELECT year, month FROM kpis WHERE deleted_at IS NULL")
    periods: list[dict[str, int]] = [
        {},
        {"year": 2026},
        {"month": 12},
        {"year": 2026, "month": 1},
        {"year": 2024},
    ]
    for period in periods:
        listed = await client.get(KPIS, params=period, headers=headers)
        assert listed.status_code == 200, listed.text
        expected = sum(
            1
            for row_year, row_month in kpis
            if period.get("year", row_year) == row_year
            and period.get("month", row_month) == row_month
        )
        assert listed.json()["total"] == expected
        assert len(listed.json()["items"]) == min(expected, 50)


def random_metrics(rng: random.Random) -> dict[str, Any]:
    metrics = {
        "rdv_count": rng.randint(0, 9),
        "pitchs": rng.randint(0, 5),
        "due_diligences": rng.randint(0, 3),
        "closings": rng.randint(0, 2),
        "revenue": rng.choice([0, 1250.5, 99999.99, 305.25]),
        "commission_rate": rng.choice([0, 1.25, 2.5, 7.63, 100]),
    }
    # The upsert only changes the metrics sent.
    return {name: value for name, value in metrics.items() if rng.random() < 0.8}


async def random_write(
    client: AsyncClient, headers: Headers, rng: random.Random, investors: list[int]
) -> None:
    action = rng.choice(
        [
            "create",
            "update",
            "move",
            "kpi",
            "kpi_put",
            "kpi_delete",
            "interaction",
            "interaction",
            "interaction_put",
            "interaction_delete",
            "delete",
            "restore",
            "purge",
            "purge_job",
        ]
    )
    if action == "create" or not investors:
        body = await make_investor(
            client,
            headers,
            name=f"Investor {rng.randint(0, 10**6)}",
            pipeline_stage=rng.choice(list(PipelineStage)).value,
            client_type=rng.choice([None, *ClientType]),
            is_active=rng.random() < 0.7,
        )
        investors.append(body["id"])
        return
    investor_id = rng.choice(investors)
    if action == "update":
        changes: dict[str, Any] = {}
        if rng.random() < 0.6:
            changes["pipeline_stage"] = rng.choice(list(PipelineStage)).value
        if rng.random() < 0.6:
            changes["client_type"] = rng.choice([None, *ClientType])
        if rng.random() < 0.6:
            changes["is_active"] = rng.random() < 0.5
        if rng.random() < 0.3:
            changes["name"] = "Renamed"
        response = await client.patch(f"{INVESTORS}/{investor_id}", json=changes, headers=headers)
        assert response.status_code == 200, response.text
    elif action == "move":
        response = await client.put(
            f"{INVESTORS}/{investor_id}/move-to-next-stage", headers=headers
        )
        assert response.status_code in (200, 409), response.text
    elif action == "kpi":
        year, month = rng.choice(MONTHS)
        body = {"year": year, "month": month, **random_metrics(rng)}
        response = await client.post(f"{KPIS}/investor/{investor_id}", json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
    elif action in ("kpi_put", "kpi_delete"):
        page = await client.get(KPIS, params={"investor_id": investor_id}, headers=headers)
        assert page.status_code == 200, page.text
        if not page.json()["items"]:
            return
        kpi_id = rng.choice(page.json()["items"])["id"]
        if action == "kpi_delete":
            response = await client.delete(f"{KPIS}/{kpi_id}", headers=headers)
            assert response.status_code == 204, response.text
            return
        year, month = rng.choice(MONTHS)
        body = {"year": year, "month": month, **random_metrics(rng)}
        response = await client.put(f"{KPIS}/{kpi_id}", json=body, headers=headers)
        # 409 when the investor already has the target month.
        assert response.status_code in (200, 409), response.text
    elif action == "interaction":
        body = {
            "type": rng.choice(list(InteractionType)).value,
            "date": f"2026-0{rng.randint(1, 3)}-1{rng.randint(0, 9)}",
        }
        response = await client.post(
            f"{INTERACTIONS}/investor/{investor_id}", json=body, headers=headers
        )
        assert response.status_code == 201, response.text
    elif action in ("interaction_put", "interaction_delete"):
        page = await client.get(
            f"{INTERACTIONS}/investor/{investor_id}", params={"limit": 200}, headers=headers
        )
        assert page.status_code == 200, page.text
        if not page.json()["items"]:
            return
        interaction_id = rng.choice(page.json()["items"])["id"]
        if action == "interaction_delete":
            response = await client.delete(f"{INTERACTIONS}/{interaction_id}", headers=headers)
            assert response.status_code == 204, response.text
            return
        # Half the time only an unrelated field changes: its deltas must cancel out.
        changes = (
            {"type": rng.choice(list(InteractionType)).value}
            if rng.random() < 0.5
            else {"subject": "Relance"}
        )
        response = await client.put(
            f"{INTERACTIONS}/{interaction_id}", json=changes, headers=headers
        )
        assert response.status_code == 200, response.text
    elif action in ("restore", "purge"):
        page = await client.get(TRASH, params={"limit": 200}, headers=headers)
        assert page.status_code == 200, page.text
        if not page.json()["items"]:
            return
        item = rng.choice(page.json()["items"])
        url = f"{TRASH}/{item['entity']}/{item['id']}"
        if action == "purge":
            response = await client.delete(url, headers=headers)
            assert response.status_code == 204, response.text
            return
        response = await client.post(f"{url}/restore", headers=headers)
        # 409: a live row took its KPI month meanwhile, or its investor is in the trash.
        assert response.status_code in (200, 409), response.text
        if response.status_code == 200 and item["entity"] == "investor":
            investors.append(item["id"])
    elif action == "purge_job":
        # About half the trash reaches its purge time; the nightly job's purge runs.
        await execute(
            "UPDATE trash_entries SET purge_after = now() WHERE id % 2 = :r", r=rng.randint(0, 1)
        )
        async with db.sessionmaker() as session, session.begin():
            await TrashService(session).purge_expired()
    else:
        # Its KPI rows and interactions go to the trash with it: the counters must follow.
        response = await client.delete(f"{INVESTORS}/{investor_id}", headers=headers)
        assert response.status_code == 204, response.text
        investors.remove(investor_id)


async def test_counters_follow_random_api_writes(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    await assert_counters_exact(client, admin_headers, session)
    rng = random.Random(6)
    investors: list[int] = []
    for _ in range(8):
        for _ in range(25):
            await random_write(client, admin_headers, rng, investors)
        await assert_counters_exact(client, admin_headers, session)
    assert investors


async def test_a_kpi_moved_to_another_month_moves_its_totals(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    investor = await make_investor(client, admin_headers)
    body = {"year": 2025, "month": 12, "rdv_count": 3, "revenue": 1000, "commission_rate": 2.5}
    created = await client.post(
        f"{KPIS}/investor/{investor['id']}", json=body, headers=admin_headers
    )
    assert created.status_code == 201, created.text
    moved = await client.put(
        f"{KPIS}/{created.json()['id']}", json={"year": 2026, "month": 1}, headers=admin_headers
    )
    assert moved.status_code == 200, moved.text
    old = await client.get(f"{KPIS}/summary/month/2025/12", headers=admin_headers)
    new = await client.get(f"{KPIS}/summary/month/2026/1", headers=admin_headers)
    assert old.json()["investor_count"] == 0
    assert old.json()["total_revenue"] == 0
    assert new.json()["investor_count"] == 1
    assert new.json()["total_rdv"] == 3
    assert new.json()["total_commission"] == 25
    assert new.json()["average_commission_rate"] == 2.5
    await assert_counters_exact(client, admin_headers, session)


async def test_multi_row_statements_update_counters_once_per_key(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    await session.execute(
        text(
            "INSERT INTO investors (name, pipeline_stage, client_type, is_active) "
            "SELECT 'Bulk ' || i, (ARRAY['prospect_froid', 'client', 'perdu'])[i % 3 + 1], "
            "CASE WHEN i % 4 = 0 THEN NULL ELSE 'cgpi' END, i % 5 <> 0 "
            "FROM generate_series(1, 300) AS i"
        )
    )
    await session.execute(
        text(
            "INSERT INTO kpis (investor_id, year, month, rdv_count, revenue, commission_rate) "
            "SELECT id, 2026, 1 + id % 2, id % 7, id * 10.25, id % 100 FROM investors"
        )
    )
    await session.execute(
        text(
            "INSERT INTO interactions (investor_id, type, date) "
            "SELECT id, (ARRAY['appel', 'email', 'reunion', 'webinaire', 'autre'])[i % 5 + 1], "
            "DATE '2026-01-01' + i FROM investors, generate_series(0, 3) AS i"
        )
    )
    await session.commit()
    await assert_counters_exact(client, admin_headers, session)
    await session.execute(text("UPDATE investors SET is_active = NOT is_active WHERE id % 3 = 0"))
    await session.execute(text("UPDATE investors SET name = name || '!'"))
    await session.execute(
        text(
            "UPDATE kpis SET month = 2, pitchs = 4 WHERE month = 1 AND id % 5 = 0 "
            "AND NOT EXISTS (SELECT 1 FROM kpis AS k "
            "WHERE k.investor_id = kpis.investor_id AND k.month = 2)"
        )
    )
    await session.execute(text("UPDATE interactions SET type = 'reunion' WHERE id % 4 = 0"))
    await session.execute(text("UPDATE interactions SET subject = 'Relance'"))
    await session.execute(text("DELETE FROM interactions WHERE type = 'webinaire' AND id % 2 = 0"))
    await session.execute(text("DELETE FROM investors WHERE id % 7 = 0"))
    await session.commit()
    await assert_counters_exact(client, admin_headers, session)
    # Rows moved to the trash, back, and destroyed there, many per statement.
    await session.execute(text("UPDATE investors SET deleted_at = now() WHERE id % 4 = 0"))
    await session.execute(text("UPDATE kpis SET deleted_at = now() WHERE id % 3 = 0"))
    await session.execute(text("UPDATE interactions SET deleted_at = now() WHERE id % 5 < 2"))
    await session.commit()
    await assert_counters_exact(client, admin_headers, session)
    await session.execute(text("UPDATE investors SET deleted_at = NULL WHERE id % 8 = 0"))
    await session.execute(text("UPDATE kpis SET deleted_at = NULL, pitchs = 1 WHERE id % 6 = 0"))
    await session.execute(text("UPDATE interactions SET deleted_at = NULL WHERE id % 5 = 0"))
    await session.execute(text("DELETE FROM investors WHERE deleted_at IS NOT NULL AND id % 3 = 0"))
    await session.execute(text("DELETE FROM interactions WHERE deleted_at IS NOT NULL"))
    await session.commit()
    await assert_counters_exact(client, admin_headers, session)
    assert await fetch(session, "SELECT count(*) FROM investor_counts WHERE n < 0") == [(0,)]


@pytest.mark.committing
async def test_concurrent_writers_lose_no_count(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    investors = [
        (await make_investor(client, admin_headers, name=f"KPI {i}"))["id"] for i in range(20)
    ]

    async def create(i: int) -> int:
        body = {"name": f"Concurrent {i}", "pipeline_stage": "prospect_chaud"}
        response = await client.post(INVESTORS, json=body, headers=admin_headers)
        return response.status_code

    async def upsert(investor_id: int) -> int:
        body = {"year": 2026, "month": 1, "rdv_count": 2, "revenue": 100.5, "commission_rate": 3}
        response = await client.post(
            f"{KPIS}/investor/{investor_id}", json=body, headers=admin_headers
        )
        return response.status_code

    async def log_call(investor_id: int) -> int:
        # Every writer logs the same type: they all land on the one type's counters.
        body = {"type": "appel", "date": "2026-01-15"}
        response = await client.post(
            f"{INTERACTIONS}/investor/{investor_id}", json=body, headers=admin_headers
        )
        return response.status_code

    statuses = await asyncio.gather(
        *(create(i) for i in range(20)),
        *(upsert(investor_id) for investor_id in investors),
        *(log_call(investor_id) for investor_id in investors * 2),
    )
    assert statuses == [201] * 80
    await assert_counters_exact(client, admin_headers, session)
    stats = await client.get(f"{INVESTORS}/stats", headers=admin_headers)
    assert stats.json()["by_pipeline_stage"]["prospect_chaud"] == 20
    assert stats.json()["total_count"] == 40
    summary = await client.get(f"{KPIS}/summary/month/2026/1", headers=admin_headers)
    assert summary.json()["investor_count"] == 20
    assert summary.json()["total_rdv"] == 40
    assert summary.json()["total_revenue"] == 2010
    calls = await client.get(INTERACTIONS, params={"type": "appel"}, headers=admin_headers)
    assert calls.json()["total"] == 40

    async def delete(interaction_id: int) -> int:
        response = await client.delete(f"{INTERACTIONS}/{interaction_id}", headers=admin_headers)
        return response.status_code

    page = await client.get(INTERACTIONS, params={"limit": 200}, headers=admin_headers)
    # Deletes count down through whichever slot each transaction writes.
    deleted = await asyncio.gather(*(delete(item["id"]) for item in page.json()["items"][::2]))
    assert deleted == [204] * 20
    await assert_counters_exact(client, admin_headers, session)
    remaining = await client.get(INTERACTIONS, headers=admin_headers)
    assert remaining.json()["total"] == 20
