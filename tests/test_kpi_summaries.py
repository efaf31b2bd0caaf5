"""KPI summaries on a small fixed data set whose expected values are computed by hand.

The values are chosen so that half-up rounding matters: 7.625 must become 7.63 and 1.525 must
become 1.53 (banker's rounding, or float rounding, would give 7.62 and 1.52).
"""

from typing import Any

import pytest
from httpx import AsyncClient

from tests.conftest import error_of
from tests.factories import insert_investor

API = "/api/v1/kpis"
Headers = dict[str, str]
ZERO_MONTH: dict[str, float] = {
    "rdv_count": 0,
    "pitchs": 0,
    "due_diligences": 0,
    "closings": 0,
    "revenue": 0,
    "commission_rate": 0,
}


async def record(
    client: AsyncClient,
    headers: Headers,
    investor_id: int,
    year: int,
    month: int,
    counts: tuple[int, int, int, int],
    revenue: float,
    rate: float,
) -> None:
    rdv, pitchs, due_diligences, closings = counts
    body = {
        "year": year,
        "month": month,
        "rdv_count": rdv,
        "pitchs": pitchs,
        "due_diligences": due_diligences,
        "closings": closings,
        "revenue": revenue,
        "commission_rate": rate,
    }
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=headers)
    assert response.status_code == 201, response.text


@pytest.fixture
async def data_set(client: AsyncClient, admin_headers: Headers) -> dict[str, int]:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    initech = await insert_investor("Initech")
    rows: list[tuple[int, int, int, tuple[int, int, int, int], float, float]] = [
        # March 2026, three investors.
        (acme, 2026, 3, (3, 2, 1, 0), 200.00, 2.50),
        (globex, 2026, 3, (5, 1, 0, 1), 150.00, 1.25),
        (initech, 2026, 3, (0, 4, 2, 0), 150.00, 0.50),
        # April 2026, two investors.
        (acme, 2026, 4, (4, 3, 2, 1), 1000.00, 2.50),
        (globex, 2026, 4, (1, 1, 1, 1), 3000.00, 1.25),
        # May 2026: activity but no revenue.
        (acme, 2026, 5, (2, 0, 0, 0), 0, 3.00),
        # June 2026.
        (acme, 2026, 6, (1, 0, 0, 1), 250.50, 1.00),
        # Other years, never counted in 2026.
        (acme, 2025, 12, (9, 9, 9, 9), 500.00, 5.00),
        (globex, 2025, 3, (9, 9, 9, 9), 999.00, 10.00),
        (acme, 2027, 3, (9, 9, 9, 9), 777.00, 7.00),
    ]
    for investor_id, year, month, counts, revenue, rate in rows:
        await record(client, admin_headers, investor_id, year, month, counts, revenue, rate)
    return {"acme": acme, "globex": globex, "initech": initech}


async def get(client: AsyncClient, headers: Headers, path: str) -> Any:
    response = await client.get(f"{API}/summary/{path}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


# --- monthly ----------------------------------------------------------------------------------


async def test_monthly_summary_across_investors(
    client: AsyncClient, admin_headers: Headers, data_set: dict[str, int]
) -> None:
    # Revenue 200 + 150 + 150 = 500; sum of revenue * rate = 500 + 187.5 + 75 = 762.5;
    # weighted rate 762.5 / 500 = 1.525 -> 1.53; commission 762.5 / 100 = 7.625 -> 7.63.
    assert await get(client, admin_headers, "month/2026/3") == {
        "year": 2026,
        "month": 3,
        "investor_count": 3,
        "total_rdv": 8,
        "total_pitchs": 7,
        "total_due_diligences": 3,
        "total_closings": 1,
        "total_revenue": 500,
        "average_commission_rate": 1.53,
        "total_commission": 7.63,
    }


async def test_monthly_summary_weights_the_rate_by_revenue(
    client: AsyncClient, admin_headers: Headers, data_set: dict[str, int]
) -> None:
    # 1000 @ 2.50 % and 3000 @ 1.25 %: 6250 / 4000 = 1.5625 -> 1.56 (the plain mean is 1.875);
    # commission 25 + 37.5 = 62.5.
    summary = await get(client, admin_headers, "month/2026/4")
    assert summary == {
        "year": 2026,
        "month": 4,
        "investor_count": 2,
        "total_rdv": 5,
        "total_pitchs": 4,
        "total_due_diligences": 3,
        "total_closings": 2,
        "total_revenue": 4000,
        "average_commission_rate": 1.56,
        "total_commission": 62.5,
    }
    for money in ("total_revenue", "average_commission_rate", "total_commission"):
        assert isinstance(summary[money], int | float)


async def test_monthly_summary_without_revenue_has_no_average_rate(
    client: AsyncClient, admin_headers: Headers, data_set: dict[str, int]
) -> None:
    summary = await get(client, admin_headers, "month/2026/5")
    assert summary["investor_count"] == 1
    assert summary["total_rdv"] == 2
    assert summary["total_revenue"] == 0
    assert summary["average_commission_rate"] is None
    assert summary["total_commission"] == 0


async def test_monthly_summary_of_an_empty_month_is_zeros(
    client: AsyncClient, admin_headers: Headers, data_set: dict[str, int]
) -> None:
    assert await get(client, admin_headers, "month/2026/1") == {
        "year": 2026,
        "month": 1,
        "investor_count": 0,
        "total_rdv": 0,
        "total_pitchs": 0,
        "total_due_diligences": 0,
        "total_closings": 0,
        "total_revenue": 0,
        "average_commission_rate": None,
        "total_commission": 0,
    }


@pytest.mark.parametrize("path", ["2026/13", "2026/0", "2026/-1", "1999/3", "2101/3", "x/3"])
async def test_monthly_summary_rejects_bad_periods(
    client: AsyncClient, admin_headers: Headers, path: str
) -> None:
    response = await client.get(f"{API}/summary/month/{path}", headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "path"


# --- annual -----------------------------------------------------------------------------------


async def test_annual_summary_of_one_investor(
    client: AsyncClient, admin_headers: Headers, data_set: dict[str, int]
) -> None:
    acme = data_set["acme"]
    # Revenue 200 + 1000 + 0 + 250.50 = 1450.50; sum of revenue * rate = 500 + 2500 + 0 + 250.50
    # = 3250.50; commission 32.505 -> 32.51; weighted rate 3250.50 / 1450.50 = 2.2409... -> 2.24.
    summary = await get(client, admin_headers, f"annual/{acme}/2026")
    expected_months: list[dict[str, float]] = [{"month": m, **ZERO_MONTH} for m in range(1, 13)]
    expected_months[2] = {
        "month": 3,
        "rdv_count": 3,
        "pitchs": 2,
        "due_diligences": 1,
        "closings": 0,
        "revenue": 200,
        "commission_rate": 2.5,
    }
    expected_months[3] = {
        "month": 4,
        "rdv_count": 4,
        "pitchs": 3,
        "due_diligences": 2,
        "closings": 1,
        "revenue": 1000,
        "commission_rate": 2.5,
    }
    expected_months[4] = {**ZERO_MONTH, "month": 5, "rdv_count": 2, "commission_rate": 3}
    expected_months[5] = {
        "month": 6,
        "rdv_count": 1,
        "pitchs": 0,
        "due_diligences": 0,
        "closings": 1,
        "revenue": 250.5,
        "commission_rate": 1,
    }
    assert summary == {
        "investor_id": acme,
        "year": 2026,
        "months_recorded": 4,
        "total_rdv": 10,
        "total_pitchs": 5,
        "total_due_diligences": 3,
        "total_closings": 2,
        "total_revenue": 1450.5,
        "average_commission_rate": 2.24,
        "total_commission": 32.51,
        "monthly_data": expected_months,
    }


async def test_annual_summary_of_a_year_without_rows(
    client: AsyncClient, admin_headers: Headers, data_set: dict[str, int]
) -> None:
    summary = await get(client, admin_headers, f"annual/{data_set['initech']}/2025")
    assert summary == {
        "investor_id": data_set["initech"],
        "year": 2025,
        "months_recorded": 0,
        "total_rdv": 0,
        "total_pitchs": 0,
        "total_due_diligences": 0,
        "total_closings": 0,
        "total_revenue": 0,
        "average_commission_rate": None,
        "total_commission": 0,
        "monthly_data": [{"month": m, **ZERO_MONTH} for m in range(1, 13)],
    }


async def test_annual_summary_keeps_other_years_apart(
    client: AsyncClient, admin_headers: Headers, data_set: dict[str, int]
) -> None:
    summary = await get(client, admin_headers, f"annual/{data_set['globex']}/2025")
    assert summary["months_recorded"] == 1
    assert summary["total_revenue"] == 999
    assert summary["average_commission_rate"] == 10
    assert summary["total_commission"] == 99.9
    assert summary["monthly_data"][2]["revenue"] == 999
    assert [m["month"] for m in summary["monthly_data"]] == list(range(1, 13))


@pytest.mark.parametrize("investor_id", ["424242", "99999999999999999999"])
async def test_annual_summary_of_an_unknown_investor_is_404(
    client: AsyncClient, admin_headers: Headers, investor_id: str
) -> None:
    response = await client.get(f"{API}/summary/annual/{investor_id}/2026", headers=admin_headers)
    assert response.status_code == 404
    assert error_of(response) == {"detail": "Investor not found", "code": "not_found"}


@pytest.mark.parametrize("year", ["1999", "2101", "0", "20x6"])
async def test_annual_summary_rejects_a_bad_year(
    client: AsyncClient, admin_headers: Headers, year: str
) -> None:
    investor_id = await insert_investor()
    response = await client.get(f"{API}/summary/annual/{investor_id}/{year}", headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "year"]
