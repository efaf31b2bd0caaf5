"""Round trips between exports, templates and imports: an export re-imported with
`on_duplicate=update` changes nothing (its read-only columns accepted and ignored, its
apostrophes, decimal commas, labels and Oui/Non read back); a template filled with 1,000 rows
and committed exports every value as it was typed (money to the cent, dates, accents).

Exports run through the API; imports are processed by the job's handler in the test's
transaction, as tests/test_imports.py does."""

import io
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import openpyxl  # type: ignore[import-untyped]  # ships no type information
import pytest
from httpx import AsyncClient

from services.spreadsheet_columns import COLUMNS, SpreadsheetEntity
from tests.factories import create_user, execute, fetch, make_contact, make_investor, scalar
from tests.test_exports import API, csv_rows, export, post, workbook
from tests.test_imports import csv_bytes, run_import

Headers = dict[str, str]
TABLES = {"investor": "investors", "contact": "contacts", "kpi": "kpis"}
# Every text a spreadsheet would run as a formula, as the first character of a value.
FORMULA_TEXTS = ("-Moins SA", "+Plus", "=SOMME(A1:A2)", "@équipe")


async def table_rows(table: str) -> list[dict[str, Any]]:
    """Every column of every row (timestamps, counters and search texts included)."""
    return [dict(row._mapping) for row in await fetch(f"SELECT * FROM {table} ORDER BY id")]


async def side_effect_counts() -> tuple[int, int, int, int]:
    """What a no-op import must not add: audit entries, stage moves, tasks, interactions."""
    return (
        int(await scalar("SELECT count(*) FROM audit_log WHERE action = 'import'")),
        int(await scalar("SELECT count(*) FROM investor_stage_changes")),
        int(await scalar("SELECT count(*) FROM tasks")),
        int(await scalar("SELECT count(*) FROM interactions")),
    )


async def arrange_crm(client: AsyncClient, headers: Headers) -> dict[str, Any]:
    """Investors, contacts, interactions and KPIs holding every kind of value an export writes:
    texts starting with a formula sign, a phone with `+`, accents and ligatures, line breaks,
    separators and quotes, owners or none, enums, yes/no, amounts with cents, a leap day."""
    owner = await create_user("commercial@crm.test", role="manager")
    first = await make_investor(
        client,
        headers,
        name="Société Générale Épargne",
        email="contact@sge.fr",
        phone="+33 1 23 45 67 89",
        website="https://sge.fr",
        company=FORMULA_TEXTS[0],
        industry=FORMULA_TEXTS[1],
        pipeline_stage="prospect_chaud",
        client_type="institutionnel",
        owner_id=owner,
        notes='@équipe : Cœur & Œuvre\nligne 2 ; "citée", virgule',
    )
    second = await make_investor(
        client,
        headers,
        name=FORMULA_TEXTS[2],
        email="Formule@Example.fr",
        is_active=False,
        client_type="cgpi",
        pipeline_stage="perdu",
        owner_id=None,
    )
    # No email: matched by its exact name. Texts that already start with an apostrophe
    # before a formula sign (the import takes one apostrophe off those) or with a lone one.
    third = await make_investor(
        client,
        headers,
        name="Banque ﬁnancière sans e-mail",
        industry="Æquo",
        company="''+deux apostrophes",
        notes="'=déjà protégé",
        website="'apostrophe seule",
        owner_id=None,
    )
    contact = await make_contact(
        client,
        headers,
        first["id"],
        name="Hélène Dupré",
        email="helene@sge.fr",
        phone="+33 6 12 34 56 78",
        title=FORMULA_TEXTS[0],
        notes=FORMULA_TEXTS[2],
    )
    await make_contact(client, headers, second["id"], name=FORMULA_TEXTS[3], email="jean@ex.fr")
    for investor, body in (
        (first["id"], {"type": "reunion", "date": "2024-02-29", "duration_minutes": 45}),
        (second["id"], {"type": "appel", "date": "2026-11-26", "subject": FORMULA_TEXTS[1]}),
        (third["id"], {"type": "email", "date": "2025-01-01", "notes": "Ligne 1\nLigne 2"}),
    ):
        await post(client, headers, f"{API}/interactions/investor/{investor}", body)
    await post(
        client,
        headers,
        f"{API}/interactions/investor/{first['id']}",
        {
            "type": "webinaire",
            "date": "2026-03-02",
            "contact_id": contact["id"],
            "subject": FORMULA_TEXTS[3],
        },
    )
    kpis: list[tuple[int, dict[str, Any]]] = [
        (
            first["id"],
            {
                "year": 2026,
                "month": 3,
                "revenue": 1234567.89,
                "commission_rate": 2.35,
                "pitchs": 2,
                "notes": FORMULA_TEXTS[2],
            },
        ),
        (first["id"], {"year": 2026, "month": 4, "revenue": 0.01, "closings": 1}),
        (second["id"], {"year": 2025, "month": 12, "revenue": 99.9, "rdv_count": 3}),
    ]
    for investor, body in kpis:
        await post(client, headers, f"{API}/kpis/investor/{investor}", body)
    return {"owner": owner}


# --- an export re-imported changes nothing ------------------------------------------------------


@pytest.mark.parametrize("entity", ["investor", "contact", "kpi"])
@pytest.mark.parametrize(
    ("file_format", "query"),
    [("xlsx", ""), ("xlsx", "lang=en"), ("csv", ""), ("csv", "sep=comma"), ("csv", "lang=en")],
)
async def test_an_export_reimported_with_update_changes_nothing(
    client: AsyncClient, admin_headers: Headers, entity: str, query: str, file_format: str
) -> None:
    await arrange_crm(client, admin_headers)
    response = await export(client, admin_headers, f"{entity}.{file_format}", query)
    assert response.status_code == 200, response.text
    table = TABLES[entity]
    before = await table_rows(table)
    effects = await side_effect_counts()
    result = await run_import(
        client,
        admin_headers,
        response.content,
        entity=entity,
        mode="commit",
        on_duplicate="update",
        filename=f"export.{file_format}",
    )
    # The read-only columns (ID, Créé le, Modifié le) are no unknown_column.
    assert result["errors"] == [] and result["status"] == "succeeded"
    assert (result["rows"], result["valid"]) == (len(before), len(before))
    assert (result["created"], result["updated"], result["skipped"]) == (0, 0, len(before))
    # Not a column changed, updated_at included: nothing was written.
    assert await table_rows(table) == before
    assert await side_effect_counts() == effects


async def test_investors_of_a_deactivated_owner_reimport_unchanged(
    client: AsyncClient, admin_headers: Headers
) -> None:
    """A deactivated user keeps their investors: the export names them as the owner, and
    importing it again changes nothing; giving them a new investor is still refused."""
    arranged = await arrange_crm(client, admin_headers)
    await execute("UPDATE users SET is_active = false WHERE id = :id", id=arranged["owner"])
    response = await export(client, admin_headers, "investor.csv")
    before = await table_rows("investors")
    result = await run_import(
        client, admin_headers, response.content, mode="commit", on_duplicate="update"
    )
    assert result["errors"] == [] and result["skipped"] == len(before)
    assert await table_rows("investors") == before
    header, *rows = csv_rows(response)
    owned = next(row for row in rows if row[header.index("Commercial")])
    unowned = next(row for row in rows if not row[header.index("Commercial")])
    unowned[header.index("Commercial")] = owned[header.index("Commercial")]
    new = [""] * len(header)
    new[header.index("Nom")] = "Nouvel investisseur"
    new[header.index("Commercial")] = "commercial@crm.test"
    content = csv_bytes([header, owned, unowned, new])
    result = await run_import(client, admin_headers, content, mode="commit", on_duplicate="update")
    assert [(e["row"], e["column"], e["value"], e["code"]) for e in result["errors"]] == [
        (3, "Commercial", "commercial@crm.test", "unknown_reference"),
        (4, "Commercial", "commercial@crm.test", "unknown_reference"),
    ]
    assert await table_rows("investors") == before


@pytest.mark.parametrize("file_format", ["xlsx", "csv"])
async def test_exported_interactions_reimport_as_identical_copies(
    client: AsyncClient, admin_headers: Headers, file_format: str
) -> None:
    """Interactions have no duplicate key: their export, imported again, creates a copy of
    each, field for field."""
    await arrange_crm(client, admin_headers)
    fields = "investor_id, contact_id, type, date, duration_minutes, subject, notes"
    originals = await fetch(f"SELECT {fields} FROM interactions ORDER BY id")
    tasks = await table_rows("tasks")
    response = await export(client, admin_headers, f"interaction.{file_format}")
    result = await run_import(
        client,
        admin_headers,
        response.content,
        entity="interaction",
        mode="commit",
        on_duplicate="update",
        filename=f"export.{file_format}",
    )
    assert result["errors"] == [] and result["status"] == "succeeded"
    assert result["created"] == len(originals) == 4
    copies = await fetch(
        f"SELECT {fields} FROM interactions ORDER BY id OFFSET :n",
        n=len(originals),
    )
    assert sorted(map(tuple, copies), key=repr) == sorted(map(tuple, originals), key=repr)
    # No follow-up rule fired for the copies: no task made, none moved.
    assert await table_rows("tasks") == tasks


async def test_an_export_changed_in_a_spreadsheet_updates_only_what_changed(
    client: AsyncClient, admin_headers: Headers
) -> None:
    """The same round trip proves the import reads the export's cells: one edited cell is one
    update, of that field only."""
    await arrange_crm(client, admin_headers)
    response = await export(client, admin_headers, "kpi.xlsx")
    book = workbook(response)
    sheet = book.worksheets[0]
    headers = [cell.value for cell in sheet[1]]
    revenue = headers.index("Chiffre d'affaires") + 1
    edited = next(row for row in range(2, sheet.max_row + 1) if sheet.cell(row, revenue).value)
    kpi_id = sheet.cell(edited, 1).value
    sheet.cell(edited, revenue).value = 4321.05
    buffer = io.BytesIO()
    book.save(buffer)
    before = {row["id"]: row for row in await table_rows("kpis")}
    result = await run_import(
        client,
        admin_headers,
        buffer.getvalue(),
        entity="kpi",
        mode="commit",
        on_duplicate="update",
        filename="kpis.xlsx",
    )
    assert result["errors"] == []
    assert (result["updated"], result["skipped"]) == (1, len(before) - 1)
    after = {row["id"]: row for row in await table_rows("kpis")}
    assert after[kpi_id]["revenue"] == Decimal("4321.05")
    changed = {
        name
        for name, value in after[kpi_id].items()
        if value != before[kpi_id][name] and name != "updated_at"
    }
    assert changed == {"revenue"}
    assert {key: row for key, row in after.items() if key != kpi_id} == {
        key: row for key, row in before.items() if key != kpi_id
    }


# --- a filled template comes back out identical -------------------------------------------------

ROWS = 1_000
STAGES = ["Prospect froid", "Prospect tiède", "Prospect chaud", "En négociation", "Client"]
TYPES = ["Appel", "Réunion", "E-mail", "Webinaire", "Autre"]
TEXTS = [
    "Société Générale Épargne",
    "Cœur & Œuvre ﬁnance",
    "Ærø Capital",
    "Crédit Mutuel d'Île-de-France",
    "Banque Müller \u2013 Zürich",
    "Straße Invest",
]


def investor_values(n: int, owner_email: str) -> dict[str, Any]:
    return {
        "Nom": f"{TEXTS[n % len(TEXTS)]} {n}",
        "E-mail": f"contact{n}@epargne-{n % 7}.fr" if n % 10 else None,
        "Téléphone": "+33 1 23 45 67 89" if n % 3 == 0 else f"06 {n % 100:02d} 00 00 00",
        "Site web": f"https://exemple-{n}.fr",
        "Société": f"-{TEXTS[(n + 1) % len(TEXTS)]}" if n % 4 == 0 else TEXTS[n % len(TEXTS)],
        "Secteur": f"@Gestion privée n°{n}" if n % 5 == 0 else "Gestion d'actifs",
        "Étape": STAGES[n % len(STAGES)],
        "Type de client": ["CGPI", "Wholesale", "Institutionnel", "Autre"][n % 4],
        "Actif": "Non" if n % 6 == 0 else "Oui",
        "Commercial": owner_email if n % 2 else None,
        "Notes": f"Rencontré à Besançon ; « très intéressé »\nsuivi n°{n}" if n % 3 else None,
    }


def kpi_values(n: int) -> dict[str, Any]:
    # 100 investors x 10 months; amounts with cents, up to 9,999,999.99.
    return {
        "E-mail investisseur": f"investisseur{n // 10}@kpi.fr",
        "Année": 2025,
        "Mois": n % 10 + 1,
        "Rendez-vous": n % 9,
        "Pitchs": n % 4,
        "Due diligences": n % 3,
        "Closings": n % 2,
        "Chiffre d'affaires": Decimal(n * 987_654_321 % 1_000_000_000) / 100,
        "Taux de commission (%)": Decimal(n * 37 % 10_000) / 100,
        "Notes": f"Trimestre à revoir \u2013 {TEXTS[n % len(TEXTS)]}" if n % 2 else None,
    }


def interaction_values(n: int) -> dict[str, Any]:
    return {
        "E-mail investisseur": f"investisseur{n % 100}@kpi.fr",
        "Type": TYPES[n % len(TYPES)],
        # Every day from 1 January 2023: a leap day and year ends included.
        "Date": date.fromordinal(date(2023, 1, 1).toordinal() + n),
        "Durée (minutes)": n % 120 or None,
        "Objet": f"Échange n°{n} avec {TEXTS[n % len(TEXTS)]}",
        "Notes": f"=Relance {n}" if n % 11 == 0 else None,
    }


def filled_template(template: bytes, rows: list[dict[str, Any]]) -> bytes:
    """The downloaded template with its example row replaced by `rows`, as a person would fill
    it in a spreadsheet: numbers and dates as typed cells, texts as text."""
    book = openpyxl.load_workbook(io.BytesIO(template))
    sheet = book.worksheets[0]
    headers = [cell.value for cell in sheet[1]]
    sheet.delete_rows(2)
    for offset, values in enumerate(rows):
        for name, value in values.items():
            cell = sheet.cell(offset + 2, headers.index(name) + 1)
            cell.value = float(value) if isinstance(value, Decimal) else value
            if isinstance(value, str):
                # openpyxl would store a text starting with `=` as a formula.
                cell.data_type = "s"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def xlsx_expected(value: Any) -> Any:
    """The cell an xlsx export holds for a typed value."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return value


def csv_expected(value: Any) -> str:
    """The cell a French CSV export holds: decimal comma, ISO date, apostrophe before a
    formula sign, an empty cell for none."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value:.2f}".replace(".", ",")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def exported_records(
    entity: str, header: list[Any], rows: list[list[Any]], key: list[str]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The export's rows by their key, each a mapping of French header to cell."""
    records = [dict(zip(header, row, strict=True)) for row in rows]
    assert header == [column.header_fr for column in COLUMNS[SpreadsheetEntity(entity)]]
    return {tuple(record[name] for name in key): record for record in records}


@pytest.mark.parametrize(
    ("entity", "key"),
    [
        ("investor", ["Nom"]),
        ("kpi", ["E-mail investisseur", "Année", "Mois"]),
        ("interaction", ["Objet"]),
    ],
)
async def test_a_template_filled_with_1000_rows_exports_every_value_as_typed(
    client: AsyncClient, admin_headers: Headers, entity: str, key: list[str]
) -> None:
    owner_email = "commercial@crm.test"
    await create_user(owner_email, role="manager")
    await execute(
        "INSERT INTO investors (name, email) "
        "SELECT 'Investisseur ' || n, 'investisseur' || n || '@kpi.fr' "
        "FROM generate_series(0, 99) AS n"
    )
    if entity == "investor":
        rows = [investor_values(n, owner_email) for n in range(ROWS)]
    elif entity == "kpi":
        rows = [kpi_values(n) for n in range(ROWS)]
    else:
        rows = [interaction_values(n) for n in range(ROWS)]
    template = await client.get(f"{API}/imports/templates/{entity}.xlsx", headers=admin_headers)
    assert template.status_code == 200, template.text
    content = filled_template(template.content, rows)
    result = await run_import(
        client, admin_headers, content, entity=entity, mode="commit", filename="modele.xlsx"
    )
    assert result["errors"] == [] and result["status"] == "succeeded"
    assert (result["rows"], result["created"]) == (ROWS, ROWS)

    book = workbook(await export(client, admin_headers, f"{entity}.xlsx"))
    sheet_rows = [list(row) for row in book.worksheets[0].iter_rows(values_only=True)]
    in_xlsx = exported_records(entity, sheet_rows[0], sheet_rows[1:], key)
    header, *lines = csv_rows(await export(client, admin_headers, f"{entity}.csv"))
    in_csv = exported_records(entity, header, lines, key)
    if entity == "investor":
        in_xlsx = {k: v for k, v in in_xlsx.items() if not k[0].startswith("Investisseur ")}
        in_csv = {k: v for k, v in in_csv.items() if not k[0].startswith("Investisseur ")}
    assert len(in_xlsx) == len(in_csv) == ROWS
    for values in rows:
        typed = tuple(xlsx_expected(values[name]) for name in key)
        cells = in_xlsx[typed]
        assert {name: cells[name] for name in values} == {
            name: xlsx_expected(value) for name, value in values.items()
        }, typed
        written = tuple(csv_expected(values[name]) for name in key)
        cells = in_csv[written]
        assert {name: cells[name] for name in values} == {
            name: csv_expected(value) for name, value in values.items()
        }, written
    if entity == "kpi":
        # To the cent in the database too, not only once written out.
        stored = await fetch(
            "SELECT k.month, k.revenue, k.commission_rate FROM kpis k "
            "JOIN investors i ON i.id = k.investor_id WHERE i.email = 'investisseur7@kpi.fr' "
            "ORDER BY k.month"
        )
        assert [(row.revenue, row.commission_rate) for row in stored] == [
            (values["Chiffre d'affaires"], values["Taux de commission (%)"])
            for values in rows[70:80]
        ]
