"""GET /investors/search: case-, accent- and typo-insensitive, over investors and contacts."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import services.investor_search as investor_search
from models.aggregates import REBUILD_DERIVED_SQL
from tests.conftest import engine_event, owner_connection
from tests.factories import INVESTORS, execute, make_contact, make_investor, scalar

SEARCH = f"{INVESTORS}/search"


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Sets how many candidates search ranks: 5 at first, so that a few rows exceed it."""

    def set_cap(candidates: int) -> None:
        monkeypatch.setattr(investor_search, "SEARCH_CANDIDATES", candidates)

    set_cap(5)
    return set_cap


async def search(client: AsyncClient, headers: dict[str, str], q: str, **params: Any) -> Any:
    response = await client.get(SEARCH, params={"q": q, **params}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "total", "skip", "limit"}
    return body


async def names(client: AsyncClient, headers: dict[str, str], q: str) -> list[str]:
    return [item["name"] for item in (await search(client, headers, q))["items"]]


async def test_search_ignores_accents_and_case(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="Société Générale")
    await make_investor(client, admin_headers, name="BNP Paribas")
    assert await names(client, admin_headers, "societe generale") == ["Société Générale"]
    assert await names(client, admin_headers, "SOCIÉTÉ") == ["Société Générale"]
    assert await names(client, admin_headers, "générale") == ["Société Générale"]
    assert await names(client, admin_headers, "paribas") == ["BNP Paribas"]


@pytest.mark.parametrize("typo", ["Rotschild", "Rothchild", "rotchild", "ROTSCHILD"])
async def test_search_tolerates_typos(
    client: AsyncClient, admin_headers: dict[str, str], typo: str
) -> None:
    await make_investor(client, admin_headers, name="Rothschild & Co")
    await make_investor(client, admin_headers, name="Amundi")
    assert await names(client, admin_headers, typo) == ["Rothschild & Co"]


@pytest.mark.parametrize(
    ("field", "value", "q"),
    [
        ("company", "Groupe Crédit Agricole", "credit agricole"),
        ("email", "relations@natixis.com", "natixis.com"),
        ("phone", "01 42 14 20 00", "0142142000"),
        ("phone", "+33 1 42 14 20 00", "42 14 20"),
        ("website", "https://www.oddo-bhf.com", "oddo-bhf"),
    ],
)
async def test_search_covers_every_investor_field(
    client: AsyncClient, admin_headers: dict[str, str], field: str, value: str, q: str
) -> None:
    await make_investor(client, admin_headers, name="Target", **{field: value})
    await make_investor(client, admin_headers, name="Unrelated")
    assert await names(client, admin_headers, q) == ["Target"]


async def test_a_contact_name_or_email_finds_its_investor_once(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers, name="Lazard Frères")
    await make_contact(client, admin_headers, investor["id"], name="Hélène Dubois")
    await make_contact(
        client, admin_headers, investor["id"], name="Marc Dubois", email="mdubois@lazard.fr"
    )
    await make_investor(client, admin_headers, name="Unrelated")

    body = await search(client, admin_headers, "helene dubois")
    assert [item["id"] for item in body["items"]] == [investor["id"]]
    assert body["total"] == 1
    # Both contacts match: the investor still appears once.
    body = await search(client, admin_headers, "dubois")
    assert [item["id"] for item in body["items"]] == [investor["id"]]
    assert body["total"] == 1
    assert await names(client, admin_headers, "mdubois@lazard") == ["Lazard Frères"]


async def test_a_deleted_contact_no_longer_matches(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers, name="Tikehau")
    contact = await make_contact(client, admin_headers, investor["id"], name="Quentin Marchal")
    assert await names(client, admin_headers, "marchal") == ["Tikehau"]
    await client.delete(f"/api/v1/contacts/{contact['id']}", headers=admin_headers)
    assert await names(client, admin_headers, "marchal") == []


async def test_updated_fields_are_searchable_at_once(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers, name="Old Name")
    await client.patch(
        f"{INVESTORS}/{investor['id']}", json={"name": "Eurazeo"}, headers=admin_headers
    )
    assert await names(client, admin_headers, "eurazeo") == ["Eurazeo"]
    assert await names(client, admin_headers, "old name") == []


async def test_best_matches_come_first(client: AsyncClient, admin_headers: dict[str, str]) -> None:
    await make_investor(client, admin_headers, name="Durant Capital")
    await make_investor(client, admin_headers, name="Banque Durand")
    await make_investor(client, admin_headers, name="Rien à voir")
    assert await names(client, admin_headers, "durand") == ["Banque Durand", "Durant Capital"]


# --- misspellings: matched against the known words first (search_words, migration 0007) ----


async def known_words(session: AsyncSession) -> set[str]:
    words = {row[0] for row in (await session.execute(text("SELECT word FROM search_words")))}
    await session.rollback()
    return words


async def test_the_words_of_names_companies_and_contacts_are_kept_as_they_are_written(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    investor = await make_investor(
        client, admin_headers, name="Société Générale", company="Groupe SG", email="a@b.fr"
    )
    await make_contact(
        client, admin_headers, investor["id"], name="Zoé Ng", email="zoe.ng75@exemple.fr"
    )
    # Normalised as searched; fewer than three letters (ng, sg, fr, 75) or only from fields the
    # approximate search does not compare (the investor's email) are left out.
    assert await known_words(session) == {"societe", "generale", "groupe", "zoe", "exemple"}
    await client.patch(
        f"{INVESTORS}/{investor['id']}", json={"name": "Natixis"}, headers=admin_headers
    )
    await execute(
        "INSERT INTO contacts (investor_id, name) SELECT :id, 'Édouard Mercier ' || g "
        "FROM generate_series(1, 3) g",
        id=investor["id"],
    )
    # Words are added, never removed: "societe" and "generale" stay, harmlessly.
    assert await known_words(session) == {
        "societe",
        "generale",
        "groupe",
        "zoe",
        "exemple",
        "natixis",
        "edouard",
        "mercier",
    }


@pytest.mark.committing
async def test_concurrent_writers_of_the_same_new_words_all_succeed(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    # Writers adding the same new words at once (in either order) neither fail on the word's
    # key nor deadlock: each word is kept once.
    names = [
        f"{first} {second} {n}"
        for n in range(6)
        for first, second in (("Zephyr", "Azimut"), ("Azimut", "Zephyr"))
    ]
    created = await asyncio.gather(
        *(make_investor(client, admin_headers, name=name) for name in names)
    )
    assert sorted(investor["name"] for investor in created) == sorted(names)
    assert await known_words(session) == {"zephyr", "azimut"}


@pytest.mark.committing
async def test_the_triggers_keep_the_words_a_rebuild_computes(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    first = await make_investor(client, admin_headers, name="Carmignac", company="Crédit Mutuel")
    second = await make_investor(client, admin_headers, name="Tikehau Capital")
    await make_contact(client, admin_headers, first["id"], name="Hélène Dubois")
    contact = await make_contact(client, admin_headers, second["id"], email="j.roux@tk.fr")
    await client.patch(
        f"/api/v1/contacts/{contact['id']}", json={"name": "Jérôme Roux"}, headers=admin_headers
    )
    kept = await known_words(session)
    assert {"carmignac", "credit", "mutuel", "tikehau", "helene", "jerome", "roux"} <= kept
    await session.commit()  # its read lock would hold off the TRUNCATE
    # A maintenance task, run as the owner role: TRUNCATE is not the API's to run.
    async with owner_connection() as conn:
        for statement in REBUILD_DERIVED_SQL:
            await conn.execute(text(statement))
    # The contact's first name ("Jeanne Martin", the factory's) is gone from its row only.
    assert await known_words(session) == kept - {"jeanne", "martin"}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("lefevbre", ["Amundi"]),  # a contact's name
        ("jean dupond", ["Jean Dupont Conseil"]),  # a close word for each word
        ("Jean Dupont Conseill", ["Jean Dupont Conseil"]),
        ("carmignak", ["Carmignac Gestion"]),
    ],
)
async def test_a_misspelling_finds_names_with_close_words(
    client: AsyncClient, admin_headers: dict[str, str], q: str, expected: list[str]
) -> None:
    amundi = await make_investor(client, admin_headers, name="Amundi")
    await make_contact(client, admin_headers, amundi["id"], name="Élodie Lefèvre")
    await make_investor(client, admin_headers, name="Jean Dupont Conseil")
    await make_investor(client, admin_headers, name="Jean Martin")
    await make_investor(client, admin_headers, name="Paul Dupuis")
    await make_investor(client, admin_headers, name="Carmignac Gestion")
    assert await names(client, admin_headers, q) == expected


async def test_a_misspelling_of_many_words_needs_a_close_word_for_each(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    # Past three words, the shortest are checked apart from the index: still every one counts.
    await make_investor(client, admin_headers, name="Jean Dupont Conseil Privé")
    await make_investor(client, admin_headers, name="Paul Dupont Conseil Privé")
    await make_investor(client, admin_headers, name="Jean Dupont Conseil Public")
    assert await names(client, admin_headers, "jean dupond conseill prive") == [
        "Jean Dupont Conseil Privé"
    ]
    assert await names(client, admin_headers, "paul dupond conseill prive") == [
        "Paul Dupont Conseil Privé"
    ]


async def test_a_word_whose_last_holder_is_gone_finds_nothing(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    gone = await make_investor(client, admin_headers, name="Rothschild & Co")
    await make_investor(client, admin_headers, name="Amundi")
    assert await names(client, admin_headers, "rotchild") == ["Rothschild & Co"]
    response = await client.delete(f"{INVESTORS}/{gone['id']}", headers=admin_headers)
    assert response.status_code == 204
    assert "rothschild" in await known_words(session)
    assert await search(client, admin_headers, "rotchild") == {
        "items": [],
        "total": 0,
        "skip": 0,
        "limit": 50,
    }


async def test_the_cap_takes_investors_own_matches_before_their_contacts(
    client: AsyncClient,
    admin_headers: dict[str, str],
    session: AsyncSession,
    cap: Callable[[int], None],
) -> None:
    # Investors matching through a contact, with the lowest ids: with equal scores, the id
    # would rank them first if they were candidates.
    await execute("INSERT INTO investors (name) SELECT 'Other ' || g FROM generate_series(1, 3) g")
    await execute(
        "INSERT INTO contacts (investor_id, name) SELECT id, 'Durand' FROM investors",
    )
    await execute(
        "INSERT INTO investors (name) SELECT 'Durand ' || g FROM generate_series(1, 6) g",
    )
    for q in ("durand", "durant"):  # literally, then through the close word "durand"
        body = await search(client, admin_headers, q)
        assert body["total"] == 5
        assert all(item["name"].startswith("Durand ") for item in body["items"])
    cap(1000)
    for q in ("durand", "durant"):
        assert (await search(client, admin_headers, q))["total"] == 9


# --- terms of one or two characters: the start of a word of a name ------------------------


@pytest.mark.parametrize("q", ["ro", "RO", "Ro", "r", "R"])
async def test_a_short_term_finds_names_with_a_word_starting_with_it(
    client: AsyncClient, admin_headers: dict[str, str], q: str
) -> None:
    await make_investor(client, admin_headers, name="Banque Rothschild")
    await make_investor(client, admin_headers, name="Amundi")
    assert await names(client, admin_headers, q) == ["Banque Rothschild"]


@pytest.mark.parametrize(
    ("q", "found"),
    [
        ("ge", "Société Générale"),
        ("GÉ", "Société Générale"),
        ("gé", "Société Générale"),
        # A combining accent: three characters typed, two once normalised, so a short term.
        ("Ge\u0301", "Société Générale"),
        ("é", "Épargne Conseil"),
        ("E", "Épargne Conseil"),
        ("É", "Épargne Conseil"),
    ],
)
async def test_a_short_term_ignores_accents_and_case(
    client: AsyncClient, admin_headers: dict[str, str], q: str, found: str
) -> None:
    await make_investor(client, admin_headers, name="Société Générale")
    await make_investor(client, admin_headers, name="Épargne Conseil")
    await make_investor(client, admin_headers, name="Amundi")
    assert await names(client, admin_headers, q) == [found]


async def test_a_short_term_does_not_match_inside_a_word(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="Caroline Finance")
    await make_investor(client, admin_headers, name="Ange Capital")
    await make_investor(client, admin_headers, name="Cœur Défense")
    assert (await search(client, admin_headers, "ro"))["total"] == 0
    assert (await search(client, admin_headers, "ge"))["total"] == 0
    # "œ" normalises to "oe", found at the start of a word only.
    assert (await search(client, admin_headers, "œ"))["total"] == 0
    await make_investor(client, admin_headers, name="Œuvre d'Orient")
    assert await names(client, admin_headers, "œ") == ["Œuvre d'Orient"]
    # From three characters on, the term is found anywhere, as before.
    assert await names(client, admin_headers, "aro") == ["Caroline Finance"]


@pytest.mark.parametrize(
    ("name", "q"),
    [
        ("Jean-Robert Gestion", "ro"),
        ("L'Oréal Finance", "or"),
        ("L\u2019Oréal Finance", "or"),  # a typographic apostrophe
        ("Fonds (Europe)", "eu"),
        ("Caisse d'Épargne", "ep"),
        ("Caisse d'Épargne", "d'"),
        ("Fonds 2030", "20"),
        ("A.B. Conseil", "b."),
    ],
)
async def test_a_word_starts_after_a_space_or_punctuation(
    client: AsyncClient, admin_headers: dict[str, str], name: str, q: str
) -> None:
    await make_investor(client, admin_headers, name=name)
    await make_investor(client, admin_headers, name="Amundi")
    assert await names(client, admin_headers, q) == [name]


async def test_a_short_term_finds_a_company_or_a_contact_name(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    grouped = await make_investor(
        client, admin_headers, name="Target", company="Groupe Crédit Agricole"
    )
    staffed = await make_investor(client, admin_headers, name="Lazard Frères")
    await make_contact(client, admin_headers, staffed["id"], name="Hélène Dubois")
    await make_contact(client, admin_headers, staffed["id"], name="Hervé Durand")
    assert [item["id"] for item in (await search(client, admin_headers, "cr"))["items"]] == [
        grouped["id"]
    ]
    # Both contacts match: the investor still appears once.
    body = await search(client, admin_headers, "he")
    assert [item["id"] for item in body["items"]] == [staffed["id"]]
    assert body["total"] == 1


async def test_a_short_term_leaves_out_emails_phones_and_websites(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(
        client,
        admin_headers,
        name="Target",
        email="relations@natixis.com",
        phone="01 42 14 20 00",
        website="https://www.oddo-bhf.com",
    )
    await make_contact(client, admin_headers, investor["id"], name="Marc", email="m@orange.fr")
    for q in ["re", "na", "co", "42", "01", "od", "ww", "or", "fr"]:
        assert (await search(client, admin_headers, q))["total"] == 0, q
    # Three characters and more still search every field.
    for q in ["natixis", "0142142000", "oddo", "orange"]:
        assert await names(client, admin_headers, q) == ["Target"], q


@pytest.mark.parametrize("q", ["&", "-a", "@o", "'", "(", "\u0301"])
async def test_a_short_term_starting_with_neither_letter_nor_digit_finds_nothing(
    client: AsyncClient, admin_headers: dict[str, str], q: str
) -> None:
    await make_investor(client, admin_headers, name="Rothschild & Co")
    await make_investor(client, admin_headers, name="Jean-Alain (Conseil) x@o.fr")
    assert await search(client, admin_headers, q) == {
        "items": [],
        "total": 0,
        "skip": 0,
        "limit": 50,
    }
    assert (await search(client, admin_headers, q, skip=10))["total"] == 0


@pytest.mark.parametrize("q", ["a.", "a*", "a+", "a?", "a(", "a)", "a[", "a{", "a|", "a^", "a$"])
async def test_a_short_term_is_matched_literally_not_as_a_regular_expression(
    client: AsyncClient, admin_headers: dict[str, str], q: str
) -> None:
    await make_investor(client, admin_headers, name="Abc")
    await make_investor(client, admin_headers, name="Aa Capital")
    assert (await search(client, admin_headers, q))["total"] == 0
    await make_investor(client, admin_headers, name=f"Fonds {q}z")
    assert await names(client, admin_headers, q) == [f"Fonds {q}z"]


async def test_a_whole_word_ranks_above_a_longer_one_for_a_short_term(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="Axa")
    await make_investor(client, admin_headers, name="AX Partners")
    await make_investor(client, admin_headers, name="Amundi")
    assert await names(client, admin_headers, "ax") == ["AX Partners", "Axa"]


async def test_short_term_pages_return_every_match_once(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    await execute(
        "INSERT INTO investors (name) SELECT 'Banque ' || g FROM generate_series(1, 7) g",
    )
    await execute(
        "INSERT INTO investors (name) SELECT 'Cabinet ' || g FROM generate_series(1, 4) g",
    )
    # Found by a contact only, and by two of them.
    await execute(
        "INSERT INTO contacts (investor_id, name) SELECT id, n FROM investors, "
        "(VALUES ('Bastien Roy'), ('Béatrice Roy')) AS contact(n) WHERE name = 'Cabinet 1'",
    )
    seen: list[str] = []
    for skip in range(0, 10, 3):
        body = await search(client, admin_headers, "b", skip=skip, limit=3)
        assert body["total"] == 8
        seen.extend(item["name"] for item in body["items"])
    assert sorted(seen) == sorted([f"Banque {n}" for n in range(1, 8)] + ["Cabinet 1"])


async def test_a_short_term_ranks_only_the_capped_best_candidates(
    client: AsyncClient,
    admin_headers: dict[str, str],
    session: AsyncSession,
    cap: Callable[[int], None],
) -> None:
    await execute("INSERT INTO investors (name) SELECT 'Banque ' || g FROM generate_series(1, 9) g")
    body = await search(client, admin_headers, "ba")
    assert body["total"] == 5
    assert len({item["id"] for item in body["items"]}) == 5


async def test_a_literal_match_ranks_above_a_close_one(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="Natixis")
    await make_investor(client, admin_headers, name="Natixia Partners")
    assert await names(client, admin_headers, "natixia") == ["Natixia Partners", "Natixis"]
    assert await names(client, admin_headers, "natixis") == ["Natixis", "Natixia Partners"]


async def test_no_match_is_an_empty_page(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="Amundi")
    assert await search(client, admin_headers, "zzzzqqqq") == {
        "items": [],
        "total": 0,
        "skip": 0,
        "limit": 50,
    }


@pytest.mark.parametrize("q", ["%", "_", "\\", "%%", "a%", "%%%", "a_p", "l%a"])
async def test_like_wildcards_are_matched_literally(
    client: AsyncClient, admin_headers: dict[str, str], q: str
) -> None:
    await make_investor(client, admin_headers, name="Alpha")
    await make_investor(client, admin_headers, name="Beta")
    assert (await search(client, admin_headers, q))["total"] == 0


async def test_quotes_and_sql_in_a_term_are_matched_literally(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    # Every term is a bound parameter, whatever it holds.
    await make_investor(client, admin_headers, name="O'Brien Capital")
    await make_investor(client, admin_headers, name="Brien 1000")
    assert (await names(client, admin_headers, "o'brien"))[0] == "O'Brien Capital"
    assert (await names(client, admin_headers, "brien 1000"))[0] == "Brien 1000"
    for q in (
        "'; DELETE FROM investors; --",
        "x'); DELETE FROM investors; --",
        "x; DELETE FROM investors; --",
        "x$$; DELETE FROM investors; --",
    ):
        assert (await search(client, admin_headers, q))["total"] == 0
    assert await scalar("SELECT count(*) FROM investors") == 2


async def test_a_literal_percent_sign_is_found(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="Fonds 1000")
    await make_investor(client, admin_headers, name="Fonds 100% ISR")
    # "1000" is a close match too, but the literal one comes first.
    assert (await names(client, admin_headers, "100%"))[0] == "Fonds 100% ISR"
    # Two characters: only at the start of a word.
    assert (await search(client, admin_headers, "0%"))["total"] == 0
    assert await names(client, admin_headers, "1%") == []
    await make_investor(client, admin_headers, name="Fonds 5% Europe")
    assert await names(client, admin_headers, "5%") == ["Fonds 5% Europe"]


# 200-character terms: SQL, LIKE and regular-expression syntax; a dotless i, an emoji, an
# accented letter and a combining accent.
LONG_TERM = ("x'%_\\$1--/*" * 20)[:200]
LONG_UNICODE = ("ı\U0001f680é'%_\u0301" * 30)[:200]  # noqa: RUF001 (a dotless i on purpose)


@pytest.mark.parametrize(
    ("q", "target", "decoys"),
    [
        # Decoys are what the term would find if any of its characters acted as syntax.
        ("l'or", "Banque L'Or", ["Banque Lor", "Banque L Or"]),
        ("l''or", "Banque L''Or", ["Banque L'Or", "Banque LOr"]),
        ('a"b', 'Fonds A"B', ["Fonds AB", "Fonds A B"]),
        ("a\\b", "Fonds A\\B", ["Fonds AB", "Fonds A/B", "Fonds A\\\\B"]),
        ("5%x", "Fonds 5%x", ["Fonds 5 x", "Fonds 5ax", "Fonds 50x"]),
        ("a_b", "Fonds A_B", ["Fonds AXB", "Fonds A B", "Fonds A__B"]),
        ("\\%_", "Fonds \\%_", ["Fonds \\ab", "Fonds %_", "Fonds \\%"]),
        ("zq$1", "Zq$1 Holding", ["Zq1 Holding", "Zq$2 Holding", "Zq Holding"]),
        ("zz--", "Fonds ZZ-- Europe", ["Fonds ZZ Europe", "Fonds ZZ- Europe"]),
        ("a/*b", "Fonds A/*B", ["Fonds A/B", "Fonds A*B", "Fonds AB"]),
        ("x'); --", "Fonds X'); -- Y", ["Fonds X", "Fonds X'"]),
        ("a.*b", "Fonds A.*B", ["Fonds AxB", "Fonds A.B", "Fonds AB"]),
        ("ışık", "Işık Yatırım", ["Ipek Yatırım", "Isak Yatırım"]),  # noqa: RUF001
        ("İSTANBUL", "Banque İstanbul", ["Banque Ankara"]),
        ("ﬁducie", "Fiducie Privée", ["Fidelis Privée", "Fi Duce"]),
        ("œuvre", "Œuvre d'Orient", ["Manœuvrier", "Oe Uvre"]),
        ("ge\u0301ne\u0301rale", "Société Générale", ["Société Gérante", "Gen Rale"]),
        ("x\U0001f680y", "Fonds X\U0001f680Y", ["Fonds XY", "Fonds X Y", "Fonds X\U0001f30dY"]),
        (
            "\U0001f680\U0001f680\U0001f680",
            "Fusée \U0001f680\U0001f680\U0001f680",
            ["Fusée \U0001f680"],
        ),
        ("الاستثمار", "بنك الاستثمار", ["بنك مصر", "مار"]),
        ("לאומי", "בנק לאומי", ["בנק הפועלים"]),
        (LONG_TERM, LONG_TERM, [LONG_TERM[:-1] + "y", LONG_TERM[:100]]),
        (LONG_UNICODE, LONG_UNICODE, [LONG_UNICODE[:-1] + "x", LONG_UNICODE[:100]]),
    ],
)
async def test_any_term_is_matched_literally(
    client: AsyncClient,
    admin_headers: dict[str, str],
    session: AsyncSession,
    q: str,
    target: str,
    decoys: list[str],
) -> None:
    for name in [*decoys, target]:
        await make_investor(client, admin_headers, name=name)
    assert await names(client, admin_headers, q) == [target]
    # Upper case and accents still do not count, whatever else the term holds.
    assert await names(client, admin_headers, q.upper()) == [target]
    assert await scalar("SELECT count(*) FROM investors") == len(decoys) + 1


@pytest.mark.parametrize("q", ["Rotchild", "ro", "o'brien %_ 1000"])
async def test_terms_and_known_words_are_never_written_into_sql(
    client: AsyncClient, admin_headers: dict[str, str], q: str
) -> None:
    await make_investor(client, admin_headers, name="Rothschild & Co")
    await make_investor(client, admin_headers, name="O'Brien 1000")
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        sent.append((sql.lower(), params))

    with engine_event("before_cursor_execute", record):
        assert (await search(client, admin_headers, q))["total"] == 1
    searches = [(sql, params) for sql, params in sent if "crm_search_" in sql]
    assert searches
    for sql, params in searches:
        # Neither the term nor a stored word close to it, only placeholders.
        for written in ("rotchild", "rothschild", "brien", "%_"):
            assert written not in sql
        assert q in params


async def test_search_pages_return_every_match_once(
    client: AsyncClient, admin_headers: dict[str, str], session: AsyncSession
) -> None:
    # Equal scores everywhere: only the id tiebreaker orders the pages.
    await execute(
        "INSERT INTO investors (name) SELECT 'Carmignac Gestion' FROM generate_series(1, 10)",
    )
    await make_investor(client, admin_headers, name="Other")
    seen: list[int] = []
    for skip in range(0, 12, 3):
        body = await search(client, admin_headers, "carmignac", skip=skip, limit=3)
        assert body["total"] == 10
        assert body["skip"] == skip
        assert body["limit"] == 3
        seen.extend(item["id"] for item in body["items"])
    assert len(seen) == 10
    assert seen == sorted(set(seen))


async def test_search_results_have_the_investor_shape(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor = await make_investor(client, admin_headers, name="Amundi", client_type="cgpi")
    body = await search(client, admin_headers, "amundi")
    assert body["items"] == [investor]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "   "},
        {"q": "x" * 201},
        {"q": "a\x00b"},
        {"q": "amundi", "limit": 0},
        {"q": "amundi", "limit": 201},
        {"q": "amundi", "skip": -1},
    ],
)
async def test_search_rejects_bad_parameters(
    client: AsyncClient, admin_headers: dict[str, str], params: dict[str, Any]
) -> None:
    response = await client.get(SEARCH, params=params, headers=admin_headers)
    assert response.status_code == 422


async def test_the_longest_query_is_accepted(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    await make_investor(client, admin_headers, name="Amundi")
    body = await search(client, admin_headers, "é" * 200)
    assert body["total"] == 0


async def test_a_common_term_ranks_only_the_capped_best_candidates(
    client: AsyncClient,
    admin_headers: dict[str, str],
    session: AsyncSession,
    cap: Callable[[int], None],
) -> None:
    # Literal matches are fewer than the cap and inserted last, behind more approximate ones.
    await execute(
        "INSERT INTO investors (name) SELECT 'Durant Capital ' || g FROM generate_series(1, 10) g",
    )
    await execute("INSERT INTO investors (name) SELECT 'Banque Durand' FROM generate_series(1, 2)")
    body = await search(client, admin_headers, "durand", limit=3)
    assert body["total"] == 5
    names = [item["name"] for item in body["items"]]
    assert names[:2] == ["Banque Durand", "Banque Durand"]
    assert names[2].startswith("Durant Capital ")
    rest = await search(client, admin_headers, "durand", skip=3, limit=3)
    assert rest["total"] == 5
    assert [item["name"][:15] for item in rest["items"]] == ["Durant Capital "] * 2
    assert await search(client, admin_headers, "durand", skip=5) == {
        "items": [],
        "total": 5,
        "skip": 5,
        "limit": 50,
    }


async def test_the_cap_keeps_literal_matches_when_they_alone_exceed_it(
    client: AsyncClient,
    admin_headers: dict[str, str],
    session: AsyncSession,
    cap: Callable[[int], None],
) -> None:
    # cap + 5 literal matches (investors and contacts), and close ones that must not get in.
    await execute(
        "INSERT INTO investors (name) SELECT 'Durant ' || g FROM generate_series(1, 10) g",
    )
    await execute("INSERT INTO investors (name) SELECT 'Durand ' || g FROM generate_series(1, 8) g")
    await execute(
        "INSERT INTO contacts (investor_id, name) SELECT id, 'Marc Durand' FROM investors "
        "WHERE name IN ('Durant 1', 'Durant 2')",
    )
    body = await search(client, admin_headers, "durand")
    assert body["total"] == 5
    assert len({item["id"] for item in body["items"]}) == 5
    # Literal matches all rank above the approximate ones, found through a contact or not.
    assert all(
        item["name"].startswith("Durand ") or item["name"] in ("Durant 1", "Durant 2")
        for item in body["items"]
    )
    cap(1000)
    assert (await search(client, admin_headers, "durand"))["total"] == 18


async def test_the_search_description_tells_the_cap_and_the_short_term_rule(
    client: AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    description = schema["paths"][SEARCH]["get"]["description"]
    assert f"Only the {investor_search.SEARCH_CANDIDATES} best matches" in description
    assert "A term of one or two characters" in description
