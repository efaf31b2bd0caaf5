"""GDPR requests: anonymising a contact or an investor leaves none of the person's values in
any table (audit trail, search words, job payloads included) nor in the mail outbox, keeps the
figures accounting needs, and is refused twice; the export gathers what is held about an email."""

import html
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient

from core.config import settings
from core.db import db
from core.email import OutgoingEmail, send_email
from services.emails import send_later
from services.jobs import JobService
from tests.conftest import error_of
from tests.factories import create_user, fetch, make_contact, make_investor, scalar

API = "/api/v1"
ANONYMIZE = f"{API}/gdpr/anonymize"
EXPORT = f"{API}/gdpr/export"
Headers = dict[str, str]

PERSON_EMAIL = "zephyrine@quintabelle.fr"
CONTACT_EMAIL = "aurele.quintabelle@gmail.test"
# What must be found nowhere afterwards, lower-cased (the search columns are lower-case and
# unaccented, the others as typed: both spellings are looked for).
TRACES = (
    PERSON_EMAIL,
    CONTACT_EMAIL,
    "quintabelle",
    "zéphyrine",
    "zephyrine",
    "aurèle",
    "aurele",
    "06 12 34 56 78",
    "0612345678",
)


async def post(client: AsyncClient, headers: Headers, url: str, body: Any) -> Any:
    response = await client.post(url, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def anonymize(client: AsyncClient, headers: Headers, entity: str, id_: int) -> Any:
    return await post(client, headers, ANONYMIZE, {"entity": entity, "id": id_})


async def arrange_person(client: AsyncClient, headers: Headers) -> dict[str, int]:
    """An investor that is a person, edited once, with a contact, an interaction about them
    and a month of KPIs; and another investor that must stay as it is."""
    investor = await make_investor(
        client,
        headers,
        name="Zéphyrine Quintabelle",
        email=PERSON_EMAIL,
        phone="06 12 34 56 78",
        website="https://quintabelle.fr",
        company="Quintabelle Conseil",
        industry="Immobilier",
        client_type="cgpi",
    )
    investor_id = investor["id"]
    edited = await client.patch(
        f"{API}/investors/{investor_id}",
        json={"notes": "Zéphyrine préfère être appelée le matin"},
        headers=headers,
    )
    assert edited.status_code == 200, edited.text
    contact = await make_contact(
        client, headers, investor_id, name="Aurèle Quintabelle", email=CONTACT_EMAIL
    )
    interaction = await post(
        client,
        headers,
        f"{API}/interactions/investor/{investor_id}",
        {
            "type": "reunion",
            "date": "2026-03-12",
            "duration_minutes": 45,
            "contact_id": contact["id"],
            "subject": "Rendez-vous avec Aurèle Quintabelle",
            "notes": f"Écrire à {PERSON_EMAIL}",
        },
    )
    kpi = await post(
        client,
        headers,
        f"{API}/kpis/investor/{investor_id}",
        {"year": 2026, "month": 3, "rdv_count": 2, "revenue": 15000, "commission_rate": 2.5},
    )
    other = await make_investor(client, headers, name="Banque Lorvane", email="info@lorvane.fr")
    return {
        "investor": investor_id,
        "contact": contact["id"],
        "interaction": interaction["id"],
        "kpi": kpi["id"],
        "other": other["id"],
    }


async def traces_in_database() -> list[tuple[str, str, str]]:
    """Every (table, column, trace) where a text, varchar or JSON column holds a trace."""
    columns = await fetch(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
        "AND data_type IN ('text', 'character varying', 'character', 'jsonb', 'json') "
        "AND table_name IN (SELECT table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE')"
    )
    assert len(columns) > 20
    found = []
    for schema, table, column in columns:
        for trace in TRACES:
            # Names from the catalogue, quoted; the trace is bound.
            sql = (
                f'SELECT count(*) FROM "{schema}"."{table}" '
                f'WHERE strpos(lower("{column}"::text), :trace) > 0'
            )
            if await scalar(sql, trace=trace):
                found.append((table, column, trace))
    return found


def messages(outbox: Path) -> list[Path]:
    return sorted(outbox.glob("*.eml"))


def traces_in_outbox(outbox: Path) -> list[str]:
    found = []
    for path in messages(outbox):
        raw = path.read_bytes().decode("utf-8", "replace").lower()
        found += [f"{path.name}: {trace}" for trace in TRACES if trace in raw]
    return found


async def write_to_outbox(outbox: Path, to: str, text: str) -> None:
    email = OutgoingEmail(to=[to], subject="Votre rendez-vous", text=text)
    sender = settings.model_copy(
        update={"email_backend": "file", "email_outbox_dir": outbox, "email_from": "crm@tpm.test"}
    )
    await send_email(email, sender)


async def test_anonymizing_an_investor_leaves_no_trace_of_the_person_anywhere(
    client: AsyncClient,
    admin_headers: Headers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "email_outbox_dir", tmp_path)
    ids = await arrange_person(client, admin_headers)
    # A message sent to the person, one queued for the contact, and one to someone else.
    await write_to_outbox(tmp_path, PERSON_EMAIL, "Bonjour Zéphyrine,\n\nà bientôt.")
    await write_to_outbox(tmp_path, "info@lorvane.fr", "Bonjour,\n\nà bientôt.")
    async with db.sessionmaker() as session, session.begin():
        email = OutgoingEmail(to=[CONTACT_EMAIL], subject="Relance", text="Bonjour Aurèle")
        queued = await send_later(JobService(session), email)
    before = await traces_in_database()
    assert {table for table, _, _ in before} >= {
        "investors",
        "contacts",
        "interactions",
        "audit_log",
        "search_words",
        "jobs",
    }
    assert traces_in_outbox(tmp_path)

    result = await anonymize(client, admin_headers, "investor", ids["investor"])

    assert result["entity"] == "investor"
    assert result["id"] == ids["investor"]
    assert (result["contacts"], result["interactions"]) == (1, 1)
    assert await traces_in_database() == []
    assert traces_in_outbox(tmp_path) == []
    # The other person's message stays.
    assert len(messages(tmp_path)) == 1
    job = (await fetch("SELECT status, payload FROM jobs WHERE id = :id", id=queued))[0]
    assert job.status == "cancelled"
    assert job.payload["to"] == ["anonymized"]
    assert job.payload["text"] == "anonymized"


async def test_anonymizing_keeps_amounts_dates_types_and_kpi_figures(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_person(client, admin_headers)
    await anonymize(client, admin_headers, "investor", ids["investor"])

    investor = await client.get(f"{API}/investors/{ids['investor']}", headers=admin_headers)
    assert investor.status_code == 200
    body = investor.json()
    personal = ("name", "email", "phone", "website", "company", "notes")
    assert {key: body[key] for key in personal} == {
        "name": "Anonymisé",
        "email": None,
        "phone": None,
        "website": None,
        "company": None,
        "notes": None,
    }
    assert (body["industry"], body["client_type"], body["pipeline_stage"]) == (
        "Immobilier",
        "cgpi",
        "prospect_froid",
    )
    assert [(c["id"], c["name"], c["email"]) for c in body["contacts"]] == [
        (ids["contact"], "Anonymisé", None)
    ]
    interaction = (
        await client.get(f"{API}/interactions/{ids['interaction']}", headers=admin_headers)
    ).json()
    assert {key: interaction[key] for key in ("type", "date", "duration_minutes")} == {
        "type": "reunion",
        "date": "2026-03-12",
        "duration_minutes": 45,
    }
    assert (interaction["subject"], interaction["notes"]) == (None, None)
    kpi = (await client.get(f"{API}/kpis/{ids['kpi']}", headers=admin_headers)).json()
    assert (kpi["rdv_count"], float(kpi["revenue"]), float(kpi["commission_rate"])) == (
        2,
        15000.0,
        2.5,
    )
    # The other investor is untouched, and still found by its name.
    other = (await client.get(f"{API}/investors/{ids['other']}", headers=admin_headers)).json()
    assert (other["name"], other["email"]) == ("Banque Lorvane", "info@lorvane.fr")
    for term, expected in (("lorvane", [ids["other"]]), ("quintabelle", []), ("Quintabele", [])):
        found = await client.get(
            f"{API}/investors/search", params={"q": term}, headers=admin_headers
        )
        assert [item["id"] for item in found.json()["items"]] == expected, term
    assert await scalar("SELECT count(*) FROM search_words WHERE word = 'lorvane'") == 1


async def test_the_earlier_audit_entries_are_scrubbed_and_one_anonymize_entry_written(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_person(client, admin_headers)
    await anonymize(client, admin_headers, "investor", ids["investor"])

    history = await client.get(
        f"{API}/investors/{ids['investor']}/history", params={"limit": 200}, headers=admin_headers
    )
    entries = history.json()["items"]
    newest = entries[0]
    assert (newest["action"], newest["entity"], newest["entity_id"]) == (
        "anonymize",
        "investor",
        ids["investor"],
    )
    assert newest["changes"] == {"contacts": 1, "interactions": 1}
    created = next(e for e in entries if e["action"] == "create" and e["entity"] == "investor")
    assert created["changes"]["name"] == "anonymized"
    assert created["changes"]["email"] == "anonymized"
    # What is no personal data stays readable in the trail.
    assert created["changes"]["client_type"] == "cgpi"
    edited = next(e for e in entries if e["action"] == "update" and e["entity"] == "investor")
    assert edited["changes"] == {"notes": "anonymized"}
    logged = next(e for e in entries if e["entity"] == "interaction")
    assert logged["changes"]["subject"] == "anonymized"
    assert logged["changes"]["type"] == "reunion"
    assert await scalar(
        "SELECT count(*) FROM anonymizations WHERE entity = 'investor' AND entity_id = :id",
        id=ids["investor"],
    )


async def test_anonymizing_a_contact_clears_it_and_its_interactions_only(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor = await make_investor(client, admin_headers, name="Maison Brévail")
    person = await make_contact(
        client, admin_headers, investor["id"], name="Aurèle Quintabelle", email=CONTACT_EMAIL
    )
    colleague = await make_contact(client, admin_headers, investor["id"], name="Jeanne Martin")
    about = await post(
        client,
        admin_headers,
        f"{API}/interactions/investor/{investor['id']}",
        {"type": "appel", "date": "2026-02-01", "contact_id": person["id"], "subject": "Appel"},
    )
    unrelated = await post(
        client,
        admin_headers,
        f"{API}/interactions/investor/{investor['id']}",
        {"type": "appel", "date": "2026-02-02", "subject": "Point trimestriel"},
    )

    result = await anonymize(client, admin_headers, "contact", person["id"])

    assert (result["contacts"], result["interactions"]) == (1, 1)
    rows = await fetch("SELECT id, name, email FROM contacts ORDER BY id")
    assert [tuple(row) for row in rows] == [
        (person["id"], "Anonymisé", None),
        (colleague["id"], "Jeanne Martin", None),
    ]
    subjects = await fetch("SELECT id, subject FROM interactions ORDER BY id")
    assert [tuple(row) for row in subjects] == [
        (about["id"], None),
        (unrelated["id"], "Point trimestriel"),
    ]
    assert await scalar("SELECT name FROM investors WHERE id = :id", id=investor["id"]) == (
        "Maison Brévail"
    )
    assert await traces_in_database() == []


async def test_a_trashed_investor_is_anonymized_too_and_comes_back_anonymized(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_person(client, admin_headers)
    deleted = await client.delete(f"{API}/investors/{ids['investor']}", headers=admin_headers)
    assert deleted.status_code == 204

    await anonymize(client, admin_headers, "investor", ids["investor"])

    assert await traces_in_database() == []
    restored = await post(
        client, admin_headers, f"{API}/trash/investor/{ids['investor']}/restore", None
    )
    assert (restored["name"], restored["email"]) == ("Anonymisé", None)


async def test_a_second_anonymization_is_refused(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_person(client, admin_headers)
    await anonymize(client, admin_headers, "investor", ids["investor"])

    for entity, id_ in (("investor", ids["investor"]), ("contact", ids["contact"])):
        again = await client.post(
            ANONYMIZE, json={"entity": entity, "id": id_}, headers=admin_headers
        )
        assert again.status_code == 409, again.text
        assert error_of(again) == {
            "detail": "This record has already been anonymised",
            "code": "already_anonymized",
        }
    entries = await scalar("SELECT count(*) FROM audit_log WHERE action = 'anonymize'")
    assert entries == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"entity": "investor", "id": 2_000_000_000}, 404, "not_found"),
        ({"entity": "contact", "id": 2_000_000_000}, 404, "not_found"),
        ({"entity": "kpi", "id": 1}, 422, "validation_error"),
        ({"entity": "investor", "id": 0}, 422, "validation_error"),
        ({"entity": "investor", "id": 1, "anonymized_at": "2026-01-01"}, 422, "validation_error"),
        ({"entity": "investor"}, 422, "validation_error"),
    ],
)
async def test_bad_anonymization_requests(
    client: AsyncClient, admin_headers: Headers, body: Any, status: int, code: str
) -> None:
    response = await client.post(ANONYMIZE, json=body, headers=admin_headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    if body["entity"] == "kpi":
        assert "'contact' or 'investor'" in response.text


async def test_a_manager_may_neither_export_nor_anonymize(client: AsyncClient) -> None:
    from tests.factories import bearer

    headers = await bearer(await create_user("manager@crm.test", role="manager"))
    refused = await client.post(ANONYMIZE, json={"entity": "investor", "id": 1}, headers=headers)
    assert refused.status_code == 403
    exported = await client.get(EXPORT, params={"email": PERSON_EMAIL}, headers=headers)
    assert exported.status_code == 403


async def test_the_export_gathers_what_is_held_about_an_email_and_is_audited(
    client: AsyncClient, admin_headers: Headers
) -> None:
    ids = await arrange_person(client, admin_headers)
    # The same person as a contact elsewhere (in the trash), and as a user.
    elsewhere = await make_investor(client, admin_headers, name="Cabinet Orsel")
    as_contact = await make_contact(
        client, admin_headers, elsewhere["id"], name="Z. Quintabelle", email=PERSON_EMAIL
    )
    deleted = await client.delete(f"{API}/contacts/{as_contact['id']}", headers=admin_headers)
    assert deleted.status_code == 204
    user_id = await create_user(PERSON_EMAIL, role="viewer")

    response = await client.get(
        EXPORT, params={"email": "Zephyrine@QUINTABELLE.fr"}, headers=admin_headers
    )

    assert response.status_code == 200, response.text
    document = response.json()
    assert [u["id"] for u in document["users"]] == [user_id]
    assert "hashed_password" not in document["users"][0]
    assert [(i["id"], i["name"], i["phone"]) for i in document["investors"]] == [
        (ids["investor"], "Zéphyrine Quintabelle", "06 12 34 56 78")
    ]
    assert [(c["id"], c["name"]) for c in document["contacts"]] == [
        (as_contact["id"], "Z. Quintabelle")
    ]
    assert [(i["id"], i["subject"]) for i in document["interactions"]] == [
        (ids["interaction"], "Rendez-vous avec Aurèle Quintabelle")
    ]
    audited = await fetch(
        "SELECT entity, entity_id FROM audit_log WHERE action = 'export' ORDER BY id"
    )
    assert [tuple(row) for row in audited] == [
        ("user", user_id),
        ("investor", ids["investor"]),
        ("contact", as_contact["id"]),
    ]
    exported = await fetch("SELECT changes FROM audit_log WHERE action = 'export'")
    assert [row.changes for row in exported] == [None, None, None]


async def test_an_export_of_an_unknown_email_is_empty_and_a_malformed_one_is_422(
    client: AsyncClient, admin_headers: Headers
) -> None:
    empty = await client.get(EXPORT, params={"email": "nobody@nowhere.test"}, headers=admin_headers)
    assert empty.status_code == 200
    body = empty.json()
    assert [body[key] for key in ("users", "investors", "contacts", "interactions")] == [[]] * 4
    for bad in ("not-an-email", "a\x00b@x.fr", ""):
        response = await client.get(EXPORT, params={"email": bad}, headers=admin_headers)
        assert response.status_code == 422, (bad, response.text)


async def test_the_export_as_a_spreadsheet_has_a_sheet_per_kind_and_no_formula(
    client: AsyncClient, admin_headers: Headers
) -> None:
    investor = await make_investor(
        client, admin_headers, name="Zéphyrine Quintabelle", email=PERSON_EMAIL
    )
    # Typed into the CRM, it must reach the spreadsheet as text, never as a formula.
    formula = '=HYPERLINK("http://evil.test","clic")'
    await make_contact(
        client, admin_headers, investor["id"], name="Z. Q.", email=PERSON_EMAIL, notes=formula
    )

    response = await client.get(
        EXPORT, params={"email": PERSON_EMAIL, "format": "xlsx"}, headers=admin_headers
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert response.headers["content-disposition"].startswith("attachment;")
    with zipfile.ZipFile(io.BytesIO(response.content)) as workbook:
        names = re.findall(r'<sheet name="([^"]+)"', workbook.read("xl/workbook.xml").decode())
        sheets = [workbook.read(f"xl/worksheets/sheet{n}.xml").decode() for n in (1, 2, 3, 4)]
        strings = html.unescape(workbook.read("xl/sharedStrings.xml").decode())
    assert names == ["users", "investors", "contacts", "interactions"]
    for expected in ("Zéphyrine Quintabelle", PERSON_EMAIL, "Z. Q.", formula, "investor_id"):
        assert expected in strings, expected
    assert all("<f>" not in sheet for sheet in sheets)
    # One investor, one contact: a header and one row each.
    assert sheets[1].count("<row ") == 2
    assert sheets[2].count("<row ") == 2
    assert await scalar("SELECT count(*) FROM audit_log WHERE action = 'export'") == 2


async def test_an_unknown_export_format_is_422(client: AsyncClient, admin_headers: Headers) -> None:
    response = await client.get(
        EXPORT, params={"email": PERSON_EMAIL, "format": "csv"}, headers=admin_headers
    )
    assert response.status_code == 422
    assert "'json' or 'xlsx'" in response.text
