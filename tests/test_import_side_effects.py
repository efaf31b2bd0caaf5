"""What a committed import does beside its rows: its stage-history entries carry
`source = import`, it fires no follow-up rule, and the import's creator is notified when its
job ends (import_finished), whatever the outcome."""

from typing import Any

from httpx import AsyncClient

from core import clock
from tests.factories import bearer, create_user, execute, fetch, first_admin_id, scalar
from tests.test_imports import csv_bytes, process, run_import, upload

INVESTORS = "/api/v1/investors"
Headers = dict[str, str]


async def stage_history(client: AsyncClient, headers: Headers, investor_id: int) -> list[Any]:
    response = await client.get(f"{INVESTORS}/{investor_id}/stage-history", headers=headers)
    assert response.status_code == 200, response.text
    return [(c["from_stage"], c["to_stage"], c["source"]) for c in response.json()]


# --- stage history ------------------------------------------------------------------------------


async def test_stage_moves_made_by_an_import_carry_source_import(
    client: AsyncClient, admin_headers: Headers
) -> None:
    created = csv_bytes([["Nom", "E-mail", "Étape"], ["Acme", "a@acme.fr", "Prospect tiède"]])
    result = await run_import(client, admin_headers, created, mode="commit")
    assert result["created"] == 1, result
    investor_id = int(await scalar("SELECT id FROM investors WHERE email = 'a@acme.fr'"))
    moved = csv_bytes([["Nom", "E-mail", "Étape"], ["Acme", "a@acme.fr", "En négociation"]])
    result = await run_import(client, admin_headers, moved, mode="commit", on_duplicate="update")
    assert result["updated"] == 1, result
    response = await client.patch(
        f"{INVESTORS}/{investor_id}", json={"pipeline_stage": "client"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert await stage_history(client, admin_headers, investor_id) == [
        (None, "prospect_tiede", "import"),
        ("prospect_tiede", "en_negociation", "import"),
        ("en_negociation", "client", "api"),
    ]


async def test_an_investor_created_through_the_api_has_an_api_stage_entry(
    client: AsyncClient, admin_headers: Headers
) -> None:
    response = await client.post(INVESTORS, json={"name": "Beta"}, headers=admin_headers)
    assert response.status_code == 201, response.text
    investor_id = response.json()["id"]
    move = await client.put(f"{INVESTORS}/{investor_id}/move-to-next-stage", headers=admin_headers)
    assert move.status_code == 200, move.text
    assert await stage_history(client, admin_headers, investor_id) == [
        (None, "prospect_froid", "api"),
        ("prospect_froid", "prospect_tiede", "api"),
    ]
    # Rows written without naming a source (a script, an older writer) default to `api`.
    await execute(
        "INSERT INTO investor_stage_changes (investor_id, to_stage) VALUES (:i, 'perdu')",
        i=investor_id,
    )
    assert (await stage_history(client, admin_headers, investor_id))[-1][2] == "api"


# --- follow-up rules ----------------------------------------------------------------------------


async def test_imported_interactions_and_stage_moves_create_no_task(
    client: AsyncClient, admin_headers: Headers
) -> None:
    today = clock.today().isoformat()
    investors = csv_bytes(
        [
            ["Nom", "E-mail", "Étape"],
            ["Chaud dès la création", "chaud@ex.fr", "Prospect chaud"],
            ["Réchauffé", "tiede@ex.fr", "Prospect tiède"],
            ["En négociation", "nego@ex.fr", "En négociation"],
            ["Client", "client@ex.fr", "Client"],
        ]
    )
    assert (await run_import(client, admin_headers, investors, mode="commit"))["created"] == 4
    warmed = csv_bytes([["E-mail", "Nom", "Étape"], ["tiede@ex.fr", "Réchauffé", "prospect_chaud"]])
    result = await run_import(client, admin_headers, warmed, mode="commit", on_duplicate="update")
    assert result["updated"] == 1, result
    interactions = csv_bytes(
        [
            ["E-mail investisseur", "Type", "Date"],
            *[["tiede@ex.fr", kind, today] for kind in ("Appel", "Réunion", "E-mail")],
        ]
    )
    result = await run_import(
        client, admin_headers, interactions, entity="interaction", mode="commit"
    )
    assert result["created"] == 3, result
    assert await scalar("SELECT count(*) FROM tasks") == 0
    # The same through the API fires the rules: the import's silence is its own.
    investor_id = int(await scalar("SELECT id FROM investors WHERE email = 'nego@ex.fr'"))
    response = await client.post(
        f"/api/v1/interactions/investor/{investor_id}",
        json={"type": "appel", "date": today},
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    response = await client.patch(
        f"{INVESTORS}/{investor_id}", json={"pipeline_stage": "client"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    sources = await fetch("SELECT source FROM tasks ORDER BY id")
    assert [row.source for row in sources] == ["rule:interaction_appel", "rule:stage_client"]


# --- import_finished notification ---------------------------------------------------------------


async def notifications() -> list[tuple[Any, ...]]:
    rows = await fetch("SELECT user_id, kind, title, body, link FROM notifications ORDER BY id")
    return [tuple(row) for row in rows]


async def test_the_creator_is_notified_when_an_import_ends_whatever_its_outcome(
    client: AsyncClient, admin_headers: Headers
) -> None:
    manager = await create_user("gestion@crm.test", role="manager")
    headers = await bearer(manager)
    admin = await first_admin_id()
    await execute("INSERT INTO investors (name, email) VALUES ('Déjà', 'deja@ex.fr')")
    good = csv_bytes(
        [
            ["Nom", "E-mail"],
            ["Acme", "a@acme.fr"],
            ["Beta", "b@beta.fr"],
            ["Déjà", "deja@ex.fr"],
        ]
    )
    dry_run = await run_import(client, headers, good, filename="a.csv", on_duplicate="skip")
    commit = await run_import(
        client, headers, good, filename="b.csv", on_duplicate="update", mode="commit"
    )
    bad = csv_bytes([["Nom", "E-mail", "Couleur"], ["", "x@"], ["Gamma", "pas-une-adresse"]])
    refused = await run_import(client, admin_headers, bad, filename="c.csv", mode="commit")
    assert refused["error_count"] == 4, refused["errors"]
    link = "/api/v1/imports/{}".format
    assert await notifications() == [
        (
            manager,
            "import_finished",
            "Essai d'import réussi : 2 à créer, 0 à mettre à jour",
            "a.csv : 3 lignes lues, 1 ignorée, rien n'a été écrit (essai à blanc).",
            link(dry_run["id"]),
        ),
        (
            manager,
            "import_finished",
            "Import terminé : 2 créés, 0 mis à jour",
            "b.csv : 3 lignes lues, 1 ignorée.",
            link(commit["id"]),
        ),
        # The admin's own import: they hear of it, the manager does not.
        (
            admin,
            "import_finished",
            "Import échoué : 4 erreurs",
            "c.csv : 2 lignes lues, rien n'a été écrit.",
            link(refused["id"]),
        ),
    ]
    # The notification's link is the import, which its creator may read.
    response = await client.get(link(commit["id"]), headers=headers)
    assert response.status_code == 200 and response.json()["created"] == 2


async def test_a_dry_run_with_errors_and_an_import_without_its_file_notify_too(
    client: AsyncClient, admin_headers: Headers
) -> None:
    admin = await first_admin_id()
    bad = csv_bytes([["Nom", "E-mail"], ["Acme", "x@"]])
    dry_run = await run_import(client, admin_headers, bad, filename="essai.csv")
    accepted = (
        await upload(client, admin_headers, bad, filename="perdu.csv", mode="commit")
    ).json()
    await execute("UPDATE imports SET upload = NULL WHERE id = :id", id=accepted["id"])
    await process(accepted["id"])
    assert await notifications() == [
        (
            admin,
            "import_finished",
            "Essai d'import : 1 erreur",
            "essai.csv : 1 ligne lue, rien n'a été écrit.",
            f"/api/v1/imports/{dry_run['id']}",
        ),
        (
            admin,
            "import_finished",
            "Import échoué : 1 erreur",
            "perdu.csv : 0 ligne lue, rien n'a été écrit.",
            f"/api/v1/imports/{accepted['id']}",
        ),
    ]
