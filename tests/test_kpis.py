"""Monthly KPIs: the atomic upsert (201 / 200), CRUD, lists, strict money, cascades, auth."""

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient

from main import app
from tests.conftest import error_of
from tests.factories import execute, fetch, insert_investor

API = "/api/v1/kpis"
Headers = dict[str, str]
METRICS = ("rdv_count", "pitchs", "due_diligences", "closings", "revenue", "commission_rate")


async def upsert(
    client: AsyncClient, headers: Headers, investor_id: int, expected: int = 201, **fields: Any
) -> dict[str, Any]:
    body = {"year": 2026, "month": 3, **fields}
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=headers)
    assert response.status_code == expected, response.text
    return dict(response.json())


# --- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", API),
        ("GET", f"{API}/investor/1"),
        ("POST", f"{API}/investor/1"),
        ("GET", f"{API}/1"),
        ("PUT", f"{API}/1"),
        ("DELETE", f"{API}/1"),
        ("GET", f"{API}/summary/month/2026/3"),
        ("GET", f"{API}/summary/annual/1/2026"),
    ],
)
async def test_every_route_requires_a_token(client: AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, json={"year": 2026, "month": 3})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


# --- upsert -----------------------------------------------------------------------------------


async def test_create_fills_omitted_metrics_with_zero(
    client: AsyncClient, user_headers: Headers, user_id: int
) -> None:
    investor_id = await insert_investor(owner_id=user_id)
    data = await upsert(client, user_headers, investor_id, rdv_count=4, revenue=1250.5)
    assert data["investor_id"] == investor_id
    assert (data["year"], data["month"]) == (2026, 3)
    assert data["rdv_count"] == 4
    assert data["revenue"] == 1250.5
    assert (data["pitchs"], data["due_diligences"], data["closings"]) == (0, 0, 0)
    assert data["commission_rate"] == 0
    assert data["notes"] is None
    # Money is written as JSON numbers, never strings.
    assert isinstance(data["revenue"], int | float)
    assert isinstance(data["commission_rate"], int | float)
    assert (await client.get(f"{API}/{data['id']}", headers=user_headers)).json() == data


async def test_second_post_for_the_month_updates_only_the_metrics_sent(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    created = await upsert(
        client,
        admin_headers,
        investor_id,
        rdv_count=4,
        pitchs=2,
        due_diligences=1,
        closings=1,
        revenue=1000,
        commission_rate=2.5,
        notes="Bon mois",
    )
    updated = await upsert(
        client, admin_headers, investor_id, expected=200, pitchs=3, revenue=1500.75
    )
    assert updated["id"] == created["id"]
    assert updated["pitchs"] == 3
    assert updated["revenue"] == 1500.75
    assert isinstance(updated["revenue"], float)
    for unchanged in ("rdv_count", "due_diligences", "closings", "commission_rate", "notes"):
        assert updated[unchanged] == created[unchanged]
    assert updated["updated_at"] >= created["updated_at"]
    assert updated["created_at"] == created["created_at"]
    rows = await fetch("SELECT count(*) AS n FROM kpis")
    assert rows[0].n == 1


async def test_post_without_metrics_on_an_existing_month_returns_the_row(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    created = await upsert(client, admin_headers, investor_id, closings=2, commission_rate=1.25)
    same = await upsert(client, admin_headers, investor_id, expected=200)
    assert {k: same[k] for k in ("id", *METRICS, "notes")} == {
        k: created[k] for k in ("id", *METRICS, "notes")
    }


async def test_post_can_set_and_clear_notes(client: AsyncClient, admin_headers: Headers) -> None:
    investor_id = await insert_investor()
    await upsert(client, admin_headers, investor_id, notes="À relancer")
    cleared = await upsert(client, admin_headers, investor_id, expected=200, notes=None)
    assert cleared["notes"] is None


async def test_each_month_and_investor_is_its_own_row(
    client: AsyncClient, admin_headers: Headers
) -> None:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    march = await upsert(client, admin_headers, acme, month=3)
    april = await upsert(client, admin_headers, acme, month=4)
    march_next_year = await upsert(client, admin_headers, acme, year=2027)
    globex_march = await upsert(client, admin_headers, globex, month=3)
    assert len({march["id"], april["id"], march_next_year["id"], globex_march["id"]}) == 4


async def test_limits_are_accepted(client: AsyncClient, admin_headers: Headers) -> None:
    investor_id = await insert_investor()
    data = await upsert(
        client,
        admin_headers,
        investor_id,
        year=2100,
        month=12,
        rdv_count=2**31 - 1,
        revenue=999999999999.99,
        commission_rate=100,
    )
    assert data["rdv_count"] == 2**31 - 1
    assert data["revenue"] == 999999999999.99
    assert data["commission_rate"] == 100
    rows = await fetch("SELECT revenue::text AS r FROM kpis WHERE id = :id", id=data["id"])
    assert rows[0].r == "999999999999.99"
    low = await upsert(client, admin_headers, investor_id, year=2000, month=1, revenue=0.01)
    assert low["revenue"] == 0.01


@pytest.mark.committing
async def test_concurrent_posts_for_one_month_leave_exactly_one_row(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()

    async def post(n: int) -> Any:
        body = {"year": 2026, "month": 6, "rdv_count": n}
        return await client.post(f"{API}/investor/{investor_id}", json=body, headers=admin_headers)

    responses = await asyncio.gather(*(post(n) for n in range(20)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    rows = await fetch("SELECT rdv_count FROM kpis WHERE investor_id = :id", id=investor_id)
    assert len(rows) == 1
    # The row holds the value of one of the posts (the last one committed).
    assert rows[0].rdv_count in range(20)


@pytest.mark.parametrize("investor_id", ["424242", "99999999999999999999"])
async def test_post_for_an_unknown_investor_is_404(
    client: AsyncClient, admin_headers: Headers, investor_id: str
) -> None:
    response = await client.post(
        f"{API}/investor/{investor_id}", json={"year": 2026, "month": 3}, headers=admin_headers
    )
    assert response.status_code == 404
    assert error_of(response) == {"detail": "Investor not found", "code": "not_found"}


BAD_BODIES = [
    ({"month": 13}, "month"),
    ({"month": 0}, "month"),
    ({"month": "3"}, "month"),
    ({"year": 1999}, "year"),
    ({"year": 2101}, "year"),
    ({"year": 2026.5}, "year"),
    ({"rdv_count": -1}, "rdv_count"),
    ({"pitchs": -5}, "pitchs"),
    ({"due_diligences": "2"}, "due_diligences"),
    ({"closings": 1.5}, "closings"),
    ({"closings": True}, "closings"),
    ({"rdv_count": 2**31}, "rdv_count"),
    ({"rdv_count": None}, "rdv_count"),
    ({"revenue": -0.01}, "revenue"),
    ({"revenue": 100.005}, "revenue"),
    ({"revenue": "100.00"}, "revenue"),
    ({"revenue": True}, "revenue"),
    ({"revenue": 1e12}, "revenue"),
    ({"revenue": None}, "revenue"),
    ({"commission_rate": 150}, "commission_rate"),
    ({"commission_rate": 100.01}, "commission_rate"),
    ({"commission_rate": -1}, "commission_rate"),
    ({"commission_rate": 2.555}, "commission_rate"),
    ({"commission_rate": "2.5"}, "commission_rate"),
    ({"commission_rate": None}, "commission_rate"),
    ({"notes": "x\x00y"}, "notes"),
    ({"id": 1}, "id"),
    ({"investor_id": 1}, "investor_id"),
    ({"created_at": "2026-01-01T00:00:00Z"}, "created_at"),
    ({"ca": 10}, "ca"),
]


@pytest.mark.parametrize(("change", "field"), BAD_BODIES)
async def test_post_rejects_bad_input(
    client: AsyncClient, admin_headers: Headers, change: dict[str, Any], field: str
) -> None:
    investor_id = await insert_investor()
    body = {"year": 2026, "month": 3, **change}
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert [err["loc"][-1] for err in response.json()["detail"]] == [field]
    assert await fetch("SELECT id FROM kpis") == []


@pytest.mark.parametrize("missing", ["year", "month"])
async def test_post_requires_year_and_month(
    client: AsyncClient, admin_headers: Headers, missing: str
) -> None:
    investor_id = await insert_investor()
    body = {"year": 2026, "month": 3, "rdv_count": 1}
    del body[missing]
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", missing]


# --- read, update, delete ---------------------------------------------------------------------


@pytest.mark.parametrize("kpi_id", ["424242", "99999999999999999999"])
async def test_unknown_kpi_is_404(client: AsyncClient, admin_headers: Headers, kpi_id: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(
            method, f"{API}/{kpi_id}", json={"rdv_count": 1}, headers=admin_headers
        )
        assert response.status_code == 404
        assert error_of(response) == {"detail": "KPI not found", "code": "not_found"}


async def test_update_changes_only_the_fields_sent(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    created = await upsert(
        client, admin_headers, investor_id, rdv_count=4, revenue=1000, commission_rate=2.5
    )
    response = await client.put(
        f"{API}/{created['id']}",
        json={"closings": 2, "commission_rate": 3.75, "notes": "Closing Q1"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    data = response.json()
    assert (data["closings"], data["commission_rate"], data["notes"]) == (2, 3.75, "Closing Q1")
    for unchanged in ("year", "month", "rdv_count", "pitchs", "due_diligences", "revenue"):
        assert data[unchanged] == created[unchanged]


async def test_update_can_move_the_row_to_a_free_month(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    created = await upsert(client, admin_headers, investor_id, month=3)
    response = await client.put(
        f"{API}/{created['id']}", json={"year": 2025, "month": 12}, headers=admin_headers
    )
    assert response.status_code == 200
    assert (response.json()["year"], response.json()["month"]) == (2025, 12)


async def test_update_onto_a_month_already_recorded_is_409(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    await upsert(client, admin_headers, investor_id, month=3)
    april = await upsert(client, admin_headers, investor_id, month=4, rdv_count=7)
    response = await client.put(f"{API}/{april['id']}", json={"month": 3}, headers=admin_headers)
    assert response.status_code == 409
    assert error_of(response) == {
        "detail": "This investor already has KPIs for that month",
        "code": "kpi_month_exists",
    }
    unchanged = await client.get(f"{API}/{april['id']}", headers=admin_headers)
    assert unchanged.json()["month"] == 4
    assert unchanged.json()["rdv_count"] == 7


@pytest.mark.parametrize(("change", "field"), BAD_BODIES)
async def test_update_rejects_bad_input(
    client: AsyncClient, admin_headers: Headers, change: dict[str, Any], field: str
) -> None:
    created = await upsert(client, admin_headers, await insert_investor(), revenue=10)
    response = await client.put(f"{API}/{created['id']}", json=change, headers=admin_headers)
    assert response.status_code == 422
    assert [err["loc"][-1] for err in response.json()["detail"]] == [field]
    assert (await client.get(f"{API}/{created['id']}", headers=admin_headers)).json() == created


async def test_update_rejects_null_year_and_month(
    client: AsyncClient, admin_headers: Headers
) -> None:
    created = await upsert(client, admin_headers, await insert_investor())
    for field in ("year", "month"):
        response = await client.put(
            f"{API}/{created['id']}", json={field: None}, headers=admin_headers
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", field]


async def test_delete(client: AsyncClient, admin_headers: Headers) -> None:
    created = await upsert(client, admin_headers, await insert_investor())
    response = await client.delete(f"{API}/{created['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"{API}/{created['id']}", headers=admin_headers)).status_code == 404


# --- lists ------------------------------------------------------------------------------------


async def test_list_is_ordered_by_year_month_investor_and_filtered(
    client: AsyncClient, admin_headers: Headers
) -> None:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    # Inserted out of order on purpose.
    g_2026_03 = await upsert(client, admin_headers, globex, year=2026, month=3)
    a_2026_03 = await upsert(client, admin_headers, acme, year=2026, month=3)
    a_2025_12 = await upsert(client, admin_headers, acme, year=2025, month=12)
    g_2026_01 = await upsert(client, admin_headers, globex, year=2026, month=1)

    async def ids(**params: Any) -> list[int]:
        response = await client.get(API, params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return [item["id"] for item in body["items"]]

    assert await ids() == [a_2025_12["id"], g_2026_01["id"], a_2026_03["id"], g_2026_03["id"]]
    assert await ids(investor_id=acme) == [a_2025_12["id"], a_2026_03["id"]]
    assert await ids(year=2026) == [g_2026_01["id"], a_2026_03["id"], g_2026_03["id"]]
    assert await ids(month=3) == [a_2026_03["id"], g_2026_03["id"]]
    assert await ids(year=2026, month=3, investor_id=globex) == [g_2026_03["id"]]
    assert await ids(year=2024) == []

    page = await client.get(API, params={"skip": 1, "limit": 2}, headers=admin_headers)
    assert page.status_code == 200
    assert [item["id"] for item in page.json()["items"]] == [g_2026_01["id"], a_2026_03["id"]]
    assert (page.json()["total"], page.json()["skip"], page.json()["limit"]) == (4, 1, 2)


@pytest.mark.parametrize(
    "params",
    [{"month": 13}, {"month": 0}, {"year": 1999}, {"year": 2101}, {"investor_id": "x"}],
)
async def test_list_rejects_bad_filters(
    client: AsyncClient, admin_headers: Headers, params: dict[str, Any]
) -> None:
    response = await client.get(API, params=params, headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


async def test_investor_list_by_year(client: AsyncClient, admin_headers: Headers) -> None:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    a_2026_02 = await upsert(client, admin_headers, acme, year=2026, month=2)
    a_2025_11 = await upsert(client, admin_headers, acme, year=2025, month=11)
    a_2026_01 = await upsert(client, admin_headers, acme, year=2026, month=1)
    await upsert(client, admin_headers, globex, year=2026, month=1)

    everything = await client.get(f"{API}/investor/{acme}", headers=admin_headers)
    assert everything.status_code == 200
    body = everything.json()
    assert [item["id"] for item in body["items"]] == [
        a_2025_11["id"],
        a_2026_01["id"],
        a_2026_02["id"],
    ]
    assert (body["total"], body["skip"], body["limit"]) == (3, 0, 50)

    one_year = await client.get(
        f"{API}/investor/{acme}", params={"year": 2026}, headers=admin_headers
    )
    assert [item["id"] for item in one_year.json()["items"]] == [a_2026_01["id"], a_2026_02["id"]]
    assert one_year.json()["total"] == 2

    paged = await client.get(
        f"{API}/investor/{acme}", params={"skip": 2, "limit": 1}, headers=admin_headers
    )
    assert paged.json() == {"items": [a_2026_02], "total": 3, "skip": 2, "limit": 1}


async def test_investor_list_errors(client: AsyncClient, admin_headers: Headers) -> None:
    unknown = await client.get(f"{API}/investor/424242", headers=admin_headers)
    assert unknown.status_code == 404
    assert error_of(unknown) == {"detail": "Investor not found", "code": "not_found"}
    investor_id = await insert_investor()
    for year in (1999, 2101, "abc"):
        response = await client.get(
            f"{API}/investor/{investor_id}", params={"year": year}, headers=admin_headers
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "year"]


# --- cascades and OpenAPI ---------------------------------------------------------------------


async def test_deleting_an_investor_deletes_its_kpis(
    client: AsyncClient, admin_headers: Headers
) -> None:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    gone = await upsert(client, admin_headers, acme)
    kept = await upsert(client, admin_headers, globex)

    await execute("DELETE FROM investors WHERE id = :id", id=acme)

    assert (await client.get(f"{API}/{gone['id']}", headers=admin_headers)).status_code == 404
    remaining = (await client.get(API, headers=admin_headers)).json()
    assert [item["id"] for item in remaining["items"]] == [kept["id"]]


def test_openapi_documents_both_upsert_statuses_and_money_as_numbers() -> None:
    spec = app.openapi()
    upsert_op = spec["paths"]["/api/v1/kpis/investor/{investor_id}"]["post"]
    assert {"200", "201", "401", "404", "422"} <= set(upsert_op["responses"])
    for status in ("200", "201"):
        schema = upsert_op["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/KpiRead"}
    schemas = spec["components"]["schemas"]
    assert schemas["KpiRead"]["properties"]["revenue"]["type"] == "number"
    assert schemas["KpiRead"]["properties"]["commission_rate"]["type"] == "number"
    assert schemas["KpiUpsert"]["properties"]["revenue"]["type"] == "number"
    summary = schemas["MonthlySummary"]["properties"]
    assert summary["total_revenue"]["type"] == "number"
    assert summary["total_commission"]["type"] == "number"
    assert {"type": "number"} in summary["average_commission_rate"]["anyOf"]
