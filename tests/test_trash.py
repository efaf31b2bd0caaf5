"""The trash: DELETE moves a record aside (an investor with its contacts, interactions and KPIs),
every read path stops seeing it at once, a restore brings all of it back as it was, and a purge
(now, by an admin, or by the nightly job) destroys it."""

from datetime import datetime, timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import settings
from core.db import db
from core.jobs import job_types
from core.queue import JobRunner
from core.schedules import schedules
from services.jobs import JobService
from tests.conftest import error_of
from tests.factories import (
    CONTACTS,
    INVESTORS,
    bearer,
    create_user,
    execute,
    fetch,
    first_admin_id,
    make_contact,
    make_investor,
    scalar,
)
from tests.test_aggregates import assert_counters_exact
from worker import tasks

API = "/api/v1"
TRASH = f"{API}/trash"
INTERACTIONS = f"{API}/interactions"
KPIS = f"{API}/kpis"
Headers = dict[str, str]


async def post(client: AsyncClient, headers: Headers, url: str, body: Any) -> Any:
    response = await client.post(url, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def delete(client: AsyncClient, headers: Headers, url: str) -> None:
    response = await client.delete(url, headers=headers)
    assert response.status_code == 204, response.text


async def get_json(client: AsyncClient, headers: Headers, url: str, **params: Any) -> Any:
    response = await client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def arrange_investor(client: AsyncClient, headers: Headers) -> dict[str, Any]:
    """An investor moved along the pipeline, with a contact, an interaction with that contact
    and a month of KPIs; and another investor that stays."""
    investor = await make_investor(
        client,
        headers,
        name="Quintavalle Gestion",
        email="contact@quintavalle.fr",
        client_type="cgpi",
    )
    moved = await client.put(f"{INVESTORS}/{investor['id']}/move-to-next-stage", headers=headers)
    assert moved.status_code == 200, moved.text
    contact = await make_contact(client, headers, investor["id"], name="Élodie Lefèvre")
    interaction = await post(
        client,
        headers,
        f"{INTERACTIONS}/investor/{investor['id']}",
        {"type": "reunion", "date": "2026-01-12", "contact_id": contact["id"]},
    )
    kpi = await post(
        client,
        headers,
        f"{KPIS}/investor/{investor['id']}",
        {"year": 2026, "month": 1, "rdv_count": 4, "revenue": 1000, "commission_rate": 2.5},
    )
    other = await make_investor(client, headers, name="Banque Populaire")
    return {
        "investor": investor["id"],
        "contact": contact["id"],
        "interaction": interaction["id"],
        "kpi": kpi["id"],
        "other": other["id"],
    }


async def views(client: AsyncClient, headers: Headers, ids: dict[str, Any]) -> dict[str, Any]:
    """What every read path answers about the arranged investor and its rows."""
    investor = ids["investor"]
    urls = {
        "detail": f"{INVESTORS}/{investor}",
        "history": f"{INVESTORS}/{investor}/stage-history",
        "contacts": f"{CONTACTS}/investor/{investor}",
        "contact": f"{CONTACTS}/{ids['contact']}",
        "interactions": f"{INTERACTIONS}/investor/{investor}",
        "interaction": f"{INTERACTIONS}/{ids['interaction']}",
        "kpis": f"{KPIS}/investor/{investor}",
        "kpi": f"{KPIS}/{ids['kpi']}",
        "annual": f"{KPIS}/summary/annual/{investor}/2026",
    }
    seen: dict[str, Any] = {}
    for name, url in urls.items():
        response = await client.get(url, headers=headers)
        seen[name] = response.json() if response.status_code == 200 else response.status_code
    lists = {
        "investors": (INVESTORS, {}),
        "cgpi": (INVESTORS, {"client_type": "cgpi"}),
        "owned": (INVESTORS, {"owner_id": "me"}),
        "all interactions": (INTERACTIONS, {}),
        "meetings": (INTERACTIONS, {"type": "reunion"}),
        "interactions of the investor": (INTERACTIONS, {"investor_id": investor}),
        "all kpis": (KPIS, {}),
        "kpis of the month": (KPIS, {"year": 2026, "month": 1}),
        "kpis of the investor": (KPIS, {"investor_id": investor}),
        "search by name": (f"{INVESTORS}/search", {"q": "Quintavalle"}),
        "search by contact": (f"{INVESTORS}/search", {"q": "lefevre"}),
        "search, misspelt": (f"{INVESTORS}/search", {"q": "Quintavale"}),
        "search, two letters": (f"{INVESTORS}/search", {"q": "qu"}),
    }
    for name, (url, params) in lists.items():
        body = await get_json(client, headers, url, **params)
        seen[name] = (body["total"], [item["id"] for item in body["items"]])
    seen["stats"] = await get_json(client, headers, f"{INVESTORS}/stats")
    seen["month"] = await get_json(client, headers, f"{KPIS}/summary/month/2026/1")
    return seen


async def trash_items(client: AsyncClient, headers: Headers, **params: Any) -> list[Any]:
    body = await get_json(client, headers, TRASH, **params)
    assert body["total"] == len(body["items"])
    items: list[Any] = body["items"]
    return items


# --- delete, then restore ---------------------------------------------------------------------


async def test_a_deleted_investor_leaves_every_read_path_and_comes_back_whole(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    ids = await arrange_investor(client, admin_headers)
    before = await views(client, admin_headers, ids)
    for name in ("search by name", "search by contact", "search, misspelt", "search, two letters"):
        assert before[name] == (1, [ids["investor"]]), name
    assert before["stats"]["total_count"] == 2
    assert before["month"]["total_rdv"] == 4

    await delete(client, admin_headers, f"{INVESTORS}/{ids['investor']}")

    gone = await views(client, admin_headers, ids)
    for name in ("detail", "history", "contacts", "contact", "interactions", "interaction"):
        assert gone[name] == 404, name
    for name in ("kpis", "kpi", "annual"):
        assert gone[name] == 404, name
    assert gone["investors"] == (1, [ids["other"]])
    assert gone["owned"] == (1, [ids["other"]])
    for name in ("cgpi", "all interactions", "meetings", "interactions of the investor"):
        assert gone[name] == (0, []), name
    for name in ("all kpis", "kpis of the month", "kpis of the investor"):
        assert gone[name] == (0, []), name
    for name in ("search by name", "search by contact", "search, misspelt", "search, two letters"):
        assert gone[name] == (0, []), name
    assert gone["stats"]["total_count"] == 1
    assert gone["stats"]["by_client_type"]["cgpi"] == 0
    assert gone["month"]["investor_count"] == 0
    assert gone["month"]["total_rdv"] == 0
    # Nor can it be changed or deleted again.
    for method, url in [
        ("PATCH", f"{INVESTORS}/{ids['investor']}"),
        ("PUT", f"{CONTACTS}/{ids['contact']}"),
        ("PUT", f"{INTERACTIONS}/{ids['interaction']}"),
        ("PUT", f"{KPIS}/{ids['kpi']}"),
    ]:
        response = await client.request(method, url, json={"notes": "x"}, headers=admin_headers)
        assert response.status_code == 404, (method, url)
    for url in [
        f"{INVESTORS}/{ids['investor']}",
        f"{CONTACTS}/{ids['contact']}",
        f"{INTERACTIONS}/{ids['interaction']}",
        f"{KPIS}/{ids['kpi']}",
        f"{INVESTORS}/{ids['investor']}/move-to-next-stage",
    ]:
        method = "PUT" if url.endswith("stage") else "DELETE"
        assert (await client.request(method, url, headers=admin_headers)).status_code == 404
    # Nothing can be added under it.
    for url, body in [
        (f"{CONTACTS}/investor/{ids['investor']}", {"name": "Paul"}),
        (f"{INTERACTIONS}/investor/{ids['investor']}", {"type": "appel", "date": "2026-02-01"}),
        (f"{KPIS}/investor/{ids['investor']}", {"year": 2026, "month": 2}),
    ]:
        response = await client.post(url, json=body, headers=admin_headers)
        assert response.status_code == 404, url
    await assert_counters_exact(client, admin_headers, session)

    (item,) = await trash_items(client, admin_headers)
    deleted_at = item.pop("deleted_at")
    purge_after = item.pop("purge_after")
    assert item == {
        "entity": "investor",
        "id": ids["investor"],
        "label": "Quintavalle Gestion",
        "deleted_by": await first_admin_id(),
        "children": 3,
    }
    kept = datetime.fromisoformat(purge_after) - datetime.fromisoformat(deleted_at)
    assert kept == timedelta(days=settings.trash_retention_days)

    restored = await client.post(
        f"{TRASH}/investor/{ids['investor']}/restore", headers=admin_headers
    )
    assert restored.status_code == 200, restored.text
    detail = before["detail"]
    assert restored.json() == {
        key: value
        for key, value in detail.items()
        if key not in ("contacts", "interaction_count", "last_interaction_date", "kpi_count")
    }
    assert await views(client, admin_headers, ids) == before
    assert await trash_items(client, admin_headers) == []
    await assert_counters_exact(client, admin_headers, session)


async def test_a_deleted_contact_interaction_or_kpi_goes_alone_and_comes_back(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    ids = await arrange_investor(client, admin_headers)
    before = await views(client, admin_headers, ids)
    await delete(client, admin_headers, f"{CONTACTS}/{ids['contact']}")
    await delete(client, admin_headers, f"{INTERACTIONS}/{ids['interaction']}")
    await delete(client, admin_headers, f"{KPIS}/{ids['kpi']}")

    gone = await views(client, admin_headers, ids)
    assert gone["detail"]["contacts"] == []
    assert gone["detail"]["interaction_count"] == 0
    assert gone["detail"]["last_interaction_date"] is None
    assert gone["detail"]["kpi_count"] == 0
    assert gone["contact"] == gone["interaction"] == gone["kpi"] == 404
    assert gone["search by contact"] == (0, [])
    assert gone["search by name"] == before["search by name"]
    assert gone["all interactions"] == gone["all kpis"] == (0, [])
    assert gone["annual"]["total_rdv"] == 0
    assert gone["month"]["investor_count"] == 0
    await assert_counters_exact(client, admin_headers, session)

    items = await trash_items(client, admin_headers)
    assert [(item["entity"], item["id"], item["label"], item["children"]) for item in items] == [
        ("kpi", ids["kpi"], "2026-01", None),
        ("interaction", ids["interaction"], "reunion 2026-01-12", None),
        ("contact", ids["contact"], "Élodie Lefèvre", None),
    ]
    for entity in ("contact", "interaction", "kpi"):
        response = await client.post(
            f"{TRASH}/{entity}/{ids[entity]}/restore", headers=admin_headers
        )
        assert response.status_code == 200, response.text
        assert response.json() == before[entity]
    assert await views(client, admin_headers, ids) == before
    await assert_counters_exact(client, admin_headers, session)


async def test_rows_trashed_on_their_own_keep_their_entry_through_the_investor_s_round_trip(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_investor(client, admin_headers)
    await delete(client, admin_headers, f"{CONTACTS}/{ids['contact']}")
    await delete(client, admin_headers, f"{INVESTORS}/{ids['investor']}")
    items = await trash_items(client, admin_headers)
    # The contact went first, on its own: the investor took the interaction and the KPI.
    assert [(item["entity"], item["children"]) for item in items] == [
        ("investor", 2),
        ("contact", None),
    ]
    refused = await client.post(f"{TRASH}/contact/{ids['contact']}/restore", headers=admin_headers)
    assert refused.status_code == 409
    assert error_of(refused)["code"] == "parent_in_trash"
    # What went with the investor comes back only with it.
    for entity in ("interaction", "kpi"):
        response = await client.post(
            f"{TRASH}/{entity}/{ids[entity]}/restore", headers=admin_headers
        )
        assert response.status_code == 409
        assert error_of(response)["code"] == "parent_in_trash"
        response = await client.delete(f"{TRASH}/{entity}/{ids[entity]}", headers=admin_headers)
        assert response.status_code == 409
    restored = await client.post(
        f"{TRASH}/investor/{ids['investor']}/restore", headers=admin_headers
    )
    assert restored.status_code == 200, restored.text
    detail = await get_json(client, admin_headers, f"{INVESTORS}/{ids['investor']}")
    assert detail["contacts"] == []
    assert detail["interaction_count"] == detail["kpi_count"] == 1
    assert [item["entity"] for item in await trash_items(client, admin_headers)] == ["contact"]
    response = await client.post(f"{TRASH}/contact/{ids['contact']}/restore", headers=admin_headers)
    assert response.status_code == 200, response.text
    detail = await get_json(client, admin_headers, f"{INVESTORS}/{ids['investor']}")
    assert [contact["id"] for contact in detail["contacts"]] == [ids["contact"]]


# --- uniqueness on live rows ------------------------------------------------------------------


async def test_a_trashed_investor_s_email_is_free_and_its_restore_then_conflicts(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_investor(client, admin_headers)
    await delete(client, admin_headers, f"{INVESTORS}/{ids['investor']}")
    twin = await make_investor(client, admin_headers, name="Twin", email="CONTACT@quintavalle.fr")

    response = await client.post(
        f"{TRASH}/investor/{ids['investor']}/restore", headers=admin_headers
    )
    assert response.status_code == 409
    assert error_of(response)["code"] == "restore_conflict"
    # Nothing came back: neither the investor nor what went with it.
    assert (
        await client.get(f"{INVESTORS}/{ids['investor']}", headers=admin_headers)
    ).status_code == 404
    live = await fetch(
        "SELECT (SELECT count(*) FROM contacts WHERE deleted_at IS NULL), "
        "(SELECT count(*) FROM interactions WHERE deleted_at IS NULL), "
        "(SELECT count(*) FROM kpis WHERE deleted_at IS NULL)"
    )
    assert live == [(0, 0, 0)]
    assert [item["id"] for item in await trash_items(client, admin_headers)] == [ids["investor"]]

    await delete(client, admin_headers, f"{INVESTORS}/{twin['id']}")
    response = await client.post(
        f"{TRASH}/investor/{ids['investor']}/restore", headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "contact@quintavalle.fr"


async def test_a_trashed_kpi_month_can_be_recorded_again_and_its_restore_then_conflicts(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_investor(client, admin_headers)
    await delete(client, admin_headers, f"{KPIS}/{ids['kpi']}")
    again = await client.post(
        f"{KPIS}/investor/{ids['investor']}",
        json={"year": 2026, "month": 1, "rdv_count": 1},
        headers=admin_headers,
    )
    assert again.status_code == 201, again.text
    assert again.json()["id"] != ids["kpi"]
    # An upsert of that month now updates the live row, never the trashed one.
    upserted = await client.post(
        f"{KPIS}/investor/{ids['investor']}",
        json={"year": 2026, "month": 1, "rdv_count": 7},
        headers=admin_headers,
    )
    assert upserted.status_code == 200, upserted.text
    assert upserted.json()["id"] == again.json()["id"]

    response = await client.post(f"{TRASH}/kpi/{ids['kpi']}/restore", headers=admin_headers)
    assert response.status_code == 409
    assert error_of(response)["code"] == "restore_conflict"
    assert await scalar("SELECT rdv_count FROM kpis WHERE id = :id", id=ids["kpi"]) == 4
    assert await scalar("SELECT deleted_at IS NOT NULL FROM kpis WHERE id = :id", id=ids["kpi"])


# --- purge ------------------------------------------------------------------------------------


async def test_an_admin_purges_an_investor_now_with_everything_it_took(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    ids = await arrange_investor(client, admin_headers)
    await delete(client, admin_headers, f"{CONTACTS}/{ids['contact']}")
    await delete(client, admin_headers, f"{INVESTORS}/{ids['investor']}")

    await delete(client, admin_headers, f"{TRASH}/investor/{ids['investor']}")

    for table, column in [
        ("investors", "id"),
        ("contacts", "investor_id"),
        ("interactions", "investor_id"),
        ("kpis", "investor_id"),
        ("investor_stage_changes", "investor_id"),
    ]:
        count = await scalar(f"SELECT count(*) FROM {table} WHERE {column} = :i", i=ids["investor"])
        assert count == 0, table
    # The contact trashed on its own before went with its investor, entry and all.
    assert await scalar("SELECT count(*) FROM trash_entries") == 0
    assert await trash_items(client, admin_headers) == []
    for entity in ("investor", "contact"):
        response = await client.post(
            f"{TRASH}/{entity}/{ids[entity]}/restore", headers=admin_headers
        )
        assert response.status_code == 404
        assert error_of(response) == {
            "detail": "This record is not in the trash",
            "code": "not_found",
        }
    after = await views(client, admin_headers, ids)
    assert after["detail"] == after["contact"] == after["kpi"] == 404
    assert after["investors"] == (1, [ids["other"]])
    await assert_counters_exact(client, admin_headers, session)


async def test_purging_one_contact_leaves_its_interactions_without_it(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_investor(client, admin_headers)
    await delete(client, admin_headers, f"{CONTACTS}/{ids['contact']}")
    await delete(client, admin_headers, f"{TRASH}/contact/{ids['contact']}")
    interaction = await get_json(client, admin_headers, f"{INTERACTIONS}/{ids['interaction']}")
    assert interaction["contact_id"] is None
    assert await scalar("SELECT count(*) FROM contacts") == 0


@pytest.mark.committing
async def test_the_nightly_job_purges_what_has_stayed_past_the_retention(
    client: AsyncClient, admin_headers: Headers, session: AsyncSession
) -> None:
    old = await arrange_investor(client, admin_headers)
    await delete(client, admin_headers, f"{CONTACTS}/{old['contact']}")
    await delete(client, admin_headers, f"{INVESTORS}/{old['investor']}")
    recent = await make_investor(client, admin_headers, name="Recent")
    recent_contact = await make_contact(client, admin_headers, recent["id"])
    await delete(client, admin_headers, f"{INVESTORS}/{recent['id']}")
    await delete(client, admin_headers, f"{INVESTORS}/{old['other']}")
    # The old investor's entry is past its purge time, the contact's own entry too; the others
    # are not.
    await execute(
        "UPDATE trash_entries SET purge_after = now() - interval '1 minute' "
        "WHERE (entity = 'investor' AND entity_id = :i) OR entity = 'contact'",
        i=old["investor"],
    )
    assert any(schedule.job_type == "trash.purge" for schedule in schedules)

    job = await JobService(session).enqueue("trash.purge", tasks.PurgePayload())
    await session.commit()
    await JobRunner(db).run(job_types.get("trash.purge"), job)

    assert await scalar("SELECT status FROM jobs WHERE id = :id", id=job) == "succeeded"
    assert await scalar("SELECT count(*) FROM investors WHERE id = :i", i=old["investor"]) == 0
    remaining = await trash_items(client, admin_headers)
    assert sorted((item["entity"], item["id"]) for item in remaining) == sorted(
        [("investor", recent["id"]), ("investor", old["other"])]
    )
    restored = await client.post(f"{TRASH}/investor/{recent['id']}/restore", headers=admin_headers)
    assert restored.status_code == 200, restored.text
    detail = await get_json(client, admin_headers, f"{INVESTORS}/{recent['id']}")
    assert [contact["id"] for contact in detail["contacts"]] == [recent_contact["id"]]
    await assert_counters_exact(client, admin_headers, session)


# --- the list ---------------------------------------------------------------------------------


async def test_the_list_filters_by_entity_author_and_period_and_pages(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_investor(client, admin_headers)
    manager = await create_user("manager@crm.test", role="manager")
    manager_headers = await bearer(manager)
    await delete(client, admin_headers, f"{INTERACTIONS}/{ids['interaction']}")
    await delete(client, manager_headers, f"{KPIS}/{ids['kpi']}")
    await delete(client, manager_headers, f"{INVESTORS}/{ids['other']}")
    # Spread the deletions in time: the interaction a day ago, the KPI an hour ago.
    await execute(
        "UPDATE trash_entries SET deleted_at = now() - CASE entity "
        "WHEN 'interaction' THEN interval '1 day' WHEN 'kpi' THEN interval '1 hour' "
        "ELSE interval '0' END"
    )
    everything = await trash_items(client, manager_headers)
    assert [item["entity"] for item in everything] == ["investor", "kpi", "interaction"]
    assert everything[0]["children"] == 0

    by_manager = await trash_items(client, manager_headers, deleted_by=manager)
    assert [item["entity"] for item in by_manager] == ["investor", "kpi"]
    kpis = await trash_items(client, manager_headers, entity="kpi")
    assert [item["id"] for item in kpis] == [ids["kpi"]]
    now = await scalar("SELECT now()")
    recent = await trash_items(
        client,
        manager_headers,
        **{"from": (now - timedelta(hours=2)).isoformat(), "to": now.isoformat()},
    )
    assert [item["entity"] for item in recent] == ["investor", "kpi"]
    older = await trash_items(client, manager_headers, to=(now - timedelta(hours=2)).isoformat())
    assert [item["entity"] for item in older] == ["interaction"]

    page = await get_json(client, manager_headers, TRASH, skip=1, limit=1)
    assert page["total"] == 3
    assert [item["entity"] for item in page["items"]] == ["kpi"]


@pytest.mark.parametrize(
    "params",
    [
        {"entity": "supplier"},
        {"deleted_by": "me"},
        {"deleted_by": 0},
        {"from": "2026-11-26"},
        {"from": "1700000000"},
        {"to": "2026-11-26T10:00:00"},
        {"limit": 500},
    ],
)
async def test_bad_list_filters_are_422(
    client: AsyncClient, admin_headers: Headers, params: dict[str, Any]
) -> None:
    response = await client.get(TRASH, params=params, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "validation_error"


# --- bad requests -----------------------------------------------------------------------------


async def test_restoring_or_purging_what_is_not_in_the_trash_is_404(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_investor(client, admin_headers)
    for entity in ("investor", "contact", "interaction", "kpi"):
        for url in (f"{TRASH}/{entity}/{ids[entity]}/restore", f"{TRASH}/{entity}/2000000000"):
            method = "POST" if url.endswith("restore") else "DELETE"
            response = await client.request(method, url, headers=admin_headers)
            assert response.status_code == 404, (entity, url)
            assert error_of(response)["code"] == "not_found"
    # Still there, untouched.
    assert (
        await client.get(f"{INVESTORS}/{ids['investor']}", headers=admin_headers)
    ).status_code == 200


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_an_unknown_entity_name_is_422_with_the_allowed_names(
    client: AsyncClient, admin_headers: Headers, method: str
) -> None:
    suffix = "/restore" if method == "POST" else ""
    for name in ("supplier", "investors", "Investor"):
        response = await client.request(method, f"{TRASH}/{name}/1{suffix}", headers=admin_headers)
        assert response.status_code == 422, response.text
        (error,) = error_of(response)["detail"]
        assert error["loc"] == ["path", "entity"]
        for allowed in ("investor", "contact", "interaction", "kpi"):
            assert f"'{allowed}'" in error["msg"]
    response = await client.request(method, f"{TRASH}/investor/abc{suffix}", headers=admin_headers)
    assert response.status_code == 422


async def test_a_manager_restores_but_only_an_admin_purges(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_investor(client, admin_headers)
    manager_headers = await bearer(await create_user("manager@crm.test", role="manager"))
    await delete(client, manager_headers, f"{INVESTORS}/{ids['investor']}")
    refused = await client.delete(f"{TRASH}/investor/{ids['investor']}", headers=manager_headers)
    assert refused.status_code == 403
    assert error_of(refused)["detail"] == (
        "Not allowed for the manager role: only an admin may destroy what is in the trash"
    )
    restored = await client.post(
        f"{TRASH}/investor/{ids['investor']}/restore", headers=manager_headers
    )
    assert restored.status_code == 200, restored.text
    user_headers = await bearer(await create_user("user@crm.test", role="user"))
    assert (await client.get(TRASH, headers=user_headers)).status_code == 403
