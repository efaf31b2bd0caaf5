"""Contacts: per-investor list and create, read, partial update, delete."""

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient

from tests.conftest import error_of
from tests.factories import CONTACTS, make_contact, make_investor, scalar

CONTACT_FIELDS = {"name", "email", "phone", "title", "notes"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{CONTACTS}/investor/1"),
        ("POST", f"{CONTACTS}/investor/1"),
        ("GET", f"{CONTACTS}/1"),
        ("PUT", f"{CONTACTS}/1"),
        ("PATCH", f"{CONTACTS}/1"),
        ("DELETE", f"{CONTACTS}/1"),
    ],
)
async def test_every_contact_route_requires_a_token(
    client: AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={"name": "X"})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


async def test_create_returns_the_contact(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, user_headers)
    payload = {
        "name": " Hélène Dubois ",
        "email": "helene.dubois@AMUNDI.com",
        "phone": "+33 6 12 34 56 78",
        "title": "Directrice des partenariats",
        "notes": "Préfère les appels le matin",
    }
    response = await client.post(
        f"{CONTACTS}/investor/{investor['id']}", json=payload, headers=user_headers
    )
    assert response.status_code == 201
    body = response.json()
    assert body == {
        **payload,
        "name": "Hélène Dubois",
        "email": "helene.dubois@amundi.com",
        "id": body["id"],
        "investor_id": investor["id"],
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
    }
    response = await client.get(f"{CONTACTS}/{body['id']}", headers=user_headers)
    assert response.status_code == 200
    assert response.json() == body


async def test_email_is_optional_and_not_unique(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    bare = await make_contact(client, admin_headers, investor["id"], name="Sans email")
    assert bare["email"] is None and bare["phone"] is None and bare["title"] is None
    blank = await make_contact(client, admin_headers, investor["id"], email="")
    assert blank["email"] is None
    await make_contact(client, admin_headers, investor["id"], name="A", email="shared@x.fr")
    await make_contact(client, admin_headers, investor["id"], name="B", email="SHARED@x.fr")


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"name": ""},
        {"name": "  "},
        {"name": None},
        {"name": "x" * 256},
        {"name": "a\x00b"},
        {"name": "A", "email": "not-an-email"},
        {"name": "A", "phone": "1" * 51},
        {"name": "A", "title": "t" * 256},
        {"name": "A", "notes": "n" * 10_001},
        {"name": "A", "notes": "\x00"},
        {"name": "A", "id": 3},
        {"name": "A", "investor_id": 3},
        {"name": "A", "created_at": "2024-01-01T00:00:00Z"},
        {"name": "A", "company": "unknown field"},
    ],
)
async def test_create_rejects_bad_input(
    client: AsyncClient, admin_headers: dict[str, str], payload: Any
) -> None:
    investor = await make_investor(client, admin_headers)
    response = await client.post(
        f"{CONTACTS}/investor/{investor['id']}", json=payload, headers=admin_headers
    )
    assert response.status_code == 422
    assert await scalar("SELECT count(*) FROM contacts") == 0


@pytest.mark.parametrize("investor_id", ["999", "0", str(2**31), "99999999999999999999"])
async def test_unknown_investor_is_404_for_list_and_create(
    client: AsyncClient, admin_headers: dict[str, str], investor_id: str
) -> None:
    expected = {"detail": "Investor not found", "code": "not_found"}
    response = await client.get(f"{CONTACTS}/investor/{investor_id}", headers=admin_headers)
    assert response.status_code == 404
    assert error_of(response) == expected
    response = await client.post(
        f"{CONTACTS}/investor/{investor_id}", json={"name": "A"}, headers=admin_headers
    )
    assert response.status_code == 404
    assert error_of(response) == expected


async def test_non_integer_ids_are_422(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    for path in (f"{CONTACTS}/investor/abc", f"{CONTACTS}/abc", f"{CONTACTS}/1.5"):
        response = await client.get(path, headers=admin_headers)
        assert response.status_code == 422, path


async def test_list_is_paginated_by_name_then_id_and_per_investor(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    other = await make_investor(client, admin_headers, name="Other")
    await make_contact(client, admin_headers, other["id"], name="Aaron Autre")
    created = [
        await make_contact(client, admin_headers, investor["id"], name=name)
        for name in ("Zoé", "Marc", "Alice", "Marc", "Marc")
    ]
    expected = [created[2]["id"], created[1]["id"], created[3]["id"], created[4]["id"]]
    expected.append(created[0]["id"])

    seen: list[int] = []
    for skip in (0, 2, 4, 6):
        response = await client.get(
            f"{CONTACTS}/investor/{investor['id']}",
            params={"skip": skip, "limit": 2},
            headers=admin_headers,
        )
        assert response.status_code == 200
        body = response.json()
        assert body["total"] == 5
        assert body["skip"] == skip
        assert body["limit"] == 2
        seen.extend(item["id"] for item in body["items"])
    assert seen == expected

    response = await client.get(f"{CONTACTS}/investor/{investor['id']}", headers=admin_headers)
    assert response.json()["items"][0] == created[2]


async def test_list_of_an_investor_without_contacts_is_empty(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    response = await client.get(f"{CONTACTS}/investor/{investor['id']}", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == {"items": [], "total": 0, "skip": 0, "limit": 50}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"skip": -1}])
async def test_list_rejects_bad_paging(
    client: AsyncClient, admin_headers: dict[str, str], params: dict[str, int]
) -> None:
    investor = await make_investor(client, admin_headers)
    response = await client.get(
        f"{CONTACTS}/investor/{investor['id']}", params=params, headers=admin_headers
    )
    assert response.status_code == 422


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_changes_only_the_fields_sent(
    client: AsyncClient, admin_headers: dict[str, str], method: str
) -> None:
    investor = await make_investor(client, admin_headers)
    contact = await make_contact(
        client, admin_headers, investor["id"], email="a@x.fr", phone="0102030405", title="CIO"
    )
    response = await client.request(
        method,
        f"{CONTACTS}/{contact['id']}",
        json={"title": "CEO", "email": None},
        headers=admin_headers,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["title"] == "CEO"
    assert body["email"] is None
    assert body["phone"] == "0102030405"
    assert body["name"] == contact["name"]
    assert body["investor_id"] == investor["id"]
    stored = (await client.get(f"{CONTACTS}/{contact['id']}", headers=admin_headers)).json()
    assert stored == body


@pytest.mark.parametrize(
    "payload",
    [
        {"name": None},
        {"name": ""},
        {"name": "x" * 256},
        {"email": "bad"},
        {"notes": "a\x00"},
        {"id": 9},
        {"investor_id": 9},
        {"updated_at": "2024-01-01T00:00:00Z"},
    ],
)
async def test_update_rejects_bad_input(
    client: AsyncClient, admin_headers: dict[str, str], payload: Any
) -> None:
    investor = await make_investor(client, admin_headers)
    contact = await make_contact(client, admin_headers, investor["id"])
    response = await client.put(f"{CONTACTS}/{contact['id']}", json=payload, headers=admin_headers)
    assert response.status_code == 422
    stored = (await client.get(f"{CONTACTS}/{contact['id']}", headers=admin_headers)).json()
    assert stored == contact


async def test_delete_removes_only_that_contact(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    gone = await make_contact(client, admin_headers, investor["id"], name="Gone")
    kept = await make_contact(client, admin_headers, investor["id"], name="Kept")
    response = await client.delete(f"{CONTACTS}/{gone['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"{CONTACTS}/{gone['id']}", headers=admin_headers)).status_code == 404
    listing = (
        await client.get(f"{CONTACTS}/investor/{investor['id']}", headers=admin_headers)
    ).json()
    assert [item["id"] for item in listing["items"]] == [kept["id"]]
    response = await client.delete(f"{CONTACTS}/{gone['id']}", headers=admin_headers)
    assert response.status_code == 404


@pytest.mark.parametrize("contact_id", ["999", "0", str(2**31), "99999999999999999999"])
async def test_unknown_contact_is_404(
    client: AsyncClient, admin_headers: dict[str, str], contact_id: str
) -> None:
    for method, body in (("GET", None), ("PUT", {"name": "X"}), ("PATCH", {}), ("DELETE", None)):
        response = await client.request(
            method, f"{CONTACTS}/{contact_id}", json=body, headers=admin_headers
        )
        assert response.status_code == 404, method
        assert error_of(response) == {"detail": "Contact not found", "code": "not_found"}


async def test_contacts_appear_in_the_investor_detail(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    contact = await make_contact(client, admin_headers, investor["id"])
    detail = (await client.get(f"/api/v1/investors/{investor['id']}", headers=admin_headers)).json()
    assert detail["contacts"] == [contact]


@pytest.mark.committing
async def test_adding_contacts_while_the_investor_is_deleted_never_fails_with_500(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    url = f"{CONTACTS}/investor/{investor['id']}"
    responses = await asyncio.gather(
        *(client.post(url, json={"name": f"C{i}"}, headers=admin_headers) for i in range(5)),
        client.delete(f"/api/v1/investors/{investor['id']}", headers=admin_headers),
        *(client.post(url, json={"name": f"D{i}"}, headers=admin_headers) for i in range(5)),
    )
    assert responses[5].status_code == 204
    creates = responses[:5] + responses[6:]
    assert {r.status_code for r in creates} <= {201, 404}
    # Whatever the interleaving, no live contact outlives its investor: each one created went
    # to the trash with it.
    assert await scalar("SELECT count(*) FROM contacts WHERE deleted_at IS NULL") == 0
    created = sum(r.status_code == 201 for r in creates)
    assert await scalar("SELECT count(*) FROM contacts WHERE trash_entry_id IS NOT NULL") == created
