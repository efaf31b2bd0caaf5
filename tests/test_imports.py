"""Spreadsheet imports: the upload's checks before the 202, the job's row-level errors, dry run,
all-or-nothing commit, duplicates, CSV encodings and separators, xlsx types, errors.csv.

The job's handler runs here in the test's transaction (`process`), as the worker runs it; one
committing test goes through a real worker and the queue."""

import csv
import io
import tracemalloc
import zipfile
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
import xlsxwriter  # type: ignore[import-untyped]  # ships no type information
from httpx import AsyncClient, Response

from core.db import db
from core.jobs import JobContext
from models.data_import import ImportFormat
from services import import_job
from services.import_job import ImportPayload, ImportRunner
from services.import_reader import InvalidFile, count_data_rows
from tests.conftest import error_of
from tests.factories import bearer, create_user, execute, fetch, insert_investor, scalar
from tests.worker_process import finished, worker_in_process

IMPORTS = "/api/v1/imports"
INVESTOR_HEADER = ["Nom", "E-mail", "Téléphone", "Étape", "Type de client", "Notes"]


def csv_bytes(rows: list[list[Any]], *, separator: str = ";", encoding: str = "utf-8-sig") -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=separator, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode(encoding)


def xlsx_bytes(*sheets: tuple[str, list[list[Any]]]) -> bytes:
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"in_memory": True})
    dates = workbook.add_format({"num_format": "dd/mm/yyyy"})
    for name, rows in sheets:
        sheet = workbook.add_worksheet(name)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                if isinstance(value, date):
                    sheet.write_datetime(r, c, datetime(value.year, value.month, value.day), dates)
                elif isinstance(value, str):
                    # Written as typed text: never read back as a formula.
                    sheet.write_string(r, c, value)
                elif value is not None:
                    sheet.write(r, c, value)
    workbook.close()
    return buffer.getvalue()


async def upload(
    client: AsyncClient,
    headers: dict[str, str],
    content: bytes,
    *,
    filename: str = "fichier.csv",
    **form: str,
) -> Response:
    form.setdefault("entity", "investor")
    return await client.post(
        IMPORTS,
        files={"file": (filename, content, "application/octet-stream")},
        data=form,
        headers=headers,
    )


async def _no_progress(_: int) -> None:
    return None


async def process(import_id: int) -> None:
    """Run the import's job handler as the worker does, in a transaction of its own."""
    async with db.sessionmaker() as session, session.begin():
        await ImportRunner(session, _no_progress).run(import_id)


async def run_import(
    client: AsyncClient, headers: dict[str, str], content: bytes, **form: str
) -> dict[str, Any]:
    """Upload, process, and the import's body once processed."""
    accepted = await upload(client, headers, content, **form)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "queued" and body["progress"] == 0, body
    await process(body["id"])
    response = await client.get(f"{IMPORTS}/{body['id']}", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def codes(result: dict[str, Any]) -> list[tuple[int | None, str | None, str]]:
    return [(error["row"], error["column"], error["code"]) for error in result["errors"]]


async def investor_count() -> int:
    return int(await scalar("SELECT count(*) FROM investors WHERE deleted_at IS NULL"))


# --- dry run and commit ------------------------------------------------------------------------


async def test_a_dry_run_counts_what_a_commit_would_do_and_writes_nothing(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = csv_bytes(
        [
            INVESTOR_HEADER,
            ["Acme Capital", "contact@acme.fr", "01 23 45 67 89", "Prospect chaud", "cgpi", ""],
            ["Banque Martin", "", "", "", "", "Sans e-mail"],
        ]
    )
    result = await run_import(client, admin_headers, content)
    assert result["status"] == "succeeded"
    assert result["mode"] == "dry_run" and result["on_duplicate"] == "error"
    assert (result["rows"], result["valid"], result["created"], result["error_count"]) == (
        2,
        2,
        2,
        0,
    )
    assert result["progress"] == 100 and result["finished_at"] is not None
    assert result["filename"] == "fichier.csv" and result["errors"] == []
    assert await investor_count() == 0
    assert await scalar("SELECT count(*) FROM audit_log WHERE action = 'import'") == 0
    # The upload is gone once its job ended.
    assert await scalar("SELECT upload IS NULL FROM imports WHERE id = :id", id=result["id"])


async def test_a_commit_writes_every_value_the_owner_the_stage_history_and_the_audit(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    owner = await create_user("vendeuse@crm.test")
    admin = int(await scalar("SELECT id FROM users WHERE role = 'admin'"))
    content = xlsx_bytes(
        (
            "Investisseurs",
            [
                [*INVESTOR_HEADER, "Actif", "Commercial", "Site web"],
                [
                    "Société Générale Gestion",
                    "Contact@SG.fr",
                    "'+33 1 23 45 67 89",
                    "En négociation",
                    "Institutionnel",
                    "'-moins de risques",
                    "Non",
                    "VENDEUSE@crm.test",
                    "https://sg.fr",
                ],
                ["Acme Capital", "", 612345678, "prospect_froid", "", "", "oui", "", ""],
            ],
        )
    )
    result = await run_import(
        client, admin_headers, content, mode="commit", filename="investisseurs.xlsx"
    )
    assert result["status"] == "succeeded", result
    assert (result["created"], result["updated"], result["skipped"]) == (2, 0, 0)
    rows = await fetch(
        "SELECT name, email, phone, pipeline_stage, client_type, notes, is_active, owner_id, "
        "website FROM investors ORDER BY name"
    )
    assert [tuple(row) for row in rows] == [
        ("Acme Capital", None, "612345678", "prospect_froid", None, None, True, None, None),
        (
            "Société Générale Gestion",
            "Contact@sg.fr",
            "+33 1 23 45 67 89",
            "en_negociation",
            "institutionnel",
            "-moins de risques",
            False,
            owner,
            "https://sg.fr",
        ),
    ]
    history = await fetch(
        "SELECT from_stage, to_stage, changed_by FROM investor_stage_changes ORDER BY to_stage"
    )
    assert [tuple(row) for row in history] == [
        (None, "en_negociation", admin),
        (None, "prospect_froid", admin),
    ]
    entries = await fetch(
        "SELECT entity, actor_id, changes->>'name' AS name FROM audit_log "
        "WHERE action = 'import' ORDER BY entity_id"
    )
    assert [tuple(entry) for entry in entries] == [
        ("investor", admin, "Société Générale Gestion"),
        ("investor", admin, "Acme Capital"),
    ]


async def test_a_commit_with_one_bad_row_among_10000_writes_nothing_and_reports_that_row(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    rows: list[list[Any]] = [["Nom", "E-mail"]]
    rows += [[f"Investisseur {n}", f"investisseur{n}@example.fr"] for n in range(10_000)]
    rows[5_001][1] = "pas-une-adresse"
    result = await run_import(client, admin_headers, csv_bytes(rows), mode="commit")
    assert result["status"] == "failed"
    assert (result["rows"], result["valid"], result["error_count"]) == (10_000, 9_999, 1)
    assert (result["created"], result["updated"], result["skipped"]) == (0, 0, 0)
    (error,) = result["errors"]
    # Header = row 1: the 5,001st data row is the spreadsheet's row 5,002.
    assert error == {
        "row": 5_002,
        "column": "E-mail",
        "value": "pas-une-adresse",
        "code": "invalid_email",
        "message": "Not a valid email address",
    }
    assert await investor_count() == 0
    assert await scalar("SELECT count(*) FROM audit_log WHERE action = 'import'") == 0


async def test_more_keys_than_a_statement_can_bind_are_looked_up_in_one_array(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    # 40,000 emails: an IN list would bind 40,000 parameters, past the driver's 32,767.
    rows: list[list[Any]] = [["Nom", "E-mail"]]
    rows += [[f"Investisseur {n}", f"investisseur{n}@example.fr"] for n in range(40_000)]
    await execute("INSERT INTO investors (name, email) VALUES ('Déjà', 'investisseur7@example.fr')")
    result = await run_import(client, admin_headers, csv_bytes(rows), on_duplicate="skip")
    assert result["status"] == "succeeded", result["errors"][:3]
    assert (result["created"], result["skipped"]) == (39_999, 1)


async def test_importing_the_same_file_twice_with_skip_creates_nothing_the_second_time(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = csv_bytes(
        [
            ["Nom", "E-mail", "Notes"],
            ["Acme Capital", "contact@acme.fr", "a"],
            ["Banque Martin", "", "b"],
            ["Fonds Durand", "FONDS@durand.fr", "c"],
        ]
    )
    first = await run_import(client, admin_headers, content, mode="commit")
    assert first["created"] == 3
    second = await run_import(client, admin_headers, content, mode="commit", on_duplicate="skip")
    assert second["status"] == "succeeded"
    assert (second["created"], second["updated"], second["skipped"]) == (0, 0, 3)
    assert await investor_count() == 3


async def test_update_changes_only_what_differs_and_records_it(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    original = [
        ["Nom", "E-mail", "Étape", "Notes"],
        ["Acme Capital", "contact@acme.fr", "Prospect froid", "Première note"],
        ["Banque Martin", "banque@martin.fr", "Client", ""],
    ]
    await run_import(client, admin_headers, csv_bytes(original), mode="commit")
    changed = [row[:] for row in original]
    changed[1][2], changed[1][3] = "Prospect tiède", "Rappeler"
    result = await run_import(
        client, admin_headers, csv_bytes(changed), mode="commit", on_duplicate="update"
    )
    assert (result["created"], result["updated"], result["skipped"]) == (0, 1, 1)
    row = (await fetch("SELECT pipeline_stage, notes FROM investors WHERE name = 'Acme Capital'"))[
        0
    ]
    assert tuple(row) == ("prospect_tiede", "Rappeler")
    history = await fetch(
        "SELECT from_stage, to_stage FROM investor_stage_changes ORDER BY id DESC LIMIT 1"
    )
    assert tuple(history[0]) == ("prospect_froid", "prospect_tiede")
    (entry,) = await fetch(
        "SELECT changes FROM audit_log WHERE action = 'import' ORDER BY id DESC LIMIT 1"
    )
    assert entry.changes == {
        "notes": ["Première note", "Rappeler"],
        "pipeline_stage": ["prospect_froid", "prospect_tiede"],
    }
    # The same file again: nothing differs.
    again = await run_import(
        client, admin_headers, csv_bytes(changed), mode="commit", on_duplicate="update"
    )
    assert (again["updated"], again["skipped"]) == (0, 2)


async def test_a_duplicate_with_on_duplicate_error_is_refused(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await execute("INSERT INTO investors (name, email) VALUES ('Acme', 'contact@acme.fr')")
    content = csv_bytes([["Nom", "E-mail"], ["Acme bis", "CONTACT@acme.fr"], ["Autre", ""]])
    result = await run_import(client, admin_headers, content, mode="commit")
    assert result["status"] == "failed"
    assert codes(result) == [(2, "E-mail", "duplicate")]
    assert await investor_count() == 1


async def test_trashed_records_are_never_matched_nor_referenced(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    trashed = await insert_investor("Ancien Fonds")
    await execute("UPDATE investors SET email = 'ancien@fonds.fr' WHERE id = :id", id=trashed)
    deleted = await client.delete(f"/api/v1/investors/{trashed}", headers=admin_headers)
    assert deleted.status_code == 204, deleted.text
    contacts = csv_bytes(
        [
            ["E-mail investisseur", "ID investisseur", "Nom"],
            ["ancien@fonds.fr", "", "Jeanne"],
            ["", str(trashed), "Paul"],
        ]
    )
    refused = await run_import(client, admin_headers, contacts, entity="contact")
    assert codes(refused) == [
        (2, "E-mail investisseur", "unknown_reference"),
        (3, "ID investisseur", "unknown_reference"),
    ]
    # The trashed investor's email is free for a new one.
    reused = csv_bytes([["Nom", "E-mail"], ["Nouveau Fonds", "ancien@fonds.fr"]])
    result = await run_import(client, admin_headers, reused, mode="commit")
    assert result["created"] == 1 and result["errors"] == []
    assert await investor_count() == 1


# --- error codes -------------------------------------------------------------------------------


async def test_every_investor_error_code_is_reported_on_its_row_and_column(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await execute("INSERT INTO investors (name, email) VALUES ('Déjà là', 'deja@la.fr')")
    content = csv_bytes(
        [
            ["Nom", "E-mail", "Étape", "Couleur", "Commercial", "Actif"],
            ["", "sans@nom.fr", "", "bleu", "", ""],
            ["Mauvais e-mail", "arobase@", "", "", "", ""],
            ["x" * 256, "", "", "", "", ""],
            ["Mauvaise étape", "", "Prospect bouillant", "", "", ""],
            ["Premier", "double@fichier.fr", "", "", "", ""],
            ["Second", "DOUBLE@fichier.fr", "", "", "", ""],
            ["Existant", "deja@la.fr", "", "", "", ""],
            ["Sans commercial connu", "", "", "", "inconnu@crm.test", ""],
            ["Actif douteux", "", "", "", "", "peut-être"],
        ]
    )
    result = await run_import(client, admin_headers, content)
    assert result["status"] == "failed"
    assert codes(result) == [
        (1, "Couleur", "unknown_column"),
        (2, "Nom", "required"),
        (3, "E-mail", "invalid_email"),
        (4, "Nom", "too_long"),
        (5, "Étape", "invalid_value"),
        (7, "E-mail", "duplicate_in_file"),
        (8, "E-mail", "duplicate"),
        (9, "Commercial", "unknown_reference"),
        (10, "Actif", "invalid_value"),
    ]
    by_row = {error["row"]: error for error in result["errors"]}
    assert "Prospect froid" in by_row[5]["message"] and "Perdu" in by_row[5]["message"]
    assert by_row[7]["message"] == "Same key as row 6"
    assert by_row[1]["value"] is None
    assert (result["rows"], result["valid"]) == (9, 1)


async def test_interaction_and_kpi_cells_are_read_as_people_type_them(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await insert_investor("Acme Capital")
    await execute("UPDATE investors SET email = 'contact@acme.fr' WHERE id = :id", id=investor)
    interactions = csv_bytes(
        [
            ["ID investisseur", "E-mail investisseur", "Type", "Date", "Durée (minutes)", "Objet"],
            [str(investor), "", "Appel", "03/02/2026", "30", "Premier appel"],
            ["", "CONTACT@acme.fr", "reunion", "2026-02-04", "", "=HYPERLINK()"],
            ["", "inconnu@acme.fr", "appel", "2026-02-05", "", ""],
            [str(investor), "", "appel", "31/02/2026", "", ""],
            [str(investor), "", "appel", "2026-02-06", "1 500", ""],
            ["", "", "appel", "2026-02-07", "", ""],
        ]
    )
    result = await run_import(client, admin_headers, interactions, entity="interaction")
    assert codes(result) == [
        (4, "E-mail investisseur", "unknown_reference"),
        (5, "Date", "invalid_date"),
        (6, "Durée (minutes)", "invalid_number"),
        (7, "E-mail investisseur", "required"),
    ]
    kpis = csv_bytes(
        [
            ["ID investisseur", "Année", "Mois", "Chiffre d'affaires", "Taux de commission (%)"],
            [str(investor), "2026", "1", "1 234,56", "2,5"],
            [str(investor), "2026", "2", "1234.56", "3"],
            [str(investor), "2026", "3", "12,5x", ""],
            [str(investor), "2026", "1", "10", ""],
        ]
    )
    result = await run_import(client, admin_headers, kpis, entity="kpi")
    assert codes(result) == [
        (4, "Chiffre d'affaires", "invalid_number"),
        (5, "Mois", "duplicate_in_file"),
    ]
    fixed = csv_bytes(
        [
            ["ID investisseur", "Année", "Mois", "Chiffre d'affaires", "Taux de commission (%)"],
            [str(investor), "2026", "1", "1 234,56", "2,5"],
            [str(investor), "2026", "2", "1234.56", "3"],
        ]
    )
    result = await run_import(client, admin_headers, fixed, entity="kpi", mode="commit")
    assert result["created"] == 2, result
    rows = await fetch("SELECT month, revenue, commission_rate FROM kpis ORDER BY month")
    assert [tuple(row) for row in rows] == [
        (1, Decimal("1234.56"), Decimal("2.50")),
        (2, Decimal("1234.56"), Decimal("3.00")),
    ]
    # The same months with `update`: the KPI upsert's behaviour, by (investor, year, month).
    again = csv_bytes(
        [["ID investisseur", "Année", "Mois", "Rendez-vous"], [str(investor), "2026", "1", "4"]]
    )
    result = await run_import(
        client, admin_headers, again, entity="kpi", mode="commit", on_duplicate="update"
    )
    assert (result["created"], result["updated"]) == (0, 1)
    assert await scalar("SELECT rdv_count FROM kpis WHERE month = 1") == 4


async def test_contacts_are_matched_by_investor_and_email(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    acme = await insert_investor("Acme Capital")
    beta = await insert_investor("Beta Gestion")
    await execute("UPDATE investors SET email = 'contact@beta.fr' WHERE id = :id", id=beta)
    header = ["ID investisseur", "E-mail investisseur", "Nom", "E-mail", "Fonction"]
    first = csv_bytes(
        [
            header,
            [str(acme), "", "Jeanne Martin", "jeanne@acme.fr", "Gérante"],
            ["", "contact@beta.fr", "Jeanne Martin", "jeanne@acme.fr", "Associée"],
            [str(acme), "", "Paul Durand", "", ""],
        ]
    )
    result = await run_import(client, admin_headers, first, entity="contact", mode="commit")
    assert result["created"] == 3, result
    # The same email at another investor is another contact; at the same one, the same.
    again = csv_bytes(
        [
            header,
            [str(acme), "", "Jeanne Martin", "JEANNE@acme.fr", "Directrice"],
            [str(acme), "", "Paul Durand", "", ""],
        ]
    )
    result = await run_import(
        client, admin_headers, again, entity="contact", mode="commit", on_duplicate="update"
    )
    assert (result["created"], result["updated"]) == (1, 1), result
    rows = await fetch("SELECT investor_id, name, title FROM contacts ORDER BY id")
    assert [tuple(row) for row in rows] == [
        (acme, "Jeanne Martin", "Directrice"),
        (beta, "Jeanne Martin", "Associée"),
        (acme, "Paul Durand", None),
        (acme, "Paul Durand", None),
    ]


# --- reading CSV and xlsx ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("separator", "encoding"),
    [(";", "utf-8-sig"), (",", "utf-8"), (";", "cp1252"), (",", "cp1252")],
    ids=["utf-8 bom ;", "utf-8 ,", "windows-1252 ;", "windows-1252 ,"],
)
async def test_csv_in_utf8_or_windows_1252_with_either_separator(
    client: AsyncClient, admin_headers: dict[str, str], separator: str, encoding: str
) -> None:
    content = csv_bytes(
        [
            ["nom", "EMAIL", "telephone", "Notes"],
            ["Société Générale, Paris", "sg@example.fr", "01 23 45 67 89", "Ligne 1\nLigne 2"],
            ["Crédit Agricole; Lyon", "pas-valide", "", ""],
        ],
        separator=separator,
        encoding=encoding,
    )
    result = await run_import(client, admin_headers, content, mode="commit")
    # A quoted newline stays in its row: the next one is row 3 (though on the file's line 4).
    assert codes(result) == [(3, "E-mail", "invalid_email")]
    content = csv_bytes(
        [
            ["nom", "EMAIL", "telephone", "Notes"],
            ["Société Générale, Paris", "sg@example.fr", "01 23 45 67 89", "Ligne 1\nLigne 2"],
        ],
        separator=separator,
        encoding=encoding,
    )
    result = await run_import(client, admin_headers, content, mode="commit")
    assert result["created"] == 1, result
    row = (await fetch("SELECT name, phone, notes FROM investors"))[0]
    assert tuple(row) == ("Société Générale, Paris", "01 23 45 67 89", "Ligne 1\nLigne 2")


async def test_an_xlsx_sheet_chosen_by_name_with_excel_dates_and_numbers(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await insert_investor("Acme Capital")
    content = xlsx_bytes(
        ("Résumé", [["Rien", "à lire"]]),
        (
            "Interactions",
            [
                [None, None, None],
                [None, "ID investisseur", "Type", "Date", "Durée (minutes)"],
                [None, investor, "Webinaire", date(2026, 3, 9), 45],
            ],
        ),
    )
    result = await run_import(
        client,
        admin_headers,
        content,
        entity="interaction",
        sheet="Interactions",
        mode="commit",
        filename="interactions.xlsx",
    )
    assert result["status"] == "succeeded", result
    row = (await fetch("SELECT type, date, duration_minutes, created_by FROM interactions"))[0]
    admin = await scalar("SELECT id FROM users WHERE role = 'admin'")
    assert tuple(row) == ("webinaire", date(2026, 3, 9), 45, admin)
    unknown = await upload(
        client, admin_headers, content, entity="interaction", sheet="Feuil9", filename="i.xlsx"
    )
    assert unknown.status_code == 422
    body = error_of(unknown)
    assert body["code"] == "invalid_file"
    assert body["detail"][0]["loc"] == ["body", "sheet"]


# --- limits, refused before the 202 ------------------------------------------------------------


@pytest.mark.parametrize("size", ["one byte over", "25 MiB"])
async def test_a_file_over_import_max_bytes_is_413(
    client: AsyncClient, admin_headers: dict[str, str], size: str
) -> None:
    from core.config import settings

    # The default limit (20 MiB), which the 25 MiB file exceeds.
    assert settings.import_max_bytes == 20 * 1024 * 1024
    length = settings.import_max_bytes + 1 if size == "one byte over" else 25 * 1024 * 1024
    content = b"Nom\n" + b"a" * (length - 4)
    assert len(content) == length
    response = await upload(client, admin_headers, content)
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    assert await scalar("SELECT count(*) FROM imports") == 0


async def test_a_streamed_body_is_cut_at_import_max_bytes_as_it_arrives(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    from core.config import settings

    sent = 0

    async def chunks() -> Any:
        # No Content-Length: the limit is counted on what arrives.
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        while sent <= settings.import_max_bytes + 1024 * 1024:
            sent += 1024 * 1024
            yield b"x" * (1024 * 1024)

    headers = {**admin_headers, "Content-Type": "multipart/form-data; boundary=b"}
    response = await client.post(IMPORTS, content=chunks(), headers=headers)
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    assert await scalar("SELECT count(*) FROM imports") == 0


async def test_the_general_body_limit_does_not_apply_to_imports(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    from core.config import settings

    # Past MAX_BODY_BYTES (1 MiB) but under IMPORT_MAX_BYTES.
    rows = [["Nom", "Notes"]] + [[f"Investisseur {n}", "x" * 100] for n in range(12_000)]
    content = csv_bytes(rows)
    assert settings.max_body_bytes < len(content) < settings.import_max_bytes
    response = await upload(client, admin_headers, content)
    assert response.status_code == 202, response.text
    # Elsewhere the general limit holds.
    too_big = await client.post(
        "/api/v1/investors", content=b"{" + b" " * len(content) + b"}", headers=admin_headers
    )
    assert too_big.status_code == 413


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64,
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\x00\x01\x02",
        b"\x81\x8d\x8f\x90\x9d" * 10,
    ],
    ids=["png", "pdf", "neither utf-8 nor windows-1252"],
)
async def test_a_file_that_is_neither_xlsx_nor_csv_by_content_is_415(
    client: AsyncClient, admin_headers: dict[str, str], content: bytes
) -> None:
    # Named .csv: the content decides, not the name.
    response = await upload(client, admin_headers, content, filename="donnees.csv")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_file_type"


async def test_a_zip_that_is_no_workbook_is_415(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<document/>")
    response = await upload(client, admin_headers, buffer.getvalue(), filename="x.xlsx")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_file_type"


@pytest.mark.parametrize(
    "content",
    [b"", b"\r\n\r\n", b"Nom;E-mail\r\n", b"Nom;E-mail\r\n;\r\n\r\n"],
    ids=["empty", "blank lines", "header only", "header and a blank row"],
)
async def test_an_empty_or_header_only_file_is_422_empty_file(
    client: AsyncClient, admin_headers: dict[str, str], content: bytes
) -> None:
    response = await upload(client, admin_headers, content)
    assert response.status_code == 422
    assert error_of(response)["code"] == "empty_file"


async def test_a_header_only_workbook_is_422_empty_file(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = xlsx_bytes(("Feuil1", [["Nom", "E-mail"]]))
    response = await upload(client, admin_headers, content, filename="vide.xlsx")
    assert response.status_code == 422
    assert error_of(response)["code"] == "empty_file"


async def test_more_than_100000_data_rows_is_422_and_100000_is_accepted(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    rows = [["Nom"]] + [[f"I{n}"] for n in range(100_000)]
    accepted = await upload(client, admin_headers, csv_bytes(rows))
    assert accepted.status_code == 202, accepted.text
    refused = await upload(client, admin_headers, csv_bytes([*rows, ["Un de trop"]]))
    assert refused.status_code == 422
    assert error_of(refused)["code"] == "too_many_rows"


def _workbook_with_sheet(sheet_xml: bytes) -> bytes:
    """A real workbook whose first sheet's XML is replaced."""
    original = zipfile.ZipFile(io.BytesIO(xlsx_bytes(("Feuil1", [["Nom"], ["Acme"]]))))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in original.infolist():
            data = original.read(member)
            if member.filename == "xl/worksheets/sheet1.xml":
                data = sheet_xml
            archive.writestr(member.filename, data)
    return buffer.getvalue()


async def test_a_formula_without_a_computed_value_is_an_invalid_value(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    def text(ref: str, value: str) -> str:
        return f'<c r="{ref}" t="inlineStr"><is><t>{value}</t></is></c>'

    sheet = (
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        f'<row r="1">{text("A1", "Nom")}{text("B1", "Notes")}</row>'
        f'<row r="2">{text("A2", "Acme")}<c r="B2"><f>CONCAT("a","b")</f></c></row>'
        f'<row r="3">{text("A3", "Beta")}<c r="B3" t="str"><f>CONCAT("a","b")</f><v>ab</v></c>'
        "</row></sheetData></worksheet>"
    ).encode()
    content = _workbook_with_sheet(sheet)
    result = await run_import(client, admin_headers, content, filename="formules.xlsx")
    assert codes(result) == [(2, "Notes", "invalid_value")]
    assert result["errors"][0]["value"] == "(formula)"
    # With its cached value, a formula cell imports that value.
    assert result["valid"] == 1


def zip_bomb() -> bytes:
    """A workbook whose sheet inflates to 201 MiB of zeros, under 1 MiB compressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as part:
            chunk = b"\x00" * (1024 * 1024)
            for _ in range(201):
                part.write(chunk)
    return buffer.getvalue()


def entity_bomb() -> bytes:
    """A workbook whose sheet declares the billion laughs' nested entities."""
    laughs = ['<!ENTITY lol0 "lol">']
    laughs += [f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)]
    sheet = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n' + "\n".join(laughs) + "\n]>\n"
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        '<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>Nom</t></is></c></row>'
        '<row r="2"><c r="A2" t="inlineStr"><is><t>&lol9;</t></is></c></row>'
        "</sheetData></worksheet>"
    ).encode()
    return _workbook_with_sheet(sheet)


async def test_a_zip_bomb_is_refused_as_invalid_file(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = zip_bomb()
    assert len(content) < 1024 * 1024
    response = await upload(client, admin_headers, content, filename="bombe.xlsx")
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_file"


@pytest.mark.parametrize("bomb", [zip_bomb, entity_bomb], ids=["zip bomb", "entity bomb"])
def test_a_bomb_is_refused_with_little_memory(bomb: Any) -> None:
    content = bomb()
    tracemalloc.start()
    try:
        with pytest.raises(InvalidFile):
            count_data_rows(content, ImportFormat.xlsx, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


def _with_declared_size(content: bytes, name: bytes, size: int) -> bytes:
    """The zip with the uncompressed size its central directory declares for `name` changed."""
    data = bytearray(content)
    position = data.find(b"PK\x01\x02")
    while position != -1:
        name_length = int.from_bytes(data[position + 28 : position + 30], "little")
        if data[position + 46 : position + 46 + name_length] == name:
            data[position + 24 : position + 28] = size.to_bytes(4, "little")
            return bytes(data)
        position = data.find(b"PK\x01\x02", position + 4)
    raise AssertionError(f"{name!r} is not in the zip")


async def test_a_part_lying_about_its_size_is_refused(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    sheet = b'<worksheet><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>Nom</t></is>'
    sheet += b"</c></row>" + b" " * 100_000 + b"</sheetData></worksheet>"
    # It declares 100 bytes: inflating it past that must fail rather than be believed.
    content = _with_declared_size(_workbook_with_sheet(sheet), b"xl/worksheets/sheet1.xml", 100)
    response = await upload(client, admin_headers, content, filename="menteur.xlsx")
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_file"


async def test_an_xml_entity_bomb_is_refused_as_invalid_file(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await upload(client, admin_headers, entity_bomb(), filename="x.xlsx")
    assert response.status_code == 422
    body = error_of(response)
    assert body["code"] == "invalid_file"
    (item,) = body["detail"]
    assert item["loc"] == ["body", "file"] and "entities" in item["msg"]


async def test_a_malformed_zip_is_refused_as_invalid_file(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await upload(client, admin_headers, b"PK\x03\x04" + b"\x00" * 200, filename="x.xlsx")
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_file"


# --- reading results ---------------------------------------------------------------------------


async def test_errors_csv_holds_every_error_and_the_body_the_first_1000(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    rows: list[list[Any]] = [["Nom", "E-mail"]]
    rows += [[f"Investisseur {n}", f"=faux{n}"] for n in range(1_200)]
    result = await run_import(client, admin_headers, csv_bytes(rows))
    assert result["error_count"] == 1_200
    assert len(result["errors"]) == 1_000
    response = await client.get(f"{IMPORTS}/{result['id']}/errors.csv", headers=admin_headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    text = response.content.decode("utf-8")
    assert text.startswith("\ufeff")
    lines = list(csv.reader(io.StringIO(text.removeprefix("\ufeff")), delimiter=";"))
    assert lines[0] == ["row", "column", "value", "code", "message"]
    assert len(lines) == 1_201
    # A value a spreadsheet would run as a formula is quoted.
    assert lines[1] == ["2", "E-mail", "'=faux0", "invalid_email", "Not a valid email address"]
    assert lines[-1][0] == "1201"


async def test_imports_are_listed_newest_first_and_an_unknown_one_is_404(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = csv_bytes([["Nom"], ["Acme"]])
    first = (await upload(client, admin_headers, content)).json()
    second = (await upload(client, admin_headers, content, entity="investor")).json()
    listed = await client.get(IMPORTS, headers=admin_headers)
    assert listed.status_code == 200
    body = listed.json()
    assert body["total"] == 2
    assert [item["id"] for item in body["items"]] == [second["id"], first["id"]]
    assert "errors" not in body["items"][0]
    # The name as shown: without the sender's path.
    odd = await upload(client, admin_headers, content, filename="C:\\Users\\léa\\données.csv")
    assert odd.status_code == 202, odd.text
    assert odd.json()["filename"] == "données.csv"
    missing = await client.get(f"{IMPORTS}/999999", headers=admin_headers)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    missing_csv = await client.get(f"{IMPORTS}/999999/errors.csv", headers=admin_headers)
    assert missing_csv.status_code == 404


@pytest.mark.parametrize("role", ["user", "viewer"])
async def test_only_a_manager_or_an_admin_may_import(client: AsyncClient, role: str) -> None:
    headers = await bearer(await create_user(f"{role}@crm.test", role=role))
    response = await upload(client, headers, csv_bytes([["Nom"], ["Acme"]]))
    assert response.status_code == 403
    assert await scalar("SELECT count(*) FROM imports") == 0
    manager = await bearer(await create_user("manager@crm.test", role="manager"))
    assert (await upload(client, manager, csv_bytes([["Nom"], ["Acme"]]))).status_code == 202


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"entity": "fournisseur"}, "entity"),
        ({"mode": "maybe"}, "mode"),
        ({"on_duplicate": "merge"}, "on_duplicate"),
    ],
)
async def test_bad_form_values_are_422(
    client: AsyncClient, admin_headers: dict[str, str], form: dict[str, str], field: str
) -> None:
    response = await upload(client, admin_headers, csv_bytes([["Nom"], ["Acme"]]), **form)
    assert response.status_code == 422
    assert [item["loc"][-1] for item in response.json()["detail"]] == [field]


async def test_anonymisation_scrubs_import_error_values_and_stored_uploads(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await insert_investor("Aurèle Dupuis")
    await execute("UPDATE investors SET email = 'aurele@dupuis.fr' WHERE id = :id", id=investor)
    refused = csv_bytes([["Nom", "E-mail", "Étape"], ["Aurèle Dupuis", "aurele@dupuis.fr", "?"]])
    result = await run_import(client, admin_headers, refused)
    assert result["errors"][0]["value"] == "?"
    duplicate = csv_bytes([["Nom", "E-mail"], ["Aurèle Dupuis", "aurele@dupuis.fr"]])
    result = await run_import(client, admin_headers, duplicate)
    assert result["errors"][0]["value"] == "aurele@dupuis.fr"
    pending = (await upload(client, admin_headers, duplicate)).json()
    response = await client.post(
        "/api/v1/gdpr/anonymize",
        json={"entity": "investor", "id": investor},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.text
    values = await fetch("SELECT value FROM import_errors ORDER BY id")
    assert [row.value for row in values] == ["?", None]
    assert await scalar("SELECT count(*) FROM imports WHERE upload IS NOT NULL") == 0
    # The import still queued finds its file gone.
    await process(pending["id"])
    body = (await client.get(f"{IMPORTS}/{pending['id']}", headers=admin_headers)).json()
    assert body["status"] == "failed"
    assert codes(body) == [(1, None, "invalid_file")]


async def test_an_import_that_keeps_failing_fails_on_its_last_attempt_without_its_upload(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    accepted = (await upload(client, admin_headers, csv_bytes([["Nom"], ["Acme"]]))).json()
    # An entity this version does not know: processing raises, as any unexpected error would.
    await execute("UPDATE imports SET entity = 'supplier' WHERE id = :id", id=accepted["id"])
    payload = ImportPayload(import_id=accepted["id"])
    for attempt in (1, 2):
        async with db.sessionmaker() as session:
            context = JobContext(
                job_id=1,
                attempt=attempt,
                created_by=None,
                session=session,
                report_progress=_no_progress,
            )
            with pytest.raises(ValueError, match="supplier"):
                await import_job.run_import(payload, context)
    assert await scalar("SELECT upload IS NOT NULL FROM imports WHERE id = :id", id=accepted["id"])
    # As the worker runs a handler: its session, committed after it (core/queue.py).
    async with db.sessionmaker() as session:
        context = JobContext(
            job_id=1, attempt=3, created_by=None, session=session, report_progress=_no_progress
        )
        await import_job.run_import(payload, context)
        await session.commit()
    await execute("UPDATE imports SET entity = 'investor' WHERE id = :id", id=accepted["id"])
    body = (await client.get(f"{IMPORTS}/{accepted['id']}", headers=admin_headers)).json()
    assert body["status"] == "failed"
    assert codes(body) == [(1, None, "processing_failed")]
    assert await scalar("SELECT upload IS NULL FROM imports WHERE id = :id", id=accepted["id"])


async def test_the_upload_of_an_import_whose_job_was_cancelled_is_swept(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = csv_bytes([["Nom"], ["Acme"]])
    cancelled = (await upload(client, admin_headers, content)).json()
    waiting = (await upload(client, admin_headers, content)).json()
    job_id = await scalar("SELECT job_id FROM imports WHERE id = :id", id=cancelled["id"])
    response = await client.post(f"/api/v1/jobs/{job_id}/cancel", headers=admin_headers)
    assert response.status_code == 200, response.text
    body = (await client.get(f"{IMPORTS}/{cancelled['id']}", headers=admin_headers)).json()
    assert body["status"] == "cancelled"
    async with db.sessionmaker() as session:
        context = JobContext(
            job_id=1, attempt=1, created_by=None, session=session, report_progress=_no_progress
        )
        await import_job.sweep_uploads(import_job.UploadSweepPayload(), context)
        await session.commit()
    stored = await fetch("SELECT id, upload IS NOT NULL AS stored FROM imports ORDER BY id")
    assert [tuple(row) for row in stored] == [(cancelled["id"], False), (waiting["id"], True)]


@pytest.mark.committing
async def test_an_import_runs_on_the_worker_and_commits(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    content = xlsx_bytes(("Feuil1", [["Nom", "E-mail"], ["Acme", "a@acme.fr"], ["Beta", ""]]))
    accepted = await upload(
        client, admin_headers, content, mode="commit", filename="investisseurs.xlsx"
    )
    assert accepted.status_code == 202, accepted.text
    job_id = await scalar("SELECT job_id FROM imports WHERE id = :id", id=accepted.json()["id"])
    async with worker_in_process(db):
        assert (await finished(job_id)).status == "succeeded"
    body = (await client.get(f"{IMPORTS}/{accepted.json()['id']}", headers=admin_headers)).json()
    assert (body["status"], body["created"], body["progress"]) == ("succeeded", 2, 100)
    assert await investor_count() == 2
    assert await scalar("SELECT upload IS NULL FROM imports") is True
