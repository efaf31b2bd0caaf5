"""Investors' owners: set at creation, changed only by a manager or an admin, filtered on in
lists and search, never a reason to lose data."""

from typing import Any

import pytest
from httpx import AsyncClient

from tests.conftest import error_of
from tests.factories import INVESTORS, bearer, create_user, insert_investor, scalar

Headers = dict[str, str]


async def caller(role: str, email: str | None = None) -> tuple[int, Headers]:
    user_id = await create_user(email or f"{role}.caller@crm.test", role=role)
    return user_id, await bearer(user_id)


async def create(client: AsyncClient, headers: Headers, **fields: Any) -> Any:
    return await client.post(INVESTORS, json={"name": "Acme Capital", **fields}, headers=headers)


async def test_an_investor_belongs_to_its_creator_unless_the_body_names_an_owner(
    client: AsyncClient,
) -> None:
    manager, manager_headers = await caller("manager")
    salesperson, _ = await caller("user")
    own = await create(client, manager_headers)
    assert own.status_code == 201, own.text
    assert own.json()["owner_id"] == manager
    given = await create(client, manager_headers, owner_id=salesperson)
    assert given.json()["owner_id"] == salesperson
    unassigned = await create(client, manager_headers, owner_id=None)
    assert unassigned.json()["owner_id"] is None
    detail = await client.get(f"{INVESTORS}/{given.json()['id']}", headers=manager_headers)
    assert detail.json()["owner_id"] == salesperson


async def test_a_user_may_not_give_an_investor_to_someone_else(client: AsyncClient) -> None:
    salesperson, headers = await caller("user")
    colleague, _ = await caller("user", "colleague@crm.test")
    refused = await create(client, headers, owner_id=colleague)
    assert refused.status_code == 403, refused.text
    assert error_of(refused)["detail"] == (
        "Not allowed for the user role: "
        "only a manager or an admin may assign an investor to someone else"
    )
    also_refused = await create(client, headers, owner_id=None)
    assert also_refused.status_code == 403
    mine = await create(client, headers, owner_id=salesperson)
    assert mine.status_code == 201
    investor_id = mine.json()["id"]
    moved = await client.patch(
        f"{INVESTORS}/{investor_id}", json={"owner_id": colleague}, headers=headers
    )
    assert moved.status_code == 403
    # Sending the owner it already has is no reassignment.
    kept = await client.put(
        f"{INVESTORS}/{investor_id}", json={"owner_id": salesperson}, headers=headers
    )
    assert kept.status_code == 200, kept.text
    assert await scalar("SELECT owner_id FROM investors WHERE id = :id", id=investor_id) == (
        salesperson
    )
    assert await scalar("SELECT count(*) FROM investors") == 1


async def test_a_manager_reassigns_and_the_new_owner_may_then_change_it(
    client: AsyncClient,
) -> None:
    _, manager_headers = await caller("manager")
    salesperson, headers = await caller("user")
    investor_id = await insert_investor()
    before = await client.patch(f"{INVESTORS}/{investor_id}", json={"notes": "x"}, headers=headers)
    assert before.status_code == 403
    moved = await client.patch(
        f"{INVESTORS}/{investor_id}", json={"owner_id": salesperson}, headers=manager_headers
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["owner_id"] == salesperson
    after = await client.patch(f"{INVESTORS}/{investor_id}", json={"notes": "x"}, headers=headers)
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("kind", ["unknown", "inactive"])
async def test_an_unknown_or_inactive_owner_is_422_invalid_owner(
    client: AsyncClient, admin_headers: Headers, kind: str
) -> None:
    owner = 2_000_000_000
    if kind == "inactive":
        owner = await create_user("gone@crm.test", is_active=False)
    created = await create(client, admin_headers, owner_id=owner)
    assert created.status_code == 422, created.text
    assert error_of(created) == {
        "detail": [
            {
                "type": "invalid_owner",
                "loc": ["body", "owner_id"],
                "msg": "The owner must be an active user",
            }
        ],
        "code": "invalid_owner",
    }
    investor_id = await insert_investor()
    updated = await client.put(
        f"{INVESTORS}/{investor_id}", json={"owner_id": owner}, headers=admin_headers
    )
    assert updated.status_code == 422
    assert error_of(updated)["code"] == "invalid_owner"
    assert await scalar("SELECT count(*) FROM investors") == 1


async def test_deleting_a_user_unassigns_their_investors(
    client: AsyncClient, admin_headers: Headers
) -> None:
    salesperson, _ = await caller("user")
    investor_id = await insert_investor(owner_id=salesperson)
    deleted = await client.delete(f"/api/v1/users/{salesperson}", headers=admin_headers)
    assert deleted.status_code == 204
    assert await scalar("SELECT owner_id FROM investors WHERE id = :id", id=investor_id) is None


async def test_lists_and_search_filter_by_owner(client: AsyncClient) -> None:
    salesperson, headers = await caller("user")
    colleague, _ = await caller("user", "colleague@crm.test")
    mine = await insert_investor("Acme Mine", owner_id=salesperson)
    theirs = await insert_investor("Acme Theirs", owner_id=colleague)
    nobody = await insert_investor("Acme Nobody")

    async def listed(owner: str) -> tuple[list[int], int]:
        response = await client.get(INVESTORS, params={"owner_id": owner}, headers=headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]], response.json()["total"]

    async def found(owner: str) -> tuple[list[int], int]:
        response = await client.get(
            f"{INVESTORS}/search", params={"q": "acme", "owner_id": owner}, headers=headers
        )
        assert response.status_code == 200, response.text
        return sorted(item["id"] for item in response.json()["items"]), response.json()["total"]

    assert await listed("me") == ([mine], 1)
    assert await listed(str(colleague)) == ([theirs], 1)
    assert await listed("none") == ([nobody], 1)
    assert await listed("2000000000") == ([], 0)
    assert await listed("9999999999") == ([], 0)
    assert await found("me") == ([mine], 1)
    assert await found(str(colleague)) == ([theirs], 1)
    assert await found("none") == ([nobody], 1)
    everyone = await client.get(f"{INVESTORS}/search", params={"q": "acme"}, headers=headers)
    assert everyone.json()["total"] == 3
    for bad in ("someone", "-1", "0", "", "1.5", "99999999999"):
        refused = await client.get(INVESTORS, params={"owner_id": bad}, headers=headers)
        assert refused.status_code == 422, bad
        assert error_of(refused)["detail"][0]["loc"] == ["query", "owner_id"]
