"""Fill a benchmark database with a deterministic, realistic CRM data set.

    .venv/bin/python -m bench.seed small|large [--reseed]

small = 10,000 investors (the firm's real scale), large = 1,000,000 (10M interactions).
The real schema comes from the Alembic migrations; rows go in with binary COPY from generators
(Python builds rows on one core while PostgreSQL ingests on the other), secondary indexes are
dropped during the load and rebuilt after, then VACUUM ANALYZE. A database that already holds
the requested size at the current migration head is reused.
"""

import argparse
import asyncio
import hashlib
import shutil
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from random import Random
from typing import Any

import asyncpg
from alembic.script import ScriptDirectory

from bench.cluster import Cluster, start_cluster
from core.config import PROJECT_ROOT
from core.migrations import alembic_config, upgrade_to_head
from core.security import hash_password
from models.aggregates import REBUILD_DERIVED_SQL

SIZES = {"small": 10_000, "large": 1_000_000}
SEED = 20_240_601
BENCH_EMAIL = "bench@tpm-finance.fr"
BENCH_PASSWORD = "bench-password-2024"  # noqa: S105 - throwaway benchmark database
BENCH_USER_ID = 1
# Fixed calendar so that the data (and the summaries measured) never depend on today's date.
KPI_YEARS = (2024, 2025)
INTERACTION_START = date(2023, 1, 1)
INTERACTION_DAYS = 3 * 365
CREATED_START = datetime(2020, 1, 1, tzinfo=UTC)
CREATED_SECONDS = 5 * 365 * 86_400
# A surname given to about 20 investors whatever the size: the "rare term" of the search bench.
RARE_SURNAME = "Quintavalle"
RARE_COUNT = 20
BIG_TABLES = (
    "investors",
    "contacts",
    "interactions",
    "kpis",
    "investor_stage_changes",
    "tasks",
)
# Tasks: as many as investors (1,000,000 at `large`), spread over this many users (the bench
# user, id 1, is one of them) and over six years of due dates, so that whatever day the bench
# runs on, "today" holds a few of each user's tasks.
TASK_USERS = 50
TASK_START = date(2023, 1, 1)
TASK_DAYS = 6 * 365
TASK_TITLES = [
    "Rappeler",
    "Envoyer la plaquette",
    "Relancer",
    "Préparer le rendez-vous",
    "Envoyer le compte rendu",
    "Point négociation",
]
# 90 days of a busy salesperson's notifications (NOTIFICATION_RETENTION_DAYS).
BENCH_NOTIFICATIONS = 100_000

FAMILIES = [
    "Dupré",
    "Lefèvre",
    "Rothschild",
    "Bérard",
    "Gauthier",
    "Mercier",
    "Rousseau",
    "Fontaine",
    "Chevalier",
    "Lévêque",
    "Moreau",
    "Girard",
    "Bonnaire",
    "Béranger",
    "Dubois",
    "Lemaître",
    "Faure",
    "André",
    "Perrin",
    "Laurent",
    "Garnier",
    "Leclerc",
    "Hébert",
    "Pelletier",
    "Brûlé",
    "Caron",
    "Thévenin",
    "Noël",
    "Joubert",
    "Mallet",
    "Ménard",
    "Aubry",
    "Carré",
    "Régnier",
    "Lacroix",
    "Benoît",
    "Maréchal",
    "Delorme",
    "Frémont",
    "Giraud",
    "Brunet",
    "Roux",
    "Colin",
    "Lambert",
    "Barbier",
    "Lefort",
    "Guérin",
    "Boucher",
    "Étienne",
    "Gérard",
    "Ducasse",
    "Hérault",
    "Lécuyer",
    "Péllissier",
    "Vallée",
    "Séverin",
]
FIRST_NAMES = [
    "Hélène",
    "François",
    "Amélie",
    "Stéphane",
    "Cécile",
    "Jérôme",
    "Élodie",
    "Frédéric",
    "Benoît",
    "Anaïs",
    "Clément",
    "Océane",
    "Raphaël",
    "Zoé",
    "Noël",
    "Maëlle",
    "Loïc",
    "Gaëlle",
    "Timothée",
    "Léa",
    "Chloé",
    "Mathéo",
    "Inès",
    "Rémi",
    "Agnès",
    "Thérèse",
    "Josée",
    "André",
    "Hervé",
    "Valérie",
    "Sébastien",
    "Aurélie",
    "Grégoire",
    "Mélanie",
    "Jérémy",
    "Estelle",
    "Renée",
    "Céline",
    "Théo",
    "Margaux",
]
REGIONS = (
    "Île-de-France",
    "Bretagne",
    "Normandie",
    "Provence-Alpes-Côte d'Azur",
    "Rhône-Alpes",
    "Aquitaine",
    "Alsace",
    "Lorraine",
    "Bourgogne-Franche-Comté",
    "Pays de la Loire",
    "Occitanie",
    "Champagne-Ardenne",
    "Hauts-de-France",
    "Centre-Val de Loire",
)
FIRM_PATTERNS = (
    "Cabinet {f} Patrimoine",
    "{f} & Associés",
    "Banque {f}",
    "{f} Gestion Privée",
    "Family Office {f}",
    "Crédit Agricole {r}",
    "Caisse d'Épargne {r}",
    "Société Générale Gestion {r}",
    "{f} Conseil & Patrimoine",
    "Financière {f}",
    "Mutuelle {r}",
    "Banque Populaire {r}",
    "{f} Finance",
    "Compagnie Financière {f}",
)
GROUPS = (
    "Groupe BPCE",
    "Crédit Agricole SA",
    "Société Générale",
    "BNP Paribas",
    "Groupe Rothschild & Co",
    "AXA",
    "Natixis",
    "La Banque Postale",
    "Crédit Mutuel",
    "Indépendant",
)
INDUSTRIES = (
    "Gestion de patrimoine",
    "Banque privée",
    "Assurance vie",
    "Family office",
    "Caisse de retraite",
    "Fonds de pension",
    "Mutuelle",
    "Société de gestion",
    "Banque de détail",
)
TITLES = (
    "Directeur général",
    "Gérant",
    "Conseiller en gestion de patrimoine",
    "Responsable conformité",
    "Directrice des investissements",
    "Chargé d'affaires",
    "Associée",
    "Analyste",
    None,
)
SUBJECTS = (
    "Présentation du fonds",
    "Relance après rendez-vous",
    "Point trimestriel",
    "Envoi de la documentation réglementaire",
    "Due diligence : questions complémentaires",
    "Déjeuner d'affaires",
    "Webinaire perspectives de marché",
    "Signature du bulletin de souscription",
    "Appel de courtoisie",
    "Revue de portefeuille",
    None,
)
NOTES = (
    "Intéressé par les fonds à impact, rappeler en septembre.",
    "Souhaite un comparatif des frais avant de s'engager.",
    "Très réactif ; préfère être contacté le matin.",
    "Décision reportée après l'assemblée générale.",
    "A demandé la plaquette commerciale et le DICI.",
)
MAIL_DOMAINS = ("gmail.com", "orange.fr", "wanadoo.fr", "free.fr", "laposte.net")


def weighted(pairs: Sequence[tuple[Any, int]]) -> list[Any]:
    """A list where each value appears `weight` times: a uniform pick is a weighted pick."""
    return [value for value, weight in pairs for _ in range(weight)]


STAGES = weighted(
    [
        ("prospect_froid", 35),
        ("prospect_tiede", 20),
        ("prospect_chaud", 12),
        ("en_negociation", 8),
        ("client", 15),
        ("perdu", 10),
    ]
)
CLIENT_TYPES = weighted(
    [("cgpi", 45), ("wholesale", 15), ("institutionnel", 15), ("autre", 5), (None, 20)]
)
INTERACTION_TYPES = weighted(
    [("appel", 35), ("email", 30), ("reunion", 20), ("webinaire", 10), ("autre", 5)]
)
CONTACT_COUNTS = (0, 1, 1, 2, 2, 2, 3, 3, 4)  # mean 2
INTERACTIONS_MIN, INTERACTIONS_MAX = 5, 15  # mean 10


def ascii_slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())


def phone(rng: Random) -> str:
    digits = [f"{rng.randrange(100):02d}" for _ in range(4)]
    return f"0{rng.choice('1234567')} " + " ".join(digits)


@dataclass(frozen=True)
class Plan:
    """Row counts derived from the seed, shared by the generators that reference each other."""

    investors: int
    contact_counts: list[int]
    contact_starts: list[int]  # first contact id of each investor (index 0 = investor 1)
    interaction_counts: list[int]

    @classmethod
    def build(cls, investors: int) -> "Plan":
        rng = Random(f"{SEED}:plan")
        contacts = [rng.choice(CONTACT_COUNTS) for _ in range(investors)]
        starts = [
            1 + total - count for total, count in zip(accumulate(contacts), contacts, strict=True)
        ]
        interactions = [rng.randint(INTERACTIONS_MIN, INTERACTIONS_MAX) for _ in range(investors)]
        return cls(investors, contacts, starts, interactions)

    @property
    def contacts(self) -> int:
        return sum(self.contact_counts)

    @property
    def interactions(self) -> int:
        return sum(self.interaction_counts)

    @property
    def kpis(self) -> int:
        return self.investors // 3 * 12 * len(KPI_YEARS)

    @property
    def tasks(self) -> int:
        return self.investors


class Progress:
    def __init__(self, table: str, total: int) -> None:
        self.table, self.total, self.done = table, total, 0
        self.step = max(total // 10, 1)
        self.started = time.perf_counter()

    def tick(self) -> None:
        self.done += 1
        if self.done % self.step == 0 or self.done == self.total:
            elapsed = time.perf_counter() - self.started
            rate = self.done / elapsed if elapsed else 0
            print(
                f"  {self.table:<24} {self.done:>11,} / {self.total:,}"
                f"  ({rate:,.0f} rows/s, {elapsed:.0f} s)",
                flush=True,
            )


def investor_rows(plan: Plan, label: str = "investors") -> Iterator[tuple[Any, ...]]:
    rng = Random(f"{SEED}:investors")
    r = rng.random
    rare_every = max(plan.investors // RARE_COUNT, 1)
    progress = Progress(label, plan.investors)
    for investor_id in range(1, plan.investors + 1):
        family = FAMILIES[int(r() * len(FAMILIES))]
        if investor_id % rare_every == 0:
            family = RARE_SURNAME
        region = REGIONS[int(r() * len(REGIONS))]
        name = FIRM_PATTERNS[int(r() * len(FIRM_PATTERNS))].format(f=family, r=region)
        slug = ascii_slug(family)
        email = None
        if r() < 0.95:
            domain = f"{slug}-patrimoine.fr" if r() < 0.5 else MAIL_DOMAINS[int(r() * 5)]
            email = f"contact.{slug}{investor_id}@{domain}"
        created = CREATED_START + timedelta(seconds=int(r() * CREATED_SECONDS))
        yield (
            investor_id,
            name,
            email,
            phone(rng) if r() < 0.8 else None,
            f"https://www.{slug}-patrimoine.fr" if r() < 0.5 else None,
            GROUPS[int(r() * len(GROUPS))] if r() < 0.6 else None,
            INDUSTRIES[int(r() * len(INDUSTRIES))],
            NOTES[int(r() * len(NOTES))] if r() < 0.3 else None,
            STAGES[int(r() * len(STAGES))],
            CLIENT_TYPES[int(r() * len(CLIENT_TYPES))],
            r() < 0.9,
            created,
            created + timedelta(seconds=int(r() * 86_400 * 90)),
        )
        progress.tick()


INVESTOR_COLUMNS = [
    "id",
    "name",
    "email",
    "phone",
    "website",
    "company",
    "industry",
    "notes",
    "pipeline_stage",
    "client_type",
    "is_active",
    "created_at",
    "updated_at",
]


def stage_change_rows(plan: Plan) -> Iterator[tuple[Any, ...]]:
    # Same generator as the investors: the creation entry carries their stage and date.
    for row in investor_rows(plan, "investor_stage_changes"):
        yield (row[0], row[0], None, row[8], row[11], BENCH_USER_ID)


STAGE_CHANGE_COLUMNS = ["id", "investor_id", "from_stage", "to_stage", "changed_at", "changed_by"]


def contact_rows(plan: Plan) -> Iterator[tuple[Any, ...]]:
    rng = Random(f"{SEED}:contacts")
    r = rng.random
    progress = Progress("contacts", plan.contacts)
    stamp = datetime(2024, 1, 1, tzinfo=UTC)
    contact_id = 0
    for investor_id, count in enumerate(plan.contact_counts, start=1):
        for _ in range(count):
            contact_id += 1
            first = FIRST_NAMES[int(r() * len(FIRST_NAMES))]
            last = FAMILIES[int(r() * len(FAMILIES))]
            email = (
                f"{ascii_slug(first)}.{ascii_slug(last)}.{contact_id}@"
                + MAIL_DOMAINS[int(r() * len(MAIL_DOMAINS))]
            )
            yield (
                contact_id,
                investor_id,
                f"{first} {last}",
                email if r() < 0.9 else None,
                phone(rng) if r() < 0.7 else None,
                TITLES[int(r() * len(TITLES))],
                NOTES[int(r() * len(NOTES))] if r() < 0.1 else None,
                stamp,
                stamp,
            )
            progress.tick()


CONTACT_COLUMNS = [
    "id",
    "investor_id",
    "name",
    "email",
    "phone",
    "title",
    "notes",
    "created_at",
    "updated_at",
]


def interaction_rows(plan: Plan) -> Iterator[tuple[Any, ...]]:
    rng = Random(f"{SEED}:interactions")
    r = rng.random
    progress = Progress("interactions", plan.interactions)
    dates = [INTERACTION_START + timedelta(days=day) for day in range(INTERACTION_DAYS)]
    stamps = [datetime.combine(day, datetime.min.time(), UTC) for day in dates]
    durations = [None, 5, 10, 15, 20, 30, 45, 60, 90, 120]
    interaction_id = 0
    for index, count in enumerate(plan.interaction_counts):
        investor_id = index + 1
        n_contacts = plan.contact_counts[index]
        first_contact = plan.contact_starts[index]
        for _ in range(count):
            interaction_id += 1
            day = int(r() * INTERACTION_DAYS)
            contact = first_contact + int(r() * n_contacts) if n_contacts and r() < 0.6 else None
            yield (
                interaction_id,
                investor_id,
                contact,
                INTERACTION_TYPES[int(r() * len(INTERACTION_TYPES))],
                dates[day],
                durations[int(r() * len(durations))],
                SUBJECTS[int(r() * len(SUBJECTS))],
                NOTES[int(r() * len(NOTES))] if r() < 0.2 else None,
                BENCH_USER_ID,
                stamps[day],
                stamps[day],
            )
            progress.tick()


INTERACTION_COLUMNS = [
    "id",
    "investor_id",
    "contact_id",
    "type",
    "date",
    "duration_minutes",
    "subject",
    "notes",
    "created_by",
    "created_at",
    "updated_at",
]


def kpi_rows(plan: Plan) -> Iterator[tuple[Any, ...]]:
    rng = Random(f"{SEED}:kpis")
    r = rng.random
    progress = Progress("kpis", plan.kpis)
    revenues = [Decimal(0)] * 400 + [
        Decimal(rng.randrange(100_000, 50_000_000)) / 100 for _ in range(600)
    ]
    rates = [Decimal(rate) / 100 for rate in range(25, 301, 5)]
    kpi_id = 0
    for investor_id in range(3, plan.investors + 1, 3):
        for year in KPI_YEARS:
            for month in range(1, 13):
                kpi_id += 1
                stamp = datetime(year, month, 28, tzinfo=UTC)
                yield (
                    kpi_id,
                    investor_id,
                    year,
                    month,
                    int(r() * 11),
                    int(r() * 6),
                    int(r() * 4),
                    int(r() * 3),
                    revenues[int(r() * len(revenues))],
                    rates[int(r() * len(rates))],
                    None,
                    stamp,
                    stamp,
                )
                progress.tick()


def task_rows(plan: Plan) -> Iterator[tuple[Any, ...]]:
    rng = Random(f"{SEED}:tasks")
    r = rng.random
    progress = Progress("tasks", plan.tasks)
    dates = [TASK_START + timedelta(days=day) for day in range(TASK_DAYS)]
    stamp = datetime(2024, 1, 1, tzinfo=UTC)
    priorities = ["basse", "normale", "normale", "normale", "haute", "urgente"]
    # Mostly open or done; finished tasks carry their completion time (a CHECK constraint).
    statuses = ["a_faire"] * 10 + ["en_cours"] * 2 + ["terminee"] * 7 + ["annulee"]
    for task_id in range(1, plan.tasks + 1):
        assignee = 1 + int(r() * TASK_USERS)
        status = statuses[int(r() * len(statuses))]
        investor = 1 + int(r() * plan.investors) if r() < 0.8 else None
        yield (
            task_id,
            TASK_TITLES[int(r() * len(TASK_TITLES))],
            dates[int(r() * TASK_DAYS)],
            priorities[int(r() * len(priorities))],
            status,
            assignee,
            investor,
            "manual",
            assignee,
            stamp if status == "terminee" else None,
            stamp,
            stamp,
        )
        progress.tick()


TASK_COLUMNS = [
    "id",
    "title",
    "due_date",
    "priority",
    "status",
    "assignee_id",
    "investor_id",
    "source",
    "created_by",
    "completed_at",
    "created_at",
    "updated_at",
]


KPI_COLUMNS = [
    "id",
    "investor_id",
    "year",
    "month",
    "rdv_count",
    "pitchs",
    "due_diligences",
    "closings",
    "revenue",
    "commission_rate",
    "notes",
    "created_at",
    "updated_at",
]


def migration_head() -> str:
    """The head revision plus a digest of the migration files (edited in place before release)."""
    head = ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()
    digest = hashlib.sha256()
    for path in sorted((PROJECT_ROOT / "alembic" / "versions").glob("*.py")):
        digest.update(path.read_bytes())
    return f"{head}:{digest.hexdigest()[:12]}"


def signature(investors: int) -> str:
    """What the database comment records, so a later run can tell whether it can reuse it."""
    return f"crm-bench investors={investors} seed={SEED} head={migration_head()}"


async def database_signature(cluster: Cluster, database: str) -> str | None:
    conn = await asyncpg.connect(cluster.dsn("postgres"))
    try:
        value: str | None = await conn.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            database,
        )
        return value
    finally:
        await conn.close()


async def load(cluster: Cluster, database: str, investors: int) -> None:
    started = time.perf_counter()
    # About 6 GB at 1M investors (tables and indexes), plus headroom for the index builds.
    needed_gb = max(1.0, 15 * investors / 1_000_000)
    free_gb = shutil.disk_usage(cluster.pgdata).free / 1e9
    if free_gb < needed_gb:
        raise SystemExit(f"Only {free_gb:.0f} GB free in {cluster.pgdata}, need {needed_gb:.0f}")
    plan = Plan.build(investors)
    print(
        f"Seeding {database}: {plan.investors:,} investors, {plan.contacts:,} contacts, "
        f"{plan.interactions:,} interactions, {plan.kpis:,} KPI rows, {plan.tasks:,} tasks",
        flush=True,
    )
    cluster.psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    cluster.ensure_database(database)
    await asyncio.to_thread(upgrade_to_head, cluster.url(database))
    conn = await asyncpg.connect(cluster.dsn(database))
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename = ANY($1::text[]) "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)",
            list(BIG_TABLES),
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        async with conn.transaction():
            # A table truncated in the same transaction is written without WAL (wal_level
            # minimal); replica mode skips the foreign-key triggers, the rows are consistent
            # by construction.
            await conn.execute(
                "TRUNCATE users, investors, contacts, interactions, kpis, "
                "investor_stage_changes, tasks, login_failures RESTART IDENTITY CASCADE"
            )
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "INSERT INTO users (id, email, full_name, hashed_password, role, is_active) "
                "VALUES ($1, $2, 'Benchmark', $3, 'admin', true)",
                BENCH_USER_ID,
                BENCH_EMAIL,
                hash_password(BENCH_PASSWORD),
            )
            # The bench user's colleagues, who hold the other tasks.
            await conn.executemany(
                "INSERT INTO users (id, email, full_name, hashed_password, role, is_active) "
                "VALUES ($1, $2, $3, 'not-a-hash', 'user', true)",
                [
                    (user_id, f"colleague{user_id}@tpm-finance.fr", f"Colleague {user_id}")
                    for user_id in range(BENCH_USER_ID + 1, TASK_USERS + 1)
                ],
            )
            copies = [
                ("investors", INVESTOR_COLUMNS, investor_rows(plan)),
                ("contacts", CONTACT_COLUMNS, contact_rows(plan)),
                ("interactions", INTERACTION_COLUMNS, interaction_rows(plan)),
                ("kpis", KPI_COLUMNS, kpi_rows(plan)),
                ("investor_stage_changes", STAGE_CHANGE_COLUMNS, stage_change_rows(plan)),
                ("tasks", TASK_COLUMNS, task_rows(plan)),
            ]
            for table, columns, rows in copies:
                await conn.copy_records_to_table(table, records=rows, columns=columns)
            # The bench user's notifications over the retention period, one in 20 unread: what
            # GET /notifications/unread-count counts (replica mode: no NOTIFY per row).
            await conn.execute(
                "INSERT INTO notifications (user_id, kind, title, created_at, read_at) "
                "SELECT $1, 'investor_assigned', 'Investisseur attribué : ' || g, "
                "now() - g * interval '1 minute', CASE WHEN g % 20 <> 0 THEN now() END "
                "FROM generate_series(1, $2) AS g",
                BENCH_USER_ID,
                BENCH_NOTIFICATIONS,
            )
            # Replica mode also skipped the triggers: recompute what they keep, once.
            for statement in REBUILD_DERIVED_SQL:
                await conn.execute(statement)
        print(f"  rows loaded in {time.perf_counter() - started:.0f} s; rebuilding indexes")
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        for index in indexes:
            step = time.perf_counter()
            await conn.execute(index["indexdef"])
            print(f"  index {index['indexname']:<40} {time.perf_counter() - step:5.1f} s")
        for table in ("users", *BIG_TABLES):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        step = time.perf_counter()
        # VACUUM also sets the visibility map, which index-only scans need.
        await conn.execute(f"VACUUM (ANALYZE) users, notifications, {', '.join(BIG_TABLES)}")
        print(f"  VACUUM ANALYZE {time.perf_counter() - step:.0f} s")
        await conn.execute(f"COMMENT ON DATABASE {database} IS '{signature(investors)}'")
    finally:
        await conn.close()
    print(f"Seeded {database} in {time.perf_counter() - started:.0f} s", flush=True)


async def ensure_seeded(cluster: Cluster, size: str, *, reseed: bool = False) -> str:
    """The bench database for `size`, seeded unless an identical one is already there."""
    database = f"bench_{size}"
    investors = SIZES[size]
    if not reseed and await database_signature(cluster, database) == signature(investors):
        print(f"Reusing {database}: already {investors:,} investors at migration head", flush=True)
    else:
        await load(cluster, database, investors)
    return database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("--reseed", action="store_true", help="reload even if up to date")
    args = parser.parse_args()
    cluster = start_cluster()
    try:
        asyncio.run(ensure_seeded(cluster, args.size, reseed=args.reseed))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
