"""Spreadsheet exports and import templates: the same rows, in the same order, as each list
route with the same filters; trashed rows left out; CSV with a BOM, either separator and no
formula; xlsx cells typed (read back with openpyxl); one audit entry per export; at most
EXPORT_CONCURRENCY at once; templates with their drop-down lists."""

import asyncio
import csv
import io
import zipfile
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl  # type: ignore[import-untyped]  # ships no type information
import pytest
from httpx import AsyncClient, Response
from sqlalchemy import text

from core.config import settings
from core.db import db
from schemas.investor import InvestorFilters
from services.exports import ExportPlan, export_slots, snapshot
from services.spreadsheet_columns import (
    COLUMNS,
    ENUM_LABELS,
    SpreadsheetEntity,
    import_columns,
)
from services.spreadsheet_writers import TEMPLATE_VALIDATED_ROWS, csv_formatter
from tests.conftest import error_of
from tests.factories import (
    bearer,
    create_user,
    execute,
    fetch,
    first_admin_id,
    insert_investor,
    make_contact,
    make_investor,
)

API = "/api/v1"
EXPORTS = f"{API}/exports"
Headers = dict[str, str]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def csv_rows(response: Response, delimiter: str = ";") -> list[list[str]]:
    """The CSV body's rows (header included), once its BOM is checked and removed."""
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(response.content.decode()[1:]), delimiter=delimiter))


def csv_ids(response: Response) -> list[int]:
    return [int(row[0]) for row in csv_rows(response)[1:]]


def workbook(response: Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == XLSX
    return openpyxl.load_workbook(io.BytesIO(response.content))


def widths(sheet: Any) -> dict[int, float]:
    """Each column's width by number (from 1): equal neighbours share one <col> range."""
    return {
        number: dimension.width
        for dimension in sheet.column_dimensions.values()
        if dimension.min is not None
        for number in range(dimension.min, dimension.max + 1)
    }


async def export(client: AsyncClient, headers: Headers, path: str, query: str = "") -> Response:
    return await client.get(f"{EXPORTS}/{path}?{query}", headers=headers)


async def page_ids(client: AsyncClient, headers: Headers, url: str) -> list[int]:
    response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def post(client: AsyncClient, headers: Headers, url: str, body: dict[str, Any]) -> Any:
    response = await client.post(url, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def delete(client: AsyncClient, headers: Headers, url: str) -> None:
    response = await client.delete(url, headers=headers)
    assert response.status_code == 204, response.text


async def arrange_crm(client: AsyncClient, headers: Headers) -> dict[str, Any]:
    """Investors of every stage, type and owner; contacts, interactions and KPIs on them; and a
    trashed investor (with its children) and a trashed contact that no export may show."""
    owner = await create_user("commercial@crm.test", role="manager")
    specs: list[dict[str, Any]] = [
        {"name": "Zénith Gestion", "pipeline_stage": "client", "client_type": "cgpi"},
        {"name": "Alpha Capital", "pipeline_stage": "prospect_chaud", "client_type": "wholesale"},
        {"name": "Banque Mérieux", "pipeline_stage": "client", "client_type": "institutionnel"},
        {"name": "Coral Partners", "is_active": False, "client_type": "cgpi"},
        {"name": "Delta Family Office", "pipeline_stage": "perdu", "owner_id": owner},
        {"name": "Epsilon Invest", "pipeline_stage": "en_negociation", "owner_id": None},
    ]
    investors = [(await make_investor(client, headers, **spec))["id"] for spec in specs]
    contacts = []
    for index, investor in enumerate(investors[:3]):
        for name in ("Yves Roux", "Anne Petit"):
            contact = await make_contact(
                client, headers, investor, name=name, email=f"{name[:4].lower()}{index}@ex.fr"
            )
            contacts.append(contact["id"])
    for index, investor in enumerate(investors):
        for day, kind in ((3, "appel"), (17, "reunion")):
            await post(
                client,
                headers,
                f"{API}/interactions/investor/{investor}",
                {"type": kind, "date": f"2026-0{1 + index % 3}-{day:02d}", "subject": "Suivi"},
            )
        for month in (1, 2):
            await post(
                client,
                headers,
                f"{API}/kpis/investor/{investor}",
                {"year": 2025 + index % 2, "month": month, "revenue": 1234.5, "pitchs": 2},
            )
    trashed = await make_investor(client, headers, name="Aaa Supprimé", client_type="cgpi")
    await make_contact(client, headers, trashed["id"], name="Contact supprimé")
    await post(
        client,
        headers,
        f"{API}/interactions/investor/{trashed['id']}",
        {"type": "appel", "date": "2026-01-10"},
    )
    await post(client, headers, f"{API}/kpis/investor/{trashed['id']}", {"year": 2025, "month": 1})
    await delete(client, headers, f"{API}/investors/{trashed['id']}")
    await delete(client, headers, f"{API}/contacts/{contacts[-1]}")
    return {"investors": investors, "owner": owner, "trashed": trashed["id"]}


INVESTOR_QUERIES = [
    "",
    "pipeline_stage=client",
    "client_type=cgpi&is_active=true",
    "is_active=false",
    "owner_id=me",
    "owner_id=none",
    "sort=-name",
    "sort=-created_at",
    "sort=pipeline_stage",
    "sort=-pipeline_stage&client_type=cgpi",
]


async def test_investor_exports_hold_the_list_rows_in_the_list_order(
    client: AsyncClient, admin_headers: Headers
) -> None:
    arranged = await arrange_crm(client, admin_headers)
    owned = f"owner_id={arranged['owner']}"
    for query in [*INVESTOR_QUERIES, owned]:
        listed = await page_ids(client, admin_headers, f"{API}/investors?limit=200&{query}")
        exported = csv_ids(await export(client, admin_headers, "investor.csv", query))
        assert exported == listed, query
        assert arranged["trashed"] not in exported
        book = workbook(await export(client, admin_headers, "investor.xlsx", query))
        rows = list(book.worksheets[0].iter_rows(min_row=2, values_only=True))
        assert [row[0] for row in rows] == listed, query
    assert len(listed) == 1  # the owner filter found its one investor


@pytest.mark.parametrize(
    ("path", "query", "list_url"),
    [
        ("interaction", "", "/interactions?limit=200"),
        ("interaction", "type=reunion", "/interactions?limit=200&type=reunion"),
        ("interaction", "date_from=2026-02-01&date_to=2026-02-28", None),
        ("interaction", "investor_id={first}", "/interactions?limit=200&investor_id={first}"),
        ("kpi", "", "/kpis?limit=200"),
        ("kpi", "year=2026", "/kpis?limit=200&year=2026"),
        ("kpi", "month=2&investor_id={first}", "/kpis?limit=200&month=2&investor_id={first}"),
        ("contact", "investor_id={first}", "/contacts/investor/{first}?limit=200"),
    ],
)
async def test_other_exports_hold_the_list_rows_in_the_list_order(
    client: AsyncClient, admin_headers: Headers, path: str, query: str, list_url: str | None
) -> None:
    arranged = await arrange_crm(client, admin_headers)
    first = arranged["investors"][0]
    query = query.format(first=first)
    list_url = (list_url or f"/interactions?limit=200&{query}").format(first=first)
    listed = await page_ids(client, admin_headers, API + list_url)
    assert listed
    assert csv_ids(await export(client, admin_headers, f"{path}.csv", query)) == listed


async def test_every_live_contact_is_exported_investor_after_investor(
    client: AsyncClient, admin_headers: Headers
) -> None:
    arranged = await arrange_crm(client, admin_headers)
    expected = []
    for investor in sorted(arranged["investors"]):
        expected += await page_ids(client, admin_headers, f"{API}/contacts/investor/{investor}")
    rows = csv_rows(await export(client, admin_headers, "contact.csv"))
    assert [int(row[0]) for row in rows[1:]] == expected
    assert len(expected) == 5  # six made, one trashed
    assert "Contact supprimé" not in str(rows)


async def test_no_trashed_row_is_exported(client: AsyncClient, admin_headers: Headers) -> None:
    arranged = await arrange_crm(client, admin_headers)
    trashed = arranged["trashed"]
    for entity in ("interaction", "kpi", "contact"):
        rows = csv_rows(await export(client, admin_headers, f"{entity}.csv"))
        assert rows[1:], entity
        assert all(int(row[1]) != trashed for row in rows[1:]), entity
    rows = csv_rows(await export(client, admin_headers, "investor.csv"))
    assert all(int(row[0]) != trashed for row in rows[1:])


async def test_a_search_export_holds_what_the_search_returns_and_says_so(
    client: AsyncClient, admin_headers: Headers
) -> None:
    await arrange_crm(client, admin_headers)
    await make_investor(client, admin_headers, name="Capital Horizon", client_type="cgpi")
    found = await page_ids(client, admin_headers, f"{API}/investors/search?q=capital&limit=200")
    assert len(found) >= 2
    assert csv_ids(await export(client, admin_headers, "investor.csv", "q=capital")) == found
    narrowed = csv_ids(
        await export(client, admin_headers, "investor.csv", "q=capital&client_type=cgpi")
    )
    assert narrowed and set(narrowed) < set(found)
    sorted_by_name = csv_rows(
        await export(client, admin_headers, "investor.csv", "q=capital&sort=name")
    )
    names = [row[1] for row in sorted_by_name[1:]]
    assert names == sorted(names) and len(names) == len(found)
    book = workbook(await export(client, admin_headers, "investor.xlsx", "q=capital"))
    lines = dict(book["Filtres"].iter_rows(values_only=True))
    assert lines["Recherche"] == "capital"
    assert lines["Limite"] == "au plus les 1 000 meilleurs résultats de la recherche"
    assert lines["Lignes"] == str(len(found))
    nothing = csv_rows(await export(client, admin_headers, "investor.csv", "q=xqzwvk"))
    assert len(nothing) == 1  # the header alone


async def test_csv_neutralises_formulas_and_keeps_text_intact(
    client: AsyncClient, admin_headers: Headers
) -> None:
    await make_investor(
        client,
        admin_headers,
        name='=HYPERLINK("http://evil")',
        phone="+33 1 23 45 67 89",
        company="-Moins SA",
        industry="@Finance",
        notes='Ligne 1; avec séparateur\nLigne 2 "citée"',
    )
    # The API trims what it is sent: a leading tab or carriage return can come from elsewhere.
    await execute("UPDATE investors SET website = :w", w="\tonglet")
    header, row = csv_rows(await export(client, admin_headers, "investor.csv"))
    cells = dict(zip(header, row, strict=True))
    assert cells["Nom"] == '\'=HYPERLINK("http://evil")'
    assert cells["Téléphone"] == "'+33 1 23 45 67 89"
    assert cells["Société"] == "'-Moins SA"
    assert cells["Secteur"] == "'@Finance"
    assert cells["Notes"] == 'Ligne 1; avec séparateur\nLigne 2 "citée"'
    assert cells["Site web"] == "'\tonglet"
    name = COLUMNS[SpreadsheetEntity.investor][1]
    assert csv_formatter(name, lang="fr", decimal_comma=True)("\rRetour") == "'\rRetour"
    # Numbers and dates are not text: no apostrophe, even when a spreadsheet would see a sign.
    assert cells["ID"].isdigit()


async def test_xlsx_never_holds_a_formula(client: AsyncClient, admin_headers: Headers) -> None:
    await make_investor(client, admin_headers, name="=1+1", phone="+33 6 00 00 00 00")
    response = await export(client, admin_headers, "investor.xlsx")
    sheet = workbook(response).worksheets[0]
    assert sheet["B2"].value == "=1+1" and sheet["B2"].data_type == "s"
    assert sheet["D2"].value == "+33 6 00 00 00 00" and sheet["D2"].data_type == "s"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in xml


async def test_csv_separators_and_decimal_marks(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor = await make_investor(client, admin_headers, name="Acme, Ltd")
    await post(
        client,
        admin_headers,
        f"{API}/kpis/investor/{investor['id']}",
        {"year": 2026, "month": 3, "revenue": 1234567.8, "commission_rate": 2.5},
    )
    french = await export(client, admin_headers, "kpi.csv")
    header, row = csv_rows(french)
    cells = dict(zip(header, row, strict=True))
    assert header[:4] == ["ID", "ID investisseur", "E-mail investisseur", "Année"]
    assert cells["Chiffre d'affaires"] == "1234567,80"
    assert cells["Taux de commission (%)"] == "2,50"
    assert (
        french.content.decode().splitlines()[0].count(";")
        == len(COLUMNS[SpreadsheetEntity.kpi]) - 1
    )
    english = await export(client, admin_headers, "kpi.csv", "sep=comma&lang=en")
    header, row = csv_rows(english, delimiter=",")
    cells = dict(zip(header, row, strict=True))
    assert header == [column.header_en for column in COLUMNS[SpreadsheetEntity.kpi]]
    assert cells["revenue"] == "1234567.80" and cells["commission_rate"] == "2.50"
    names = csv_rows(await export(client, admin_headers, "investor.csv", "sep=comma"), ",")
    assert names[1][1] == "Acme, Ltd"  # quoted, not split


async def test_xlsx_cells_are_typed_and_the_sheet_laid_out(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor = await make_investor(
        client, admin_headers, name="Hélène Épargne", pipeline_stage="prospect_chaud"
    )
    await post(
        client,
        admin_headers,
        f"{API}/kpis/investor/{investor['id']}",
        {"year": 2026, "month": 4, "revenue": 9876.54, "rdv_count": 3},
    )
    await post(
        client,
        admin_headers,
        f"{API}/interactions/investor/{investor['id']}",
        {"type": "webinaire", "date": "2026-04-02", "duration_minutes": 30},
    )
    kpis = workbook(await export(client, admin_headers, "kpi.xlsx", "year=2026"))
    sheet = kpis.worksheets[0]
    header = [cell.value for cell in sheet[1]]
    assert header == [column.header_fr for column in COLUMNS[SpreadsheetEntity.kpi]]
    assert all(cell.font.b for cell in sheet[1])
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == "A1:N2"
    row = dict(zip(header, sheet[2], strict=True))
    revenue = row["Chiffre d'affaires"]
    assert revenue.data_type == "n" and revenue.value == 9876.54
    assert revenue.number_format == "#,##0.00"
    assert row["Rendez-vous"].value == 3 and row["Année"].value == 2026
    assert row["E-mail investisseur"].value is None  # no email: an empty cell
    assert isinstance(row["Créé le"].value, datetime)
    # Chiffre d'affaires (18) is wider than Mois (8).
    assert widths(sheet)[10] > widths(sheet)[5] >= 8
    lines = dict(kpis["Filtres"].iter_rows(values_only=True))
    assert lines["Filtre year"] == "2026" and lines["Lignes"] == "1"
    interactions = workbook(await export(client, admin_headers, "interaction.xlsx"))
    cells = {
        name.value: cell
        for name, cell in zip(
            interactions.worksheets[0][1], interactions.worksheets[0][2], strict=True
        )
    }
    assert cells["Date"].value == datetime(2026, 4, 2)
    assert cells["Date"].is_date
    assert cells["Type"].value == "Webinaire"
    assert cells["Durée (minutes)"].value == 30
    english = workbook(await export(client, admin_headers, "investor.xlsx", "lang=en"))
    first = english.worksheets[0]
    assert [cell.value for cell in first[1]][:3] == ["id", "name", "email"]
    assert first["H2"].value == "prospect_chaud" and first["J2"].value == "true"
    assert english.sheetnames == ["investors", "Filters"]


async def test_file_names_are_french_and_dated_in_paris(
    client: AsyncClient, admin_headers: Headers
) -> None:
    stems = {"investor": "investisseurs", "contact": "contacts", "interaction": "interactions"}
    stems["kpi"] = "kpis"
    for entity, stem in stems.items():
        for file_format in ("csv", "xlsx"):
            before = datetime.now(ZoneInfo("Europe/Paris")).date()
            response = await export(client, admin_headers, f"{entity}.{file_format}")
            after = datetime.now(ZoneInfo("Europe/Paris")).date()
            assert response.status_code == 200, response.text
            names = {
                f'attachment; filename="{stem}_{day}.{file_format}"' for day in (before, after)
            }
            assert response.headers["content-disposition"] in names


async def test_each_export_is_audited_once_as_its_caller(
    client: AsyncClient, admin_headers: Headers
) -> None:
    manager = await create_user("manager@crm.test", role="manager")
    headers = await bearer(manager)
    await make_investor(client, admin_headers, name="Audité SA")
    assert (
        await export(client, headers, "investor.csv", "client_type=cgpi&q=audit")
    ).status_code == 200
    assert (await export(client, headers, "kpi.xlsx", "year=2026")).status_code == 200
    entries = await fetch(
        "SELECT entity, entity_id, actor_id, actor_kind, changes FROM audit_log "
        "WHERE action = 'export' ORDER BY id"
    )
    assert [(e.entity, e.entity_id, e.actor_id, e.actor_kind) for e in entries] == [
        ("investor", None, manager, "user"),
        ("kpi", None, manager, "user"),
    ]
    assert entries[0].changes == {
        "format": "csv",
        "filters": {"client_type": "cgpi"},
        "sort": None,
        "search": True,
    }
    assert entries[1].changes["format"] == "xlsx"
    assert "audit" not in str(entries[0].changes)  # the search text stays out of the trail


@contextmanager
def every_slot_taken() -> Iterator[None]:
    with ExitStack() as stack:
        for _ in range(settings.export_concurrency):
            stack.enter_context(export_slots.hold())
        yield


async def test_exports_beyond_the_concurrency_are_refused_with_429(
    client: AsyncClient, admin_headers: Headers
) -> None:
    await make_investor(client, admin_headers)
    with every_slot_taken():
        for path in ("investor.csv", "kpi.xlsx"):
            response = await export(client, admin_headers, path)
            assert response.status_code == 429, response.text
            assert error_of(response) == {
                "detail": "Too many exports are running, try again in a moment",
                "code": "export_busy",
            }
    # Refused exports leave no audit entry, and every slot comes back once a file is sent.
    assert await fetch("SELECT id FROM audit_log WHERE action = 'export'") == []
    for _ in range(settings.export_concurrency + 1):
        assert (await export(client, admin_headers, "investor.csv")).status_code == 200
        assert (await export(client, admin_headers, "investor.xlsx")).status_code == 200
    assert export_slots.taken == 0


async def test_a_csv_export_holds_its_slot_until_its_last_byte_is_sent(
    app: Any, admin_headers: Headers
) -> None:
    await insert_investor("Premier")
    await insert_investor("Second")
    # Driven at the ASGI level: what matters is the slot count while the body is being sent.
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"{EXPORTS}/investor.csv",
        "raw_path": f"{EXPORTS}/investor.csv".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")]
        + [(key.lower().encode(), value.encode()) for key, value in admin_headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    taken_while_sending: list[int] = []
    body = b""
    requested, sent = False, asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # The server's disconnect watch: the client leaves once the whole body has come.
        await sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal body
        if message["type"] == "http.response.body":
            taken_while_sending.append(export_slots.taken)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                sent.set()

    await app(scope, receive, send)
    assert b"Premier" in body and b"Second" in body
    assert taken_while_sending and set(taken_while_sending) == {1}
    assert export_slots.taken == 0


async def test_exports_and_templates_are_for_managers_and_admins(client: AsyncClient) -> None:
    user = await bearer(await create_user("user@crm.test", role="user"))
    for url in (f"{EXPORTS}/investor.csv", f"{API}/imports/templates/investor.xlsx"):
        response = await client.get(url, headers=user)
        assert response.status_code == 403, response.text
        assert error_of(response)["code"] == "forbidden"
        assert (await client.get(url)).status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        f"{EXPORTS}/investor.pdf",
        f"{EXPORTS}/investor.csv?lang=de",
        f"{EXPORTS}/investor.csv?sep=tab",
        f"{EXPORTS}/investor.csv?sort=email",
        f"{EXPORTS}/investor.csv?q=",
        f"{EXPORTS}/investor.csv?pipeline_stage=inconnu",
        f"{EXPORTS}/interaction.xlsx?date_from=2026-13-01",
        f"{EXPORTS}/kpi.csv?year=1999",
        f"{EXPORTS}/contact.csv?investor_id=0",
        f"{API}/imports/templates/supplier.xlsx",
    ],
)
async def test_bad_parameters_are_422(
    client: AsyncClient, admin_headers: Headers, url: str
) -> None:
    response = await client.get(url, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "validation_error"


@pytest.mark.parametrize("entity", list(SpreadsheetEntity))
async def test_templates_have_french_headers_an_example_and_drop_down_lists(
    client: AsyncClient, admin_headers: Headers, entity: SpreadsheetEntity
) -> None:
    response = await client.get(f"{API}/imports/templates/{entity}.xlsx", headers=admin_headers)
    stem = {"investor": "investisseurs"}.get(entity, f"{entity}s")
    assert response.headers["content-disposition"] == f'attachment; filename="modele_{stem}.xlsx"'
    book = workbook(response)
    sheet = book.worksheets[0]
    columns = import_columns(entity)
    assert [cell.value for cell in sheet[1]] == [column.header_fr for column in columns]
    assert all(not column.read_only for column in columns)
    assert sheet.max_row == 2 and any(cell.value is not None for cell in sheet[2])
    lists = {
        str(validation.sqref): validation.formula1
        for validation in sheet.data_validations.dataValidation
    }
    expected = {}
    for index, column in enumerate(columns):
        letter = openpyxl.utils.get_column_letter(index + 1)
        labels = None
        if column.enum_class is not None:
            labels = list(ENUM_LABELS[column.enum_class].values())
        elif column.kind == "boolean":
            labels = ["Oui", "Non"]
        if labels:
            expected[f"{letter}2:{letter}{TEMPLATE_VALIDATED_ROWS + 1}"] = f'"{",".join(labels)}"'
        assert widths(sheet)[index + 1] >= column.width
        example = sheet.cell(2, index + 1).value
        if labels and example is not None:
            assert example in labels  # the example uses a label the list offers
    assert lists == expected
    assert lists or entity is not SpreadsheetEntity.investor


async def test_template_example_values_are_typed(
    client: AsyncClient, admin_headers: Headers
) -> None:
    response = await client.get(f"{API}/imports/templates/kpi.xlsx", headers=admin_headers)
    sheet = workbook(response).worksheets[0]
    cells = {head.value: cell for head, cell in zip(sheet[1], sheet[2], strict=True)}
    assert cells["Chiffre d'affaires"].value == float(Decimal("12500.00"))
    assert cells["Chiffre d'affaires"].number_format == "#,##0.00"
    assert cells["Année"].value == 2026
    response = await client.get(f"{API}/imports/templates/interaction.xlsx", headers=admin_headers)
    sheet = workbook(response).worksheets[0]
    cells = {head.value: cell for head, cell in zip(sheet[1], sheet[2], strict=True)}
    assert cells["Date"].is_date and cells["Date"].value.date() == date(2026, 1, 15)
    assert cells["Type"].value == "Réunion"


@pytest.mark.committing
async def test_an_export_reads_one_read_only_repeatable_read_snapshot() -> None:
    async with db.snapshot_sessionmaker() as session, session.begin():
        isolation = await session.scalar(text("SHOW transaction_isolation"))
        read_only = await session.scalar(text("SHOW transaction_read_only"))
        snapshot_pid = await session.scalar(text("SELECT pg_backend_pid()"))
    assert (isolation, read_only) == ("repeatable read", "on")
    # That connection goes back to the pool as it came: its next borrower may write. The
    # pool's connections are taken together until it comes out again.
    async with AsyncExitStack() as stack:
        for _ in range(settings.database_pool_size):
            conn = await stack.enter_async_context(db.engine.connect())
            if await conn.scalar(text("SELECT pg_backend_pid()")) == snapshot_pid:
                assert await conn.scalar(text("SHOW transaction_read_only")) == "off"
                assert await conn.scalar(text("SHOW transaction_isolation")) == "read committed"
                break
        else:
            pytest.fail("the snapshot's connection did not go back to the pool")


@pytest.mark.committing
async def test_a_committed_export_sees_rows_committed_before_it_only(
    client: AsyncClient,
) -> None:
    headers = await bearer(await first_admin_id())
    await make_investor(client, headers, name="Avant")
    reader_rows: list[str] = []
    plan = ExportPlan(SpreadsheetEntity.investor, InvestorFilters(), await first_admin_id())
    async with snapshot() as reader:
        # The snapshot is taken by the transaction's first statement.
        async for batch in reader.batches(plan):
            reader_rows += [row[1] for row in batch]
        await make_investor(client, headers, name="Après")
        async for batch in reader.batches(plan):
            reader_rows += [row[1] for row in batch]
    assert reader_rows == ["Avant", "Avant"]
