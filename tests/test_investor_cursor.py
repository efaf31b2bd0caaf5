"""GET /investors with `cursor`: keyset paging beside skip/limit, for every sort and filter."""

import base64
import json
from typing import Any

import pytest
from httpx import AsyncClient

from tests.factories import INVESTORS, execute, fetch

SORTS = [
    "name",
    "-name",
    "pipeline_stage",
    "-pipeline_stage",
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
]


async def seed_ties() -> None:
    """23 investors whose every sort key repeats, so only the id tiebreaker orders them."""
    await execute(
        "INSERT INTO investors (name, pipeline_stage, is_active, created_at, updated_at) "
        "SELECT 'Fonds ' || (g % 3), "
        "(ARRAY['prospect_froid','client','perdu','prospect_chaud'])[g % 4 + 1], "
        "g % 2 = 0, now() - (g % 4) * interval '1 day', now() - (g % 5) * interval '1 hour' "
        "FROM generate_series(1, 23) AS g",
    )


async def insert_investors(count: int) -> list[int]:
    """`count` investors of one name, inserted at one time: their ids, ascending."""
    sql = "INSERT INTO investors (name) SELECT 'F' FROM generate_series(1, :n) RETURNING id"
    return sorted(row.id for row in await fetch(sql, n=count))


async def get_page(client: AsyncClient, headers: dict[str, str], **params: Any) -> Any:
    response = await client.get(INVESTORS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def walk_by_skip(client: AsyncClient, headers: dict[str, str], **params: Any) -> list[int]:
    seen: list[int] = []
    while True:
        page = await get_page(client, headers, skip=len(seen), limit=4, **params)
        if not page["items"]:
            return seen
        seen.extend(item["id"] for item in page["items"])


async def walk_by_cursor(
    client: AsyncClient, headers: dict[str, str], total: int, **params: Any
) -> list[int]:
    seen: list[int] = []
    page = await get_page(client, headers, limit=4, **params)
    while True:
        assert page["total"] == total
        assert page["skip"] == 0
        seen.extend(item["id"] for item in page["items"])
        if "next_cursor" not in page:
            return seen
        assert len(page["items"]) == 4
        page = await get_page(client, headers, limit=4, cursor=page["next_cursor"], **params)


@pytest.mark.parametrize("sort", SORTS)
async def test_walking_by_cursor_gives_the_skip_order_with_every_row_once(
    client: AsyncClient, admin_headers: dict[str, str], sort: str
) -> None:
    await seed_ties()
    by_skip = await walk_by_skip(client, admin_headers, sort=sort)
    by_cursor = await walk_by_cursor(client, admin_headers, 23, sort=sort)
    assert len(by_skip) == 23
    assert by_cursor == by_skip
    assert len(set(by_cursor)) == 23


@pytest.mark.parametrize("sort", ["name", "-created_at", "pipeline_stage", "-updated_at"])
async def test_filters_combine_with_the_cursor(
    client: AsyncClient, admin_headers: dict[str, str], sort: str
) -> None:
    await seed_ties()
    # The clients are the g with g % 4 == 1, all odd, so all inactive: 1, 5, 9, 13, 17, 21.
    filters = {"is_active": "false", "pipeline_stage": "client"}
    by_skip = await walk_by_skip(client, admin_headers, sort=sort, **filters)
    assert len(by_skip) == 6
    assert await walk_by_cursor(client, admin_headers, 6, sort=sort, **filters) == by_skip


async def test_the_last_page_has_no_next_cursor_and_an_exact_fit_ends_there(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    ids = await insert_investors(8)
    first = await get_page(client, admin_headers, limit=4)
    assert first["total"] == 8
    second = await get_page(client, admin_headers, limit=4, cursor=first["next_cursor"])
    assert [item["id"] for item in second["items"]] == ids[4:]
    assert set(second) == {"items", "total", "skip", "limit"}
    everything = await get_page(client, admin_headers, limit=8)
    assert "next_cursor" not in everything
    empty = await get_page(client, admin_headers, pipeline_stage="perdu")
    assert empty == {"items": [], "total": 0, "skip": 0, "limit": 50}


async def test_a_cursor_past_a_deleted_row_still_resumes_after_it(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    ids = await insert_investors(6)
    first = await get_page(client, admin_headers, limit=3)
    assert (await client.delete(f"{INVESTORS}/{ids[2]}", headers=admin_headers)).status_code == 204
    rest = await get_page(client, admin_headers, limit=3, cursor=first["next_cursor"])
    assert [item["id"] for item in rest["items"]] == ids[3:]
    assert rest["total"] == 5


def token(payload: Any) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


VALID = {"sort": "name", "key": "F", "id": 1}


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",
        "!!!!",
        "a b",
        "x" * 2401,
        token(VALID) + "=",
        token([1, 2]),
        token({**VALID, "extra": 1}),
        token({"sort": "name", "key": "F"}),
        token({**VALID, "sort": "email"}),
        token({**VALID, "id": 0}),
        token({**VALID, "id": 2**31}),
        token({**VALID, "id": "1"}),
        token({**VALID, "id": True}),
        token({**VALID, "key": 3}),
        token({**VALID, "key": "a\x00b"}),
        token({**VALID, "key": "x" * 256}),
        token({"sort": "created_at", "key": "yesterday", "id": 1}),
        token({"sort": "created_at", "key": 0, "id": 1}),
        token({"sort": "created_at", "key": "2024-01-01T00:00:00", "id": 1}),
        token({"sort": "created_at", "key": "0001-01-01T00:00:00+05:00", "id": 1}),
        token({"sort": "pipeline_stage", "key": 6, "id": 1}),
        token({"sort": "pipeline_stage", "key": "client", "id": 1}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),
    ],
)
async def test_a_malformed_or_tampered_cursor_is_422(
    client: AsyncClient, admin_headers: dict[str, str], cursor: str
) -> None:
    response = await client.get(INVESTORS, params={"cursor": cursor}, headers=admin_headers)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "cursor"]


async def test_a_cursor_only_works_with_its_own_sort_and_skip_zero(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    ids = await insert_investors(4)
    cursor = (await get_page(client, admin_headers, limit=2, sort="-created_at"))["next_cursor"]

    response = await client.get(
        INVESTORS, params={"cursor": cursor, "sort": "created_at"}, headers=admin_headers
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "value_error",
            "loc": ["query", "cursor"],
            "msg": "Value error, belongs to sort '-created_at', not 'created_at'",
        }
    ]
    response = await client.get(
        INVESTORS,
        params={"cursor": cursor, "sort": "-created_at", "skip": 2},
        headers=admin_headers,
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "skip"]

    page = await get_page(client, admin_headers, cursor=cursor, sort="-created_at", skip=0)
    assert [item["id"] for item in page["items"]] == [ids[1], ids[0]]


async def test_a_valid_looking_cursor_says_why_it_is_refused(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(
        INVESTORS, params={"cursor": token({**VALID, "id": 0})}, headers=admin_headers
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "value_error",
            "loc": ["query", "cursor"],
            "msg": "Value error, is not a cursor this list returned",
        }
    ]
