"""Investors along the pipeline: move-to-next-stage and the stage history."""

import asyncio
from itertools import pairwise
from typing import Any

import pytest
from httpx import AsyncClient

from tests.conftest import error_of
from tests.factories import INVESTORS, first_admin_id, make_investor

PIPELINE = ["prospect_froid", "prospect_tiede", "prospect_chaud", "en_negociation", "client"]
FULL_WALK = [(None, "prospect_froid"), *pairwise(PIPELINE)]


async def history(
    client: AsyncClient, headers: dict[str, str], investor_id: int
) -> list[dict[str, Any]]:
    response = await client.get(f"{INVESTORS}/{investor_id}/stage-history", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    return body


def transitions(changes: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    return [(change["from_stage"], change["to_stage"]) for change in changes]


async def test_creation_records_the_first_stage(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers, pipeline_stage="prospect_chaud")
    changes = await history(client, admin_headers, investor["id"])
    assert len(changes) == 1
    change = changes[0]
    assert change["investor_id"] == investor["id"]
    assert change["from_stage"] is None
    assert change["to_stage"] == "prospect_chaud"
    assert change["changed_by"] == await first_admin_id()
    assert change["changed_at"]
    assert isinstance(change["id"], int)


async def test_move_walks_the_whole_pipeline_then_409(
    client: AsyncClient, admin_headers: dict[str, str], user_headers: dict[str, str], user_id: int
) -> None:
    # The user walks its own investor along the pipeline.
    investor = await make_investor(client, admin_headers, owner_id=user_id)
    for expected in PIPELINE[1:]:
        response = await client.put(
            f"{INVESTORS}/{investor['id']}/move-to-next-stage", headers=user_headers
        )
        assert response.status_code == 200
        body = response.json()
        assert body["pipeline_stage"] == expected
        assert body["id"] == investor["id"]
        assert body["name"] == investor["name"]

    response = await client.put(
        f"{INVESTORS}/{investor['id']}/move-to-next-stage", headers=user_headers
    )
    assert response.status_code == 409
    assert error_of(response) == {
        "detail": "An investor at stage 'client' has no next stage",
        "code": "no_next_stage",
    }

    changes = await history(client, admin_headers, investor["id"])
    assert transitions(changes) == FULL_WALK
    assert [c["changed_by"] for c in changes[1:]] == [user_id] * 4
    assert [c["id"] for c in changes] == sorted(c["id"] for c in changes)


async def test_a_lost_investor_has_no_next_stage(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers, pipeline_stage="perdu")
    response = await client.put(
        f"{INVESTORS}/{investor['id']}/move-to-next-stage", headers=admin_headers
    )
    assert response.status_code == 409
    assert response.json()["code"] == "no_next_stage"
    assert "perdu" in response.json()["detail"]
    detail = (await client.get(f"{INVESTORS}/{investor['id']}", headers=admin_headers)).json()
    assert detail["pipeline_stage"] == "perdu"
    assert len(await history(client, admin_headers, investor["id"])) == 1


async def test_move_to_next_stage_accepts_only_put(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    response = await client.post(
        f"{INVESTORS}/{investor['id']}/move-to-next-stage", headers=admin_headers
    )
    assert response.status_code == 405


@pytest.mark.committing
async def test_concurrent_moves_never_skip_a_stage(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers)
    responses = await asyncio.gather(
        *(
            client.put(f"{INVESTORS}/{investor['id']}/move-to-next-stage", headers=admin_headers)
            for _ in range(10)
        )
    )
    succeeded = [r.json()["pipeline_stage"] for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # Four steps from prospect_froid to client, each reached by exactly one call.
    assert sorted(succeeded, key=PIPELINE.index) == PIPELINE[1:]
    assert len(refused) == 6
    assert all(r.status_code == 409 and r.json()["code"] == "no_next_stage" for r in refused)

    changes = await history(client, admin_headers, investor["id"])
    assert transitions(changes) == FULL_WALK


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_records_a_stage_change_only_when_the_stage_changes(
    client: AsyncClient, admin_headers: dict[str, str], method: str
) -> None:
    investor = await make_investor(client, admin_headers)
    url = f"{INVESTORS}/{investor['id']}"

    # Same stage, or other fields only: no history row.
    for payload in ({"pipeline_stage": "prospect_froid"}, {"notes": "appelé"}):
        response = await client.request(method, url, json=payload, headers=admin_headers)
        assert response.status_code == 200
    assert len(await history(client, admin_headers, investor["id"])) == 1

    # Jumps are allowed through an update, and recorded as they happened.
    response = await client.request(
        method, url, json={"pipeline_stage": "en_negociation"}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json()["pipeline_stage"] == "en_negociation"
    response = await client.request(
        method, url, json={"pipeline_stage": "perdu", "name": "Lost"}, headers=admin_headers
    )
    assert response.json()["pipeline_stage"] == "perdu"

    assert transitions(await history(client, admin_headers, investor["id"])) == [
        (None, "prospect_froid"),
        ("prospect_froid", "en_negociation"),
        ("en_negociation", "perdu"),
    ]


async def test_a_refused_update_records_no_stage_change(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="A", email="a@x.fr")
    investor = await make_investor(client, admin_headers, name="B")
    response = await client.put(
        f"{INVESTORS}/{investor['id']}",
        json={"pipeline_stage": "client", "email": "A@x.fr"},
        headers=admin_headers,
    )
    assert response.status_code == 409
    assert transitions(await history(client, admin_headers, investor["id"])) == [
        (None, "prospect_froid")
    ]
    detail = (await client.get(f"{INVESTORS}/{investor['id']}", headers=admin_headers)).json()
    assert detail["pipeline_stage"] == "prospect_froid"


async def test_history_only_lists_the_investors_own_changes(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    first = await make_investor(client, admin_headers, name="First")
    second = await make_investor(client, admin_headers, name="Second")
    await client.put(f"{INVESTORS}/{second['id']}/move-to-next-stage", headers=admin_headers)
    assert len(await history(client, admin_headers, first["id"])) == 1
    assert {c["investor_id"] for c in await history(client, admin_headers, second["id"])} == {
        second["id"]
    }
