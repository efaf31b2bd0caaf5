"""Interactions: CRUD, contact ownership, newest-first listings, filters, cascades, auth."""

from typing import Any

import pytest
from httpx import AsyncClient

from tests.conftest import error_of
from tests.factories import execute, fetch, first_admin_id, insert_contact, insert_investor

API = "/api/v1/interactions"
Headers = dict[str, str]


async def create(
    client: AsyncClient, headers: Headers, investor_id: int, **fields: Any
) -> dict[str, Any]:
    body = {"type": "appel", "date": "2026-03-10", **fields}
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=headers)
    assert response.status_code == 201, response.text
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
    ],
)
async def test_every_route_requires_a_token(client: AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, json={"type": "appel", "date": "2026-01-01"})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


# --- create -----------------------------------------------------------------------------------


async def test_create_returns_the_row_owned_by_the_current_user(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    contact_id = await insert_contact(investor_id)
    body = {
        "type": "reunion",
        "date": "2026-03-10",
        "contact_id": contact_id,
        "duration_minutes": 45,
        "subject": "  Présentation du fonds  ",
        "notes": "Intéressé par la part B",
    }
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=admin_headers)
    assert response.status_code == 201
    data = response.json()
    assert data["investor_id"] == investor_id
    assert data["contact_id"] == contact_id
    assert data["type"] == "reunion"
    assert data["date"] == "2026-03-10"
    assert data["duration_minutes"] == 45
    assert data["subject"] == "Présentation du fonds"
    assert data["notes"] == "Intéressé par la part B"
    assert data["created_by"] == await first_admin_id()
    assert data["created_at"] and data["updated_at"]
    stored = await client.get(f"{API}/{data['id']}", headers=admin_headers)
    assert stored.status_code == 200
    assert stored.json() == data


async def test_create_with_only_the_required_fields(
    client: AsyncClient, user_headers: Headers, user_id: int
) -> None:
    investor_id = await insert_investor()
    data = await create(client, user_headers, investor_id, type="email", date="2024-02-29")
    assert data["date"] == "2024-02-29"
    assert data["created_by"] == user_id
    for field in ("contact_id", "duration_minutes", "subject", "notes"):
        assert data[field] is None
    assert await create(client, user_headers, investor_id, duration_minutes=0)
    assert await create(client, user_headers, investor_id, duration_minutes=1440)


@pytest.mark.parametrize("investor_id", ["999999", "99999999999999999999"])
async def test_create_for_an_unknown_investor_is_404(
    client: AsyncClient, admin_headers: Headers, investor_id: str
) -> None:
    response = await client.post(
        f"{API}/investor/{investor_id}",
        json={"type": "appel", "date": "2026-01-01"},
        headers=admin_headers,
    )
    assert response.status_code == 404
    assert error_of(response) == {"detail": "Investor not found", "code": "not_found"}


async def test_create_with_a_non_integer_investor_id_is_422(
    client: AsyncClient, admin_headers: Headers
) -> None:
    response = await client.post(
        f"{API}/investor/abc", json={"type": "appel", "date": "2026-01-01"}, headers=admin_headers
    )
    assert response.status_code == 422


async def test_create_with_a_missing_contact_is_404(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    response = await client.post(
        f"{API}/investor/{investor_id}",
        json={"type": "appel", "date": "2026-01-01", "contact_id": 424242},
        headers=admin_headers,
    )
    assert response.status_code == 404
    assert error_of(response) == {"detail": "Contact not found", "code": "not_found"}
    assert await fetch("SELECT id FROM interactions") == []


async def test_create_with_another_investors_contact_is_409(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor("Acme")
    other_contact = await insert_contact(await insert_investor("Globex"))
    response = await client.post(
        f"{API}/investor/{investor_id}",
        json={"type": "appel", "date": "2026-01-01", "contact_id": other_contact},
        headers=admin_headers,
    )
    assert response.status_code == 409
    assert error_of(response) == {
        "detail": "The contact belongs to another investor",
        "code": "contact_not_of_investor",
    }
    assert await fetch("SELECT id FROM interactions") == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "visite"}, "type"),
        ({"type": "Appel"}, "type"),
        ({"type": None}, "type"),
        ({"date": "2026-13-45"}, "date"),
        ({"date": "2026-02-30"}, "date"),
        ({"date": "10/03/2026"}, "date"),
        ({"date": "2026-03-10T10:00:00"}, "date"),
        ({"date": 20260310}, "date"),
        ({"date": None}, "date"),
        ({"duration_minutes": -1}, "duration_minutes"),
        ({"duration_minutes": 1441}, "duration_minutes"),
        ({"duration_minutes": "30"}, "duration_minutes"),
        ({"duration_minutes": 30.5}, "duration_minutes"),
        ({"duration_minutes": True}, "duration_minutes"),
        ({"subject": "x" * 256}, "subject"),
        ({"notes": "bad\x00byte"}, "notes"),
        ({"notes": "x" * 10_001}, "notes"),
        ({"contact_id": "1"}, "contact_id"),
        ({"contact_id": 0}, "contact_id"),
        ({"contact_id": 2**31}, "contact_id"),
        ({"created_by": 1}, "created_by"),
        ({"id": 5}, "id"),
        ({"created_at": "2026-01-01T00:00:00Z"}, "created_at"),
        ({"investor_id": 1}, "investor_id"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_create_rejects_bad_input(
    client: AsyncClient, admin_headers: Headers, change: dict[str, Any], field: str
) -> None:
    investor_id = await insert_investor()
    body = {"type": "appel", "date": "2026-03-10", **change}
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert [err["loc"][-1] for err in response.json()["detail"]] == [field]
    assert await fetch("SELECT id FROM interactions") == []


@pytest.mark.parametrize("missing", ["type", "date"])
async def test_create_requires_type_and_date(
    client: AsyncClient, admin_headers: Headers, missing: str
) -> None:
    investor_id = await insert_investor()
    body = {"type": "appel", "date": "2026-03-10"}
    del body[missing]
    response = await client.post(f"{API}/investor/{investor_id}", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", missing]


# --- read, update, delete ---------------------------------------------------------------------


@pytest.mark.parametrize("interaction_id", ["424242", "99999999999999999999"])
async def test_unknown_interaction_is_404(
    client: AsyncClient, admin_headers: Headers, interaction_id: str
) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(
            method, f"{API}/{interaction_id}", json={"subject": "x"}, headers=admin_headers
        )
        assert response.status_code == 404
        assert error_of(response) == {"detail": "Interaction not found", "code": "not_found"}


async def test_non_integer_interaction_id_is_422(
    client: AsyncClient, admin_headers: Headers
) -> None:
    response = await client.get(f"{API}/abc", headers=admin_headers)
    assert response.status_code == 422


async def test_update_changes_only_the_fields_sent(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    contact_id = await insert_contact(investor_id)
    created = await create(
        client,
        admin_headers,
        investor_id,
        contact_id=contact_id,
        subject="Premier appel",
        duration_minutes=20,
    )
    response = await client.put(
        f"{API}/{created['id']}",
        json={"subject": "Appel de suivi", "date": "2026-03-12"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    data = response.json()
    assert data["subject"] == "Appel de suivi"
    assert data["date"] == "2026-03-12"
    for unchanged in ("type", "contact_id", "duration_minutes", "notes", "created_by"):
        assert data[unchanged] == created[unchanged]
    assert data["updated_at"] >= created["updated_at"]

    cleared = await client.put(
        f"{API}/{created['id']}",
        json={"contact_id": None, "duration_minutes": None, "type": "webinaire"},
        headers=admin_headers,
    )
    assert cleared.status_code == 200
    assert cleared.json()["contact_id"] is None
    assert cleared.json()["duration_minutes"] is None
    assert cleared.json()["type"] == "webinaire"
    assert cleared.json()["subject"] == "Appel de suivi"


async def test_update_with_an_empty_body_changes_nothing(
    client: AsyncClient, admin_headers: Headers
) -> None:
    created = await create(client, admin_headers, await insert_investor(), subject="Appel")
    response = await client.put(f"{API}/{created['id']}", json={}, headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == created


async def test_update_checks_the_contact_against_the_interactions_investor(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor("Acme")
    own_contact = await insert_contact(investor_id, "Alice")
    foreign_contact = await insert_contact(await insert_investor("Globex"), "Bob")
    created = await create(client, admin_headers, investor_id)

    foreign = await client.put(
        f"{API}/{created['id']}", json={"contact_id": foreign_contact}, headers=admin_headers
    )
    assert foreign.status_code == 409
    assert foreign.json()["code"] == "contact_not_of_investor"

    missing = await client.put(
        f"{API}/{created['id']}", json={"contact_id": 424242}, headers=admin_headers
    )
    assert missing.status_code == 404
    assert error_of(missing) == {"detail": "Contact not found", "code": "not_found"}

    own = await client.put(
        f"{API}/{created['id']}", json={"contact_id": own_contact}, headers=admin_headers
    )
    assert own.status_code == 200
    assert own.json()["contact_id"] == own_contact


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": None}, "type"),
        ({"date": None}, "date"),
        ({"type": "fax"}, "type"),
        ({"date": "2026-13-45"}, "date"),
        ({"duration_minutes": 1441}, "duration_minutes"),
        ({"subject": "x" * 256}, "subject"),
        ({"created_by": 1}, "created_by"),
        ({"investor_id": 2}, "investor_id"),
        ({"updated_at": "2026-01-01T00:00:00Z"}, "updated_at"),
    ],
)
async def test_update_rejects_bad_input(
    client: AsyncClient, admin_headers: Headers, body: dict[str, Any], field: str
) -> None:
    created = await create(client, admin_headers, await insert_investor())
    response = await client.put(f"{API}/{created['id']}", json=body, headers=admin_headers)
    assert response.status_code == 422
    assert [err["loc"][-1] for err in response.json()["detail"]] == [field]
    assert (await client.get(f"{API}/{created['id']}", headers=admin_headers)).json() == created


async def test_delete(client: AsyncClient, admin_headers: Headers) -> None:
    created = await create(client, admin_headers, await insert_investor())
    response = await client.delete(f"{API}/{created['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"{API}/{created['id']}", headers=admin_headers)).status_code == 404
    again = await client.delete(f"{API}/{created['id']}", headers=admin_headers)
    assert again.status_code == 404


# --- lists ------------------------------------------------------------------------------------


async def test_list_is_newest_first_by_date_then_id(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    older = await create(client, admin_headers, investor_id, date="2026-01-05")
    first_same_day = await create(client, admin_headers, investor_id, date="2026-03-01")
    newest = await create(client, admin_headers, investor_id, date="2026-04-20")
    second_same_day = await create(client, admin_headers, investor_id, date="2026-03-01")

    response = await client.get(API, headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == [
        newest["id"],
        second_same_day["id"],
        first_same_day["id"],
        older["id"],
    ]
    assert body["total"] == 4
    assert body["skip"] == 0
    assert body["limit"] == 50

    page = await client.get(API, params={"skip": 1, "limit": 2}, headers=admin_headers)
    assert page.status_code == 200
    assert [item["id"] for item in page.json()["items"]] == [
        second_same_day["id"],
        first_same_day["id"],
    ]
    assert page.json()["total"] == 4
    assert page.json()["skip"] == 1
    assert page.json()["limit"] == 2


async def test_list_filters(client: AsyncClient, admin_headers: Headers) -> None:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    jan = await create(client, admin_headers, acme, type="appel", date="2026-01-31")
    feb = await create(client, admin_headers, acme, type="email", date="2026-02-01")
    feb_globex = await create(client, admin_headers, globex, type="appel", date="2026-02-28")
    mar = await create(client, admin_headers, globex, type="reunion", date="2026-03-01")

    async def ids(**params: Any) -> list[int]:
        response = await client.get(API, params=params, headers=admin_headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return [item["id"] for item in body["items"]]

    assert await ids(type="appel") == [feb_globex["id"], jan["id"]]
    assert await ids(investor_id=acme) == [feb["id"], jan["id"]]
    assert await ids(investor_id=globex, type="appel") == [feb_globex["id"]]
    # Both bounds are inclusive.
    assert await ids(date_from="2026-02-01", date_to="2026-02-28") == [
        feb_globex["id"],
        feb["id"],
    ]
    assert await ids(date_from="2026-02-28") == [mar["id"], feb_globex["id"]]
    assert await ids(date_to="2026-01-31") == [jan["id"]]
    assert await ids(date_from="2026-03-01", date_to="2026-03-01") == [mar["id"]]
    # An inverted range is a valid question with no answer.
    assert await ids(date_from="2026-03-02", date_to="2026-03-01") == []
    assert await ids(type="webinaire") == []
    assert await ids(investor_id=424242) == []


@pytest.mark.parametrize(
    "params",
    [
        {"type": "visite"},
        {"date_from": "2026-13-45"},
        {"date_to": "yesterday"},
        {"date_to": "0"},
        {"date_from": "20260301"},
        {"investor_id": "abc"},
        {"investor_id": 0},
        {"limit": 0},
        {"limit": 201},
        {"skip": -1},
    ],
)
async def test_list_rejects_bad_filters(
    client: AsyncClient, admin_headers: Headers, params: dict[str, Any]
) -> None:
    response = await client.get(API, params=params, headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["detail"]


async def test_investor_list_holds_only_that_investors_interactions(
    client: AsyncClient, admin_headers: Headers
) -> None:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    old = await create(client, admin_headers, acme, date="2025-12-01")
    recent = await create(client, admin_headers, acme, date="2026-02-01")
    await create(client, admin_headers, globex, date="2026-03-01")

    response = await client.get(f"{API}/investor/{acme}", headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == [recent["id"], old["id"]]
    assert body["total"] == 2

    page = await client.get(
        f"{API}/investor/{acme}", params={"skip": 1, "limit": 1}, headers=admin_headers
    )
    assert page.json() == {"items": [old], "total": 2, "skip": 1, "limit": 1}


async def test_investor_list_of_an_investor_without_interactions_is_empty(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    response = await client.get(f"{API}/investor/{investor_id}", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == {"items": [], "total": 0, "skip": 0, "limit": 50}


async def test_investor_list_of_an_unknown_investor_is_404(
    client: AsyncClient, admin_headers: Headers
) -> None:
    response = await client.get(f"{API}/investor/424242", headers=admin_headers)
    assert response.status_code == 404
    assert error_of(response) == {"detail": "Investor not found", "code": "not_found"}


# --- cascades ---------------------------------------------------------------------------------


async def test_deleting_an_investor_deletes_its_interactions(
    client: AsyncClient, admin_headers: Headers
) -> None:
    acme = await insert_investor("Acme")
    globex = await insert_investor("Globex")
    gone = await create(client, admin_headers, acme)
    kept = await create(client, admin_headers, globex)

    await execute("DELETE FROM investors WHERE id = :id", id=acme)

    assert (await client.get(f"{API}/{gone['id']}", headers=admin_headers)).status_code == 404
    remaining = (await client.get(API, headers=admin_headers)).json()
    assert [item["id"] for item in remaining["items"]] == [kept["id"]]


async def test_deleting_a_contact_keeps_its_interactions_without_contact(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    contact_id = await insert_contact(investor_id)
    created = await create(client, admin_headers, investor_id, contact_id=contact_id)

    await execute("DELETE FROM contacts WHERE id = :id", id=contact_id)

    response = await client.get(f"{API}/{created['id']}", headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["contact_id"] is None
    assert response.json()["investor_id"] == investor_id


async def test_deleting_the_author_keeps_the_interaction(
    client: AsyncClient, admin_headers: Headers, user_headers: Headers, user_id: int
) -> None:
    created = await create(client, user_headers, await insert_investor())
    assert created["created_by"] == user_id

    await execute("DELETE FROM users WHERE id = :id", id=user_id)

    response = await client.get(f"{API}/{created['id']}", headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["created_by"] is None


# --- investor detail --------------------------------------------------------------------------


async def test_investor_detail_counts_interactions_and_kpis(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor_id = await insert_investor()
    other = await insert_investor("Globex")
    # The latest date wins, not the latest row.
    await create(client, admin_headers, investor_id, date="2026-05-02")
    await create(client, admin_headers, investor_id, date="2026-01-15")
    await create(client, admin_headers, investor_id, date="2025-11-30")
    await create(client, admin_headers, other, date="2026-12-31")
    for month in (1, 2):
        response = await client.post(
            f"/api/v1/kpis/investor/{investor_id}",
            json={"year": 2026, "month": month, "rdv_count": 1},
            headers=admin_headers,
        )
        assert response.status_code == 201

    detail = await client.get(f"/api/v1/investors/{investor_id}", headers=admin_headers)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["interaction_count"] == 3
    assert body["last_interaction_date"] == "2026-05-02"
    assert body["kpi_count"] == 2
