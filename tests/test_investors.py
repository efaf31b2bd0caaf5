"""Investors: CRUD, validation, listing (filters, sort, stable paging), stats and detail."""

import asyncio
from datetime import date
from typing import Any

import pytest
from httpx import AsyncClient

from tests.conftest import error_of
from tests.factories import (
    INVESTORS,
    execute,
    fetch,
    first_admin_id,
    insert_interaction,
    insert_kpi,
    make_contact,
    make_investor,
    scalar,
)

STAGES = [
    "prospect_froid",
    "prospect_tiede",
    "prospect_chaud",
    "en_negociation",
    "client",
    "perdu",
]
CLIENT_TYPES = ["cgpi", "wholesale", "institutionnel", "autre"]


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", INVESTORS),
        ("POST", INVESTORS),
        ("GET", f"{INVESTORS}/search?q=acme"),
        ("GET", f"{INVESTORS}/stats"),
        ("GET", f"{INVESTORS}/1"),
        ("PUT", f"{INVESTORS}/1"),
        ("PATCH", f"{INVESTORS}/1"),
        ("DELETE", f"{INVESTORS}/1"),
        ("PUT", f"{INVESTORS}/1/move-to-next-stage"),
        ("GET", f"{INVESTORS}/1/stage-history"),
    ],
)
async def test_every_investor_route_requires_a_token(
    client: AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={"name": "X"})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_regular_user_can_work_with_investors(
    client: AsyncClient, user_headers: dict[str, str]
) -> None:
    created = await make_investor(client, user_headers, name="Banque Populaire")
    response = await client.get(f"{INVESTORS}/{created['id']}", headers=user_headers)
    assert response.status_code == 200
    assert response.json()["name"] == "Banque Populaire"


# --- create ---------------------------------------------------------------------------------


async def test_create_with_only_a_name_uses_the_defaults(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(INVESTORS, json={"name": "  Acme  "}, headers=admin_headers)
    assert response.status_code == 201
    body = response.json()
    assert isinstance(body["id"], int)
    assert body["name"] == "Acme"
    assert body["pipeline_stage"] == "prospect_froid"
    assert body["client_type"] is None
    assert body["is_active"] is True
    for field in ("email", "phone", "website", "company", "industry", "notes"):
        assert body[field] is None
    assert body["created_at"] and body["updated_at"]
    assert "search_text" not in body and "pipeline_rank" not in body


async def test_create_with_every_field(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    payload = {
        "name": "Société Générale",
        "email": "Contact@SG.fr",
        "phone": "+33 1 42 14 20 00",
        "website": "https://www.societegenerale.com",
        "company": "SG Group",
        "industry": "Banque",
        "notes": "Rencontré au salon Patrimonia",
        "pipeline_stage": "prospect_chaud",
        "client_type": "institutionnel",
        "is_active": False,
    }
    response = await client.post(INVESTORS, json=payload, headers=admin_headers)
    assert response.status_code == 201
    body = response.json()
    # The domain of an email is case-insensitive and stored lower-cased.
    assert body == {
        **payload,
        "email": "Contact@sg.fr",
        "owner_id": await first_admin_id(),
        "id": body["id"],
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
    }


async def test_a_blank_email_is_stored_as_none(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    body = await make_investor(client, admin_headers, email="  ")
    assert body["email"] is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"name": 42},
        {"name": "x" * 256},
        {"name": "Ac\x00me"},
        {"name": "Acme", "notes": "a\x00b"},
        {"name": "Acme", "email": "not-an-email"},
        {"name": "Acme", "email": "a@b"},
        {"name": "Acme", "email": "x" * 250 + "@a.fr"},
        {"name": "Acme", "phone": "1" * 51},
        {"name": "Acme", "website": "w" * 256},
        {"name": "Acme", "company": "c" * 256},
        {"name": "Acme", "industry": "i" * 256},
        {"name": "Acme", "notes": "n" * 10_001},
        {"name": "Acme", "pipeline_stage": "inconnu"},
        {"name": "Acme", "pipeline_stage": None},
        {"name": "Acme", "client_type": "particulier"},
        {"name": "Acme", "is_active": "yes"},
        {"name": "Acme", "is_active": None},
        {"name": "Acme", "id": 7},
        {"name": "Acme", "created_at": "2024-01-01T00:00:00Z"},
        {"name": "Acme", "updated_at": "2024-01-01T00:00:00Z"},
        {"name": "Acme", "unknown": 1},
    ],
)
async def test_create_rejects_bad_input(
    client: AsyncClient, admin_headers: dict[str, str], payload: Any
) -> None:
    response = await client.post(INVESTORS, json=payload, headers=admin_headers)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert await scalar("SELECT count(*) FROM investors") == 0


async def test_create_rejects_a_body_that_is_not_json(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        INVESTORS,
        content=b"name=Acme",
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422


async def test_duplicate_email_in_any_case_is_409(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="A", email="ir@amundi.com")
    response = await client.post(
        INVESTORS, json={"name": "B", "email": "IR@Amundi.COM"}, headers=admin_headers
    )
    assert response.status_code == 409
    assert error_of(response) == {
        "detail": "An investor with this email already exists",
        "code": "duplicate_email",
    }


async def test_investors_without_email_do_not_conflict(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="A")
    await make_investor(client, admin_headers, name="B")


@pytest.mark.committing
async def test_concurrent_creates_with_one_email_give_one_201_and_409s(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    responses = await asyncio.gather(
        *(
            client.post(
                INVESTORS,
                json={
                    "name": f"Investor {i}",
                    "email": f"Same@Example{'.COM' if i % 2 else '.com'}",
                },
                headers=admin_headers,
            )
            for i in range(20)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert all(r.json()["code"] == "duplicate_email" for r in responses if r.status_code == 409)
    assert await scalar("SELECT count(*) FROM investors") == 1
    assert await scalar("SELECT count(*) FROM investor_stage_changes") == 1


# --- read -----------------------------------------------------------------------------------


async def test_detail_includes_sorted_contacts_and_zero_activity(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    zoe = await make_contact(client, admin_headers, investor["id"], name="Zoé Durand")
    alain = await make_contact(client, admin_headers, investor["id"], name="Alain Petit")
    other = await make_investor(client, admin_headers, name="Other")
    await make_contact(client, admin_headers, other["id"], name="Not mine")

    response = await client.get(f"{INVESTORS}/{investor['id']}", headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert {k: v for k, v in body.items() if k in investor} == investor
    assert [c["id"] for c in body["contacts"]] == [alain["id"], zoe["id"]]
    assert body["contacts"][0] == alain
    assert body["interaction_count"] == 0
    assert body["last_interaction_date"] is None
    assert body["kpi_count"] == 0


async def test_detail_counts_interactions_and_kpis_in_sql(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    other = await make_investor(client, admin_headers, name="Other")
    for investor_id, day in (
        (investor["id"], date(2024, 3, 1)),
        (investor["id"], date(2024, 5, 17)),
        (investor["id"], date(2024, 4, 2)),
        (other["id"], date(2025, 1, 1)),
    ):
        await insert_interaction(investor_id, day)
    for month in (1, 2):
        await insert_kpi(investor["id"], 2024, month)

    body = (await client.get(f"{INVESTORS}/{investor['id']}", headers=admin_headers)).json()
    assert body["interaction_count"] == 3
    assert body["last_interaction_date"] == "2024-05-17"
    assert body["kpi_count"] == 2


@pytest.mark.parametrize("investor_id", ["999", "0", "-1", str(2**31), "99999999999999999999999"])
async def test_unknown_or_out_of_range_ids_are_404(
    client: AsyncClient, admin_headers: dict[str, str], investor_id: str
) -> None:
    for method, suffix, body in (
        ("GET", "", None),
        ("PUT", "", {"name": "X"}),
        ("PATCH", "", {"name": "X"}),
        ("DELETE", "", None),
        ("PUT", "/move-to-next-stage", None),
        ("GET", "/stage-history", None),
    ):
        response = await client.request(
            method, f"{INVESTORS}/{investor_id}{suffix}", json=body, headers=admin_headers
        )
        assert response.status_code == 404, (method, suffix)
        assert error_of(response) == {"detail": "Investor not found", "code": "not_found"}


@pytest.mark.parametrize("investor_id", ["abc", "1.5", "1e3"])
async def test_non_integer_ids_are_422(
    client: AsyncClient, admin_headers: dict[str, str], investor_id: str
) -> None:
    response = await client.get(f"{INVESTORS}/{investor_id}", headers=admin_headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "investor_id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/stats"),
        ("DELETE", "/stats"),
        ("POST", "/stats"),
        ("PUT", "/search"),
        ("DELETE", "/search"),
    ],
)
async def test_wrong_method_on_fixed_paths_is_405(
    client: AsyncClient, admin_headers: dict[str, str], method: str, path: str
) -> None:
    response = await client.request(method, f"{INVESTORS}{path}", headers=admin_headers)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


# --- update ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_changes_only_the_fields_sent(
    client: AsyncClient, admin_headers: dict[str, str], method: str
) -> None:
    investor = await make_investor(
        client, admin_headers, email="a@acme.fr", company="Acme", client_type="cgpi"
    )
    response = await client.request(
        method,
        f"{INVESTORS}/{investor['id']}",
        json={"name": "Acme Renamed", "phone": "0102030405"},
        headers=admin_headers,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "Acme Renamed"
    assert body["phone"] == "0102030405"
    unchanged = {"email", "company", "client_type", "pipeline_stage", "is_active", "created_at"}
    assert {k: body[k] for k in unchanged} == {k: investor[k] for k in unchanged}
    assert body["updated_at"] >= investor["updated_at"]
    stored = (await client.get(f"{INVESTORS}/{investor['id']}", headers=admin_headers)).json()
    assert stored["name"] == "Acme Renamed"


async def test_update_with_null_clears_nullable_fields(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers, email="a@acme.fr", client_type="cgpi")
    response = await client.put(
        f"{INVESTORS}/{investor['id']}",
        json={"email": None, "client_type": None},
        headers=admin_headers,
    )
    assert response.status_code == 200
    assert response.json()["email"] is None
    assert response.json()["client_type"] is None


async def test_empty_update_changes_nothing(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    response = await client.put(f"{INVESTORS}/{investor['id']}", json={}, headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == investor


@pytest.mark.parametrize(
    "payload",
    [
        {"name": None},
        {"name": ""},
        {"name": " "},
        {"pipeline_stage": None},
        {"pipeline_stage": "gagne"},
        {"is_active": None},
        {"client_type": "vip"},
        {"email": "nope"},
        {"notes": "\x00"},
        {"id": 1},
        {"created_at": "2024-01-01T00:00:00Z"},
        {"updated_at": "2024-01-01T00:00:00Z"},
    ],
)
async def test_update_rejects_bad_input(
    client: AsyncClient, admin_headers: dict[str, str], payload: Any
) -> None:
    investor = await make_investor(client, admin_headers)
    response = await client.patch(
        f"{INVESTORS}/{investor['id']}", json=payload, headers=admin_headers
    )
    assert response.status_code == 422
    stored = (await client.get(f"{INVESTORS}/{investor['id']}", headers=admin_headers)).json()
    assert stored["name"] == investor["name"]


async def test_update_to_a_taken_email_is_409(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="A", email="taken@x.fr")
    second = await make_investor(client, admin_headers, name="B", email="free@x.fr")
    response = await client.put(
        f"{INVESTORS}/{second['id']}", json={"email": "TAKEN@x.fr"}, headers=admin_headers
    )
    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_email"
    # Keeping one's own email (in another case) is not a conflict.
    response = await client.put(
        f"{INVESTORS}/{second['id']}", json={"email": "FREE@x.fr"}, headers=admin_headers
    )
    assert response.status_code == 200


# --- delete ---------------------------------------------------------------------------------


async def test_delete_moves_contacts_interactions_and_kpis_to_the_trash_with_it(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    kept = await make_investor(client, admin_headers, name="Kept")
    contact = await make_contact(client, admin_headers, investor["id"])
    await make_contact(client, admin_headers, kept["id"])
    await insert_interaction(investor["id"], type_="reunion", contact_id=contact["id"])
    await insert_kpi(investor["id"])

    response = await client.delete(f"{INVESTORS}/{investor['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert response.content == b""
    response = await client.get(f"{INVESTORS}/{investor['id']}", headers=admin_headers)
    assert response.status_code == 404
    entry = await scalar(
        "SELECT id FROM trash_entries WHERE entity = 'investor' AND entity_id = :i",
        i=investor["id"],
    )
    for table in ("contacts", "interactions", "kpis"):
        rows = await fetch(
            f"SELECT deleted_at IS NOT NULL, trash_entry_id FROM {table} WHERE investor_id = :i",
            i=investor["id"],
        )
        assert rows == [(True, entry)], table
    # The history stays with the trashed investor, for its restore.
    assert (
        await scalar(
            "SELECT count(*) FROM investor_stage_changes WHERE investor_id = :i", i=investor["id"]
        )
        == 1
    )
    assert await scalar("SELECT count(*) FROM contacts WHERE deleted_at IS NULL") == 1
    assert await scalar("SELECT count(*) FROM investors WHERE deleted_at IS NULL") == 1


# --- list -----------------------------------------------------------------------------------


async def test_list_is_paginated_and_sorted_by_name_by_default(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    for name in ("Charlie", "alpha", "Bravo", "Delta"):
        await make_investor(client, admin_headers, name=name)
    response = await client.get(INVESTORS, params={"limit": 2}, headers=admin_headers)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 4
    assert body["skip"] == 0
    assert body["limit"] == 2
    assert len(body["items"]) == 2
    names = [
        item["name"]
        for skip in (0, 2)
        for item in (
            await client.get(INVESTORS, params={"skip": skip, "limit": 2}, headers=admin_headers)
        ).json()["items"]
    ]
    assert sorted(names) == sorted(["Charlie", "alpha", "Bravo", "Delta"])
    assert len(set(names)) == 4

    beyond = await client.get(INVESTORS, params={"skip": 10}, headers=admin_headers)
    assert beyond.json() == {"items": [], "total": 4, "skip": 10, "limit": 50}


async def test_list_has_no_hidden_filter_and_filters_combine(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    a = await make_investor(client, admin_headers, name="A", client_type="cgpi")
    b = await make_investor(
        client, admin_headers, name="B", pipeline_stage="client", client_type="cgpi"
    )
    c = await make_investor(client, admin_headers, name="C", is_active=False)
    d = await make_investor(client, admin_headers, name="D", pipeline_stage="client")

    async def ids(**params: Any) -> list[int]:
        response = await client.get(INVESTORS, params=params, headers=admin_headers)
        assert response.status_code == 200
        assert response.json()["total"] == len(response.json()["items"])
        return [item["id"] for item in response.json()["items"]]

    assert await ids() == [a["id"], b["id"], c["id"], d["id"]]
    assert await ids(is_active="false") == [c["id"]]
    assert await ids(is_active="true") == [a["id"], b["id"], d["id"]]
    assert await ids(pipeline_stage="client") == [b["id"], d["id"]]
    assert await ids(client_type="cgpi") == [a["id"], b["id"]]
    assert await ids(client_type="cgpi", pipeline_stage="client") == [b["id"]]
    assert await ids(pipeline_stage="perdu") == []


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "email"},
        {"sort": "id"},
        {"sort": "--name"},
        {"sort": "name;drop table investors"},
        {"pipeline_stage": "gagne"},
        {"client_type": "vip"},
        {"is_active": "maybe"},
        {"limit": 0},
        {"limit": 201},
        {"skip": -1},
        {"skip": 2**31},
        {"limit": "ten"},
    ],
)
async def test_list_rejects_bad_parameters(
    client: AsyncClient, admin_headers: dict[str, str], params: dict[str, Any]
) -> None:
    response = await client.get(INVESTORS, params=params, headers=admin_headers)
    assert response.status_code == 422


async def test_sorting_by_stage_follows_the_pipeline_not_the_alphabet(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    for stage in ("perdu", "client", "prospect_tiede", "en_negociation", "prospect_froid"):
        await make_investor(client, admin_headers, name=stage, pipeline_stage=stage)
    await make_investor(client, admin_headers, name="chaud", pipeline_stage="prospect_chaud")

    response = await client.get(INVESTORS, params={"sort": "pipeline_stage"}, headers=admin_headers)
    assert [i["pipeline_stage"] for i in response.json()["items"]] == STAGES
    response = await client.get(
        INVESTORS, params={"sort": "-pipeline_stage"}, headers=admin_headers
    )
    assert [i["pipeline_stage"] for i in response.json()["items"]] == STAGES[::-1]


@pytest.mark.parametrize("key", ["name", "created_at", "updated_at"])
async def test_sorting_by_each_key_both_ways(
    client: AsyncClient, admin_headers: dict[str, str], key: str
) -> None:
    for name in ("b", "c", "a"):
        await make_investor(client, admin_headers, name=name)
    # Touch "c" last so updated_at differs from created_at order.
    items = (await client.get(INVESTORS, headers=admin_headers)).json()["items"]
    await client.put(f"{INVESTORS}/{items[2]['id']}", json={"notes": "x"}, headers=admin_headers)

    ascending = (await client.get(INVESTORS, params={"sort": key}, headers=admin_headers)).json()
    values = [item[key] for item in ascending["items"]]
    assert values == sorted(values)
    descending = (
        await client.get(INVESTORS, params={"sort": f"-{key}"}, headers=admin_headers)
    ).json()
    assert [i["id"] for i in descending["items"]] == [i["id"] for i in ascending["items"]][::-1]


@pytest.mark.parametrize(
    "sort",
    [
        "name",
        "-name",
        "pipeline_stage",
        "-pipeline_stage",
        "created_at",
        "-created_at",
        "updated_at",
        "-updated_at",
    ],
)
async def test_walking_pages_returns_every_row_once_when_sort_keys_tie(
    client: AsyncClient, admin_headers: dict[str, str], sort: str
) -> None:
    # One statement: every row shares the same name, stage and timestamps.
    await execute(
        "INSERT INTO investors (name, pipeline_stage) "
        "SELECT 'Same name', 'prospect_tiede' FROM generate_series(1, 11)",
    )
    seen: list[int] = []
    skip = 0
    while True:
        response = await client.get(
            INVESTORS, params={"sort": sort, "skip": skip, "limit": 3}, headers=admin_headers
        )
        assert response.status_code == 200
        page = response.json()
        assert page["total"] == 11
        if not page["items"]:
            break
        seen.extend(item["id"] for item in page["items"])
        skip += 3
    assert len(seen) == 11
    assert len(set(seen)) == 11
    assert seen == sorted(seen, reverse=sort.startswith("-"))


# --- stats ----------------------------------------------------------------------------------


async def test_stats_on_an_empty_database_lists_every_key_with_zero(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(f"{INVESTORS}/stats", headers=admin_headers)
    assert response.status_code == 200
    assert response.json() == {
        "total_count": 0,
        "active_count": 0,
        "by_pipeline_stage": dict.fromkeys(STAGES, 0),
        "by_client_type": {**dict.fromkeys(CLIENT_TYPES, 0), "non_renseigne": 0},
    }


async def test_stats_count_by_stage_type_and_activity(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="A", client_type="cgpi")
    await make_investor(client, admin_headers, name="B", client_type="cgpi", is_active=False)
    await make_investor(client, admin_headers, name="C", pipeline_stage="client")
    await make_investor(
        client, admin_headers, name="D", pipeline_stage="perdu", client_type="wholesale"
    )
    response = await client.get(f"{INVESTORS}/stats", headers=admin_headers)
    assert response.json() == {
        "total_count": 4,
        "active_count": 3,
        "by_pipeline_stage": {
            **dict.fromkeys(STAGES, 0),
            "prospect_froid": 2,
            "client": 1,
            "perdu": 1,
        },
        "by_client_type": {
            **dict.fromkeys(CLIENT_TYPES, 0),
            "cgpi": 2,
            "wholesale": 1,
            "non_renseigne": 1,
        },
    }
