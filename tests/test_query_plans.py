"""No request path reads a whole table: the SQL of every API operation, planned on a small set.

Each request runs through the real app while the engine records its statements. Each statement
is then planned again with its own parameters under `enable_seqscan = off`: on tables this small
PostgreSQL would scan sequentially whatever the indexes, with the penalty it takes an index
whenever one can serve the filter or the order, so what is left is what no index serves, i.e. a
whole-table read at 1M investors and 10M interactions. The tables' statistics are dropped for the
planning, whose transaction is rolled back: a small sample's statistics make any value look
common. Writes are only EXPLAINed, never run a second time; reads are EXPLAIN ANALYZEd. A
whole-table read is any of:

- a Seq Scan;
- an index scan whose condition leaves out the index's leading column: PostgreSQL 16, the
  production version, has no skip scan and walks the whole index;
- an index scan with no condition, unless it feeds a LIMIT through nodes that pass rows on one by
  one and discards none: that is a page read in index order, which stops after skip + limit rows.
  The skip-based deep page is such a read, proportional to skip (the cursor avoids it);
- a bitmap index scan that returned every row of its table only for the recheck to discard some:
  its condition narrowed nothing (a trigram pattern too short to hold a trigram does that).

Tables: the counter tables are exempt (their key space bounds them to 60, 1,212 and 80 rows, and
the statistics and list totals read them whole by design). Users stay checked: every request
looks its user up, and anyone can grow login_failures; only the admin's user list reads the
staff table whole.
Foreign-key cascades and triggers run outside the statements EXPLAIN sees: that every foreign key
has an index leading with its columns is checked apart. The statements the search functions run
(migration 0008) are planned inside them, each for its own arguments: auto_explain reports each
of their plans, judged like the others.
"""

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, get_args

import pyotp
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from core.clock import today as paris_today
from core.db import db
from core.encryption import keyring
from main import app as fastapi_app
from models import Base
from schemas.investor import InvestorSort
from services.jobs import JobService
from services.two_factor import recovery_code_digest, totp_context
from services.users import caller_cache
from tests.conftest import ADMIN_PASSWORD, connection_as, engine_event
from tests.factories import (
    CONTACTS,
    INVESTORS,
    USER_PASSWORD,
    create_user,
    execute,
    first_admin_id,
    make_contact,
    make_investor,
    scalar,
)
from worker.tasks import PurgePayload

# Statements are EXPLAINed on a connection of their own.
pytestmark = pytest.mark.committing

Statement = tuple[str, Any]
PlanNode = dict[str, Any]

# What a read of the investors, contacts, interactions and KPIs filters rows with when it walks
# an index: it only skips the trash, which holds TRASH_RETENTION_DAYS of deletions, a small
# share of any table (migration 0017).
LIVE_FILTER = "(deleted_at IS NULL)"
COUNTER_TABLES = {"investor_counts", "kpi_month_totals", "interaction_type_counts"}
CHECKED_TABLES = sorted({table.name for table in Base.metadata.sorted_tables} - COUNTER_TABLES)
# Nodes that pass rows up one at a time (from the child so related), so a LIMIT above them
# stops the scan below.
STREAMING = {
    "Nested Loop": "Outer",
    "Subquery Scan": "Outer",
    "Result": "Outer",
    "Incremental Sort": "Outer",
    "LockRows": "Outer",
    "Append": "Member",
    "Merge Append": "Member",
}
WRITES = ("INSERT", "UPDATE", "DELETE")
READS = ("SELECT", "WITH")
IN_A_FUNCTION = "(in a function)"
# The plan of every statement a function runs, as JSON, sent to this client as a log message.
AUTO_EXPLAIN = {
    "log_min_duration": "0",
    "log_nested_statements": "on",
    "log_analyze": "on",
    "log_format": "json",
}


@contextmanager
def captured_statements() -> Iterator[list[Statement]]:
    statements: list[Statement] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        statements.append((sql, params))

    # The caller's account is normally cached: forget it, so its lookup is planned too.
    caller_cache.clear()
    with engine_event("before_cursor_execute", capture):
        yield statements


async def plans(statements: list[Statement]) -> list[tuple[str, PlanNode]]:
    """(sql, plan) of each statement, with its own parameters and sequential scans penalised."""
    planned = []
    # As a superuser: LOAD is not the app role's to run.
    async with connection_as("superuser") as conn:
        # Never committed: the setting and whatever the reads did end with the connection.
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        # Likewise for joins: at 1M rows a page (200 rows at most) joins a big table through
        # index probes, but tiny tables with stale statistics tempt the planner into merge or
        # hash joins that walk a whole primary key.
        await conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        await conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
        # Planned as if never analysed: ids restart at 1 in every test, so whenever autovacuum
        # has analysed the tables the committing tests filled, investor 1, `create` or January
        # match most rows and walking a primary key looks cheap; and its row counts describe
        # tables since truncated. Without them the default selectivities model what a filter
        # is at scale (one value among many), and sizes come from the sample's own pages. In
        # this transaction only, like the settings above.
        public = "SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        await conn.exec_driver_sql(f"DELETE FROM pg_statistic WHERE starelid IN ({public})")
        await conn.exec_driver_sql(
            "UPDATE pg_class SET reltuples = -1, relpages = 0, relallvisible = 0 "
            f"WHERE oid IN ({public})"
        )
        await conn.exec_driver_sql("LOAD 'auto_explain'")
        for name, value in AUTO_EXPLAIN.items():
            await conn.exec_driver_sql(f"SET LOCAL auto_explain.{name} = {value}")
        await conn.exec_driver_sql("SET LOCAL client_min_messages = log")
        logged: list[str] = []

        def log(_conn: object, message: Any) -> None:
            logged.append(message.message)

        driver: Any = (await conn.get_raw_connection()).driver_connection
        driver.add_log_listener(log)
        try:
            for sql, params in statements:
                kind = sql.lstrip()[:6].upper()
                if kind.startswith(READS):
                    explain = "EXPLAIN (ANALYZE, FORMAT JSON)"
                elif kind.startswith(WRITES):
                    explain = "EXPLAIN (FORMAT JSON)"
                else:
                    continue  # SAVEPOINT and RELEASE
                logged.clear()
                result = await conn.exec_driver_sql(f"{explain} {sql}", params)
                (plan,) = result.scalar_one()
                planned.append((sql, plan["Plan"]))
                await asyncio.sleep(0)  # log listeners are called soon, not at once
                planned += nested_plans(logged)
        finally:
            driver.remove_log_listener(log)
    return planned


def nested_plans(messages: list[str]) -> list[tuple[str, PlanNode]]:
    """(sql, plan) of each statement run inside a function, from auto_explain's messages (the
    explained statement itself is left out: EXPLAIN shows it already)."""
    found = []
    for message in messages:
        if "plan:" not in message:
            continue
        report = json.loads(message[message.index("{") :])
        if not report["Query Text"].lstrip().upper().startswith("EXPLAIN"):
            found.append((f"{IN_A_FUNCTION} {report['Query Text']}", report["Plan"]))
    return found


def nodes(plan: PlanNode, ancestors: tuple[PlanNode, ...] = ()) -> Iterator[tuple[PlanNode, ...]]:
    """Every node of the plan, as its path from the root."""
    path = (*ancestors, plan)
    yield path
    for child in plan.get("Plans", []):
        yield from nodes(child, path)


def relations(plan: PlanNode) -> Iterator[tuple[str, str]]:
    """(node type, relation) of every plan node reading a relation."""
    for *_, node in nodes(plan):
        if "Relation Name" in node:
            yield node["Node Type"], node["Relation Name"]


@dataclass(frozen=True)
class Database:
    """What judging a plan needs from the catalog: each index's table and leading column
    (None for an expression), and how many rows each checked table holds."""

    index_tables: dict[str, str]
    leading_columns: dict[str, str | None]
    rows: dict[str, int]

    @classmethod
    async def read(cls, conn: AsyncConnection) -> "Database":
        indexes = await conn.execute(
            text(
                "SELECT ic.relname AS name, tc.relname AS table_name, a.attname AS leading "
                "FROM pg_index i "
                "JOIN pg_class ic ON ic.oid = i.indexrelid "
                "JOIN pg_class tc ON tc.oid = i.indrelid "
                "LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE tc.relnamespace = 'public'::regnamespace"
            )
        )
        index_rows = indexes.all()
        counts = ", ".join(f"(SELECT count(*) FROM {table})" for table in CHECKED_TABLES)
        sizes = (await conn.execute(text(f"SELECT {counts}"))).one()
        return cls(
            index_tables={row.name: row.table_name for row in index_rows},
            leading_columns={row.name: row.leading for row in index_rows},
            rows=dict(zip(CHECKED_TABLES, sizes, strict=True)),
        )


def _feeds_a_limit(path: tuple[PlanNode, ...]) -> bool:
    child = path[-1]
    for parent in reversed(path[:-1]):
        if parent["Node Type"] == "Limit":
            return True
        if STREAMING.get(parent["Node Type"]) != child.get("Parent Relationship"):
            return False
        child = parent
    return False


def _mentions(condition: str, column: str) -> bool:
    # Not after a letter or "::", so that "date" is not found in "'2026-01-01'::date".
    return re.search(rf"(?<![\w:]){re.escape(column)}\b", condition) is not None


def whole_table_reads(plan: PlanNode, database: Database) -> Iterator[tuple[str, str]]:
    """(table, how) for each node of the plan that reads a whole checked table or index."""
    for path in nodes(plan):
        node = path[-1]
        kind, index = node["Node Type"], node.get("Index Name")
        table = node.get("Relation Name") or database.index_tables.get(index or "")
        if table not in CHECKED_TABLES:
            continue
        where = f"{kind} on {table}" + (f" using {index}" if index else "")
        condition = node.get("Index Cond")
        leading = database.leading_columns.get(index or "")
        if kind == "Seq Scan":
            yield table, f"{where}: no index serves it"
        elif kind == "Bitmap Heap Scan":
            # The bitmap's scan; a filter's subquery is a child too.
            (child,) = [child for child in node["Plans"] if child["Parent Relationship"] == "Outer"]
            discarded = node.get("Rows Removed by Index Recheck", 0)
            if discarded and child.get("Actual Rows", 0) >= database.rows[table] > 0:
                yield table, f"{where}: its index returned every row, {discarded:.0f} thrown away"
        elif index is None:
            continue
        elif condition is not None:
            # PostgreSQL 18 (the embedded server) may skip-scan an index whose leading column
            # is not filtered; 16 (production) cannot, and would then use another index led by
            # a filtered column: only when there is none does 16 read a whole index.
            if (
                leading is not None
                and not _mentions(condition, leading)
                and not any(
                    database.index_tables[other] == table
                    and column
                    and _mentions(condition, column)
                    for other, column in database.leading_columns.items()
                )
            ):
                yield table, f"{where}: {condition} leaves out the leading column {leading}"
        elif "Filter" in node and node["Filter"] != LIVE_FILTER:
            # Even under a LIMIT: a selective filter leaves the walk going to the end.
            yield table, f"{where}: walks the index discarding rows ({node['Filter']})"
        elif not _feeds_a_limit(path):
            yield table, f"{where}: reads the whole index, with no condition and no LIMIT"


def render(plan: PlanNode, depth: int = 0) -> str:
    """A short text form of the plan, for failure messages."""
    keys = ("Relation Name", "Index Name", "Index Cond", "Recheck Cond", "Filter")
    details = ", ".join(f"{key}: {plan[key]}" for key in keys if key in plan)
    lines = ["  " * depth + plan["Node Type"] + (f" ({details})" if details else "")]
    lines += [render(child, depth + 1) for child in plan.get("Plans", [])]
    return "\n".join(lines)


@dataclass(frozen=True)
class Sample:
    """Ids of the small data set the request paths run against."""

    investor: int
    contact: int
    interaction: int
    kpi: int
    user: int
    queued_job: int
    failed_job: int
    # The refresh token of a login of the sample's user, for the refresh's whole path.
    refresh_token: str
    trashed_investor: int
    task: int
    # One of the admin's unread notifications.
    notification: int
    data_import: int


async def post(client: AsyncClient, headers: dict[str, str], url: str, body: Any) -> Any:
    response = await client.post(url, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
async def sample(client: AsyncClient, admin_headers: dict[str, str]) -> Sample:
    """Three investors with contacts, interactions and KPIs, where every filter value and search
    term below matches: a list that finds rows runs its page statement too."""
    quintavalle = await make_investor(
        client,
        admin_headers,
        name="Quintavalle Gestion",
        email="contact@quintavalle.fr",
        pipeline_stage="prospect_chaud",
        client_type="cgpi",
    )
    rothschild = await make_investor(
        client,
        admin_headers,
        name="Banque Rothschild",
        pipeline_stage="client",
        client_type="wholesale",
        is_active=False,
    )
    await make_investor(client, admin_headers, name="Banque Populaire", client_type="cgpi")
    contact = await make_contact(client, admin_headers, quintavalle["id"])
    await make_contact(client, admin_headers, quintavalle["id"], name="Élodie Lefèvre")
    await make_contact(client, admin_headers, rothschild["id"], name="Marc Banque")
    logged = [
        (quintavalle, {"type": "appel", "date": "2026-01-12", "contact_id": contact["id"]}),
        (quintavalle, {"type": "email", "date": "2026-02-03"}),
        (quintavalle, {"type": "reunion", "date": "2025-11-20"}),
        (rothschild, {"type": "appel", "date": "2026-01-15"}),
    ]
    interactions = [
        await post(client, admin_headers, f"{INTERACTIONS}/investor/{investor['id']}", body)
        for investor, body in logged
    ]
    recorded = [
        (quintavalle, {"year": 2026, "month": 1, "revenue": 1000, "commission_rate": 1.5}),
        (quintavalle, {"year": 2026, "month": 2, "rdv_count": 2}),
        (rothschild, {"year": 2026, "month": 1}),
    ]
    kpis = [
        await post(client, admin_headers, f"{KPIS}/investor/{investor['id']}", body)
        for investor, body in recorded
    ]
    # In the trash, with a contact, an interaction and a KPI, and a contact trashed on its own.
    trashed = await make_investor(client, admin_headers, name="Banque Supprimée")
    trashed_contact = await make_contact(client, admin_headers, trashed["id"])
    await make_contact(client, admin_headers, trashed["id"], name="Marc Supprimé")
    await post(client, admin_headers, f"{INTERACTIONS}/investor/{trashed['id']}", logged[1][1])
    await post(client, admin_headers, f"{KPIS}/investor/{trashed['id']}", recorded[0][1])
    for url in (f"{CONTACTS}/{trashed_contact['id']}", f"{INVESTORS}/{trashed['id']}"):
        response = await client.delete(url, headers=admin_headers)
        assert response.status_code == 204, response.text
    async with db.sessionmaker() as session, session.begin():
        jobs = JobService(session)
        queued_job = await jobs.enqueue("jobs.purge", PurgePayload())
        failed_job = await jobs.enqueue("jobs.purge", PurgePayload())
        await session.execute(
            text("UPDATE jobs SET status = 'failed', attempts = 3 WHERE id = :id"),
            {"id": failed_job},
        )
    user = await create_user("planner@crm.test")
    login = await client.post(
        "/api/v1/auth/login", json={"email": "planner@crm.test", "password": USER_PASSWORD}
    )
    assert login.status_code == 200, login.text
    # An account with two-factor login on and a known recovery code (login with otp below).
    second_factor = await create_user("second-factor@crm.test")
    async with db.sessionmaker() as session, session.begin():
        sealed = keyring().encrypt(pyotp.random_base32(), context=totp_context(second_factor))
        await session.execute(
            text("UPDATE users SET totp_secret = :sealed WHERE id = :id"),
            {"sealed": sealed, "id": second_factor},
        )
        await session.execute(
            text("INSERT INTO recovery_codes (user_id, code_hash) VALUES (:id, :digest)"),
            {"id": second_factor, "digest": recovery_code_digest(RECOVERY_CODE)},
        )
    planner = user
    # The admin's notifications, read and unread (the other users' are not its own).
    admin = await first_admin_id()
    notifications = [
        await scalar(
            "INSERT INTO notifications (user_id, kind, title, read_at) "
            "VALUES (:u, 'investor_assigned', 'Bonjour', CASE WHEN :read THEN now() END) "
            "RETURNING id",
            u=recipient,
            read=read,
        )
        for recipient, read in [(admin, True), (admin, False), (planner, False)]
    ]
    notification = notifications[1]
    # A processed import with two refused rows.
    data_import = await scalar(
        "INSERT INTO imports (entity, mode, on_duplicate, file_format, filename, outcome, "
        "error_count) VALUES ('investor', 'dry_run', 'error', 'csv', 'a.csv', 'failed', 2) "
        "RETURNING id"
    )
    await execute(
        'INSERT INTO import_errors (import_id, row, "column", value, code, message) '
        "VALUES (:id, 2, 'Nom', NULL, 'required', 'A value is required'), "
        "(:id, 3, 'E-mail', 'x', 'invalid_email', 'Not a valid email address')",
        id=data_import,
    )
    # The reset link's token, stored as the job stores it (its SHA-256).
    await execute(
        "INSERT INTO password_reset_tokens (token_hash, user_id, expires_at) "
        "VALUES (sha256(convert_to(:token, 'UTF8')), :user_id, now() + interval '30 minutes')",
        token=RESET_TOKEN,
        user_id=planner,
    )
    # The admin's day: a task due today and one overdue (the real clock's Paris date).
    today = paris_today()
    task = await post(
        client,
        admin_headers,
        TASKS,
        {
            "title": "Rappeler Quintavalle",
            "due_date": today.isoformat(),
            "investor_id": quintavalle["id"],
        },
    )
    await post(
        client,
        admin_headers,
        TASKS,
        {"title": "Relire le contrat", "due_date": (today - timedelta(days=1)).isoformat()},
    )
    return Sample(
        task=task["id"],
        investor=quintavalle["id"],
        contact=contact["id"],
        interaction=interactions[0]["id"],
        kpi=kpis[0]["id"],
        user=user,
        queued_job=queued_job,
        failed_job=failed_job,
        refresh_token=login.json()["refresh_token"],
        trashed_investor=trashed["id"],
        notification=notification,
        data_import=data_import,
    )


@dataclass(frozen=True)
class Call:
    """One request: its operation (method and route as the app declares them) and arguments."""

    name: str
    method: str
    route: str
    query: str = ""
    body: dict[str, Any] | None = None
    status: int = 200
    # A list page that must hold rows, or its page statement would not run.
    rows: bool = False
    # Requested with the `next_cursor` of the same query's first one-row page.
    after_first_page: bool = False
    # Tables this path reads whole by design.
    whole_tables: frozenset[str] = frozenset()
    # `{job_id:id}` names the sample's failed job rather than its queued one.
    failed_job: bool = False
    # The body is the sample's refresh token.
    sends_refresh_token: bool = False
    # The body names the sample's contact.
    names_contact: bool = False
    # A multipart form with this CSV file (the import's upload) instead of a JSON body.
    upload: bytes | None = None

    def url(self, sample: Sample, *more: str) -> str:
        values = {
            "investor_id:id": sample.investor,
            "contact_id:id": sample.contact,
            "interaction_id:id": sample.interaction,
            "kpi_id:id": sample.kpi,
            "user_id:id": sample.user,
            "job_id:id": sample.failed_job if self.failed_job else sample.queued_job,
            "year": 2026,
            "month": 1,
            "entity": "investor",
            "entity_id:id": sample.trashed_investor,
            "task_id:id": sample.task,
            "key": "stage_client",
            "notification_id:id": sample.notification,
            "file_format": "csv",
            "import_id:id": sample.data_import,
        }
        path = re.sub(r"\{([^}]+)\}", lambda match: str(values[match.group(1)]), self.route)
        query = "&".join(part for part in (self.query, *more) if part)
        return f"{path}?{query.format(investor=sample.investor)}" if query else path


def page(name: str, route: str, query: str = "", **arguments: Any) -> Call:
    return Call(name, "GET", route, query, rows=True, **arguments)


ONE_INVESTOR = f"{INVESTORS}/{{investor_id:id}}"
ONE_CONTACT = f"{CONTACTS}/{{contact_id:id}}"
INTERACTIONS = "/api/v1/interactions"
ONE_INTERACTION = f"{INTERACTIONS}/{{interaction_id:id}}"
KPIS = "/api/v1/kpis"
ONE_KPI = f"{KPIS}/{{kpi_id:id}}"
USERS = "/api/v1/users"
TRASH = "/api/v1/trash"
AUDIT_LOG = frozenset({"audit_log"})
ONE_TRASHED = f"{TRASH}/{{entity}}/{{entity_id:id}}"
JOBS = "/api/v1/jobs"
IMPORTS = "/api/v1/imports"
AUDIT = "/api/v1/audit"
NOTIFICATIONS = "/api/v1/notifications"
SEARCH = f"{INVESTORS}/search"
RECOVERY_CODE = "aaaa-bbbb-cccc-dddd"
SORTS = list(get_args(InvestorSort))
RESET_TOKEN = "planned-reset-token"
TASKS = "/api/v1/tasks"
ONE_TASK = f"{TASKS}/{{task_id:id}}"
RULES = "/api/v1/follow-up-rules"
EXPORT_INVESTORS = "/api/v1/exports/investor.{file_format}"
EXPORT_CONTACTS = "/api/v1/exports/contact.{file_format}"
EXPORT_INTERACTIONS = "/api/v1/exports/interaction.{file_format}"
EXPORT_KPIS = "/api/v1/exports/kpi.{file_format}"

CALLS = [
    Call("current user", "GET", "/api/v1/auth/me"),
    Call(
        "login",
        "POST",
        "/api/v1/auth/login",
        body={"email": "planner@crm.test", "password": USER_PASSWORD},
    ),
    Call(
        "login with a recovery code",
        "POST",
        "/api/v1/auth/login",
        body={"email": "second-factor@crm.test", "password": USER_PASSWORD, "otp": RECOVERY_CODE},
    ),
    Call("2FA setup", "POST", "/api/v1/auth/2fa/setup"),
    # The admin has nothing pending and 2FA off: the account's locked read, then 409.
    Call("2FA enable", "POST", "/api/v1/auth/2fa/enable", body={"code": "123456"}, status=409),
    Call(
        "2FA disable",
        "POST",
        "/api/v1/auth/2fa/disable",
        body={"password": ADMIN_PASSWORD, "code": "123456"},
        status=409,
    ),
    Call("2FA reset", "DELETE", f"{USERS}/{{user_id:id}}/2fa", status=204),
    Call(
        "change password",
        "PUT",
        "/api/v1/auth/me/password",
        body={"current_password": ADMIN_PASSWORD, "new_password": "another-password-456"},
        status=204,
    ),
    Call("refresh", "POST", "/api/v1/auth/refresh", sends_refresh_token=True),
    Call("logout", "POST", "/api/v1/auth/logout", status=204),
    Call("logout everywhere", "POST", "/api/v1/auth/logout-all", status=204),
    Call(
        "update profile",
        "PUT",
        "/api/v1/auth/me",
        body={"email": "chief@crm.test", "current_password": ADMIN_PASSWORD},
    ),
    Call(
        "request password reset",
        "POST",
        "/api/v1/auth/password-reset/request",
        body={"email": "planner@crm.test"},
        status=202,
    ),
    Call(
        "confirm password reset",
        "POST",
        "/api/v1/auth/password-reset/confirm",
        body={"token": RESET_TOKEN, "new_password": "harbour-violet-lamp-1"},
        status=204,
    ),
    Call("investor detail", "GET", ONE_INVESTOR),
    *(page(f"investors by {sort}", INVESTORS, f"sort={sort}") for sort in SORTS),
    page("investors of a stage", INVESTORS, "pipeline_stage=prospect_chaud"),
    page("investors of a client type", INVESTORS, "client_type=cgpi"),
    page("inactive investors", INVESTORS, "is_active=false"),
    page(
        "investors by every filter",
        INVESTORS,
        "pipeline_stage=prospect_froid&client_type=cgpi&is_active=true&sort=-updated_at",
    ),
    # OFFSET walks the skipped rows in index order: proportional to skip, not a table scan.
    page("investors, skip-based page", INVESTORS, "skip=1&limit=1"),
    *(
        page(
            f"investors after a cursor, by {sort}", INVESTORS, f"sort={sort}", after_first_page=True
        )
        for sort in SORTS
    ),
    page(
        "investors of a client type after a cursor",
        INVESTORS,
        "client_type=cgpi&sort=-created_at",
        after_first_page=True,
    ),
    page("search, rare term", SEARCH, "q=Quintavalle"),
    page("search, typo", SEARCH, "q=Quintavale"),
    page("search, common term", SEARCH, "q=banque"),
    page("search, contact name", SEARCH, "q=lefevre"),
    page("search, misspelt contact name", SEARCH, "q=lefevbre"),
    page("search, two misspelt words", SEARCH, "q=banque rotchild"),
    page("search, two letters", SEARCH, "q=ro"),
    Call("search, past the last page", "GET", SEARCH, "q=banque&skip=50"),
    Call("investor stats", "GET", f"{INVESTORS}/stats"),
    Call("stage history", "GET", f"{ONE_INVESTOR}/stage-history"),
    Call("create investor", "POST", INVESTORS, body={"name": "Nouvel Investisseur"}, status=201),
    Call("patch investor", "PATCH", ONE_INVESTOR, body={"pipeline_stage": "en_negociation"}),
    Call("put investor", "PUT", ONE_INVESTOR, body={"email": "new@quintavalle.fr"}),
    Call("move to next stage", "PUT", f"{ONE_INVESTOR}/move-to-next-stage"),
    Call("delete investor", "DELETE", ONE_INVESTOR, status=204),
    page("investor contacts", f"{CONTACTS}/investor/{{investor_id:id}}"),
    Call(
        "create contact",
        "POST",
        f"{CONTACTS}/investor/{{investor_id:id}}",
        body={"name": "Nouveau Contact"},
        status=201,
    ),
    Call("read contact", "GET", ONE_CONTACT),
    Call("patch contact", "PATCH", ONE_CONTACT, body={"title": "CFO"}),
    Call("put contact", "PUT", ONE_CONTACT, body={"name": "Jeanne Durand"}),
    Call("delete contact", "DELETE", ONE_CONTACT, status=204),
    page("interactions", INTERACTIONS),
    page("interactions of a type", INTERACTIONS, "type=appel"),
    page("interactions of an investor", INTERACTIONS, "investor_id={investor}"),
    page("interactions since a date", INTERACTIONS, "date_from=2026-01-01"),
    page("interactions until a date", INTERACTIONS, "date_to=2026-01-31"),
    page("interactions in a date range", INTERACTIONS, "date_from=2026-01-01&date_to=2026-01-31"),
    page(
        "interactions of a type in a date range",
        INTERACTIONS,
        "type=appel&date_from=2026-01-01&date_to=2026-01-31",
    ),
    page(
        "interactions of an investor in a date range",
        INTERACTIONS,
        "investor_id={investor}&date_from=2026-01-01&date_to=2026-02-28",
    ),
    page("investor interactions", f"{INTERACTIONS}/investor/{{investor_id:id}}"),
    page(
        "investor interactions, second page",
        f"{INTERACTIONS}/investor/{{investor_id:id}}",
        "skip=1&limit=1",
    ),
    Call(
        "create interaction",
        "POST",
        f"{INTERACTIONS}/investor/{{investor_id:id}}",
        body={"type": "appel", "date": "2026-03-02", "contact_id": None},
        status=201,
    ),
    Call("read interaction", "GET", ONE_INTERACTION),
    Call("put interaction", "PUT", ONE_INTERACTION, body={"subject": "Suivi"}),
    Call("delete interaction", "DELETE", ONE_INTERACTION, status=204),
    page("KPIs", KPIS),
    page("KPIs of an investor", KPIS, "investor_id={investor}"),
    page("KPIs of a year", KPIS, "year=2026"),
    page("KPIs of a month", KPIS, "year=2026&month=1"),
    page("KPIs of a calendar month, every year", KPIS, "month=1"),
    page("investor KPIs", f"{KPIS}/investor/{{investor_id:id}}"),
    page("investor KPIs of a year", f"{KPIS}/investor/{{investor_id:id}}", "year=2026"),
    Call(
        "KPI upsert",
        "POST",
        f"{KPIS}/investor/{{investor_id:id}}",
        body={"year": 2026, "month": 6, "rdv_count": 3, "revenue": 1500.5},
        status=201,
    ),
    Call("read KPI", "GET", ONE_KPI),
    Call("put KPI", "PUT", ONE_KPI, body={"month": 3}),
    Call("delete KPI", "DELETE", ONE_KPI, status=204),
    Call("month summary", "GET", f"{KPIS}/summary/month/{{year}}/{{month}}"),
    Call("annual summary", "GET", f"{KPIS}/summary/annual/{{investor_id:id}}/{{year}}"),
    # The firm's staff, a few dozen rows, listed whole on an admin screen.
    page("users", USERS, whole_tables=frozenset({"users"})),
    Call(
        "create user",
        "POST",
        USERS,
        body={"email": "new@crm.test", "full_name": "New User", "password": "quiet-orbit-lamp-62"},
        status=201,
    ),
    Call("read user", "GET", f"{USERS}/{{user_id:id}}"),
    Call("put user", "PUT", f"{USERS}/{{user_id:id}}", body={"full_name": "Renamed"}),
    Call("delete user", "DELETE", f"{USERS}/{{user_id:id}}", status=204),
    # Kept JOB_RETENTION_DAYS at most: the unfiltered admin list counts them all.
    page("jobs", JOBS, whole_tables=frozenset({"jobs"})),
    page("failed jobs", JOBS, "status=failed"),
    page("jobs of a type", JOBS, "type=jobs.purge"),
    Call("read job", "GET", f"{JOBS}/{{job_id:id}}"),
    Call("retry job", "POST", f"{JOBS}/{{job_id:id}}/retry", status=202, failed_job=True),
    Call("cancel job", "POST", f"{JOBS}/{{job_id:id}}/cancel"),
    # Kept TRASH_RETENTION_DAYS at most, as the jobs: the unfiltered list counts them all.
    page("trash", TRASH, whole_tables=frozenset({"trash_entries"})),
    page("trash of an entity", TRASH, "entity=investor", whole_tables=frozenset({"trash_entries"})),
    Call("restore from the trash", "POST", f"{ONE_TRASHED}/restore"),
    Call("purge from the trash", "DELETE", ONE_TRASHED, status=204),
    Call("GDPR export", "GET", "/api/v1/gdpr/export", "email=contact@quintavalle.fr"),
    # Job payloads and import error values are searched for the person's values: no index
    # serves a search inside a text (jobs go after JOB_RETENTION_DAYS). Stored uploads are
    # few: each is deleted when its import's job ends.
    Call(
        "GDPR anonymisation",
        "POST",
        "/api/v1/gdpr/anonymize",
        names_contact=True,
        # Notification texts likewise, bounded by NOTIFICATION_RETENTION_DAYS.
        whole_tables=frozenset({"jobs", "notifications", "import_errors", "imports"}),
    ),
    page("notifications", NOTIFICATIONS),
    page("unread notifications", NOTIFICATIONS, "unread=true"),
    Call("unread notification count", "GET", f"{NOTIFICATIONS}/unread-count"),
    Call("read a notification", "POST", f"{NOTIFICATIONS}/{{notification_id:id}}/read"),
    Call("read every notification", "POST", f"{NOTIFICATIONS}/read-all", status=204),
    Call("notification stream ticket", "POST", f"{NOTIFICATIONS}/stream-ticket", status=201),
    Call("notification stream", "GET", f"{NOTIFICATIONS}/stream"),
    Call("preferences", "GET", "/api/v1/auth/me/preferences"),
    Call("update preferences", "PUT", "/api/v1/auth/me/preferences", body={"daily_digest": False}),
    # The unfiltered total counts the newest entries up to the cap (10,001 rows at most): on a
    # table this small the planner may prefer a bitmap over the whole primary key to that walk.
    page("audit trail", AUDIT, whole_tables=AUDIT_LOG),
    page(
        "audit trail after a cursor",
        AUDIT,
        after_first_page=True,
        whole_tables=AUDIT_LOG,
    ),
    page("audit of a record", AUDIT, "entity=investor&entity_id={investor}"),
    page("audit of an entity", AUDIT, "entity=contact"),
    page("audit by an author", AUDIT, "actor_id=1"),
    page("audit of an action", AUDIT, "action=create"),
    page(
        "audit of a period",
        AUDIT,
        "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    ),
    # Lists of tasks name an assignee or an investor: the unfiltered total counts every task.
    page("my tasks due today", TASKS, "assignee_id=me&due=today"),
    page("my overdue tasks", TASKS, "assignee_id=me&due=overdue"),
    page("my open tasks", TASKS, "assignee_id=me&status=a_faire&status=en_cours"),
    page("my tasks, latest first", TASKS, "assignee_id=me&sort=-due_date"),
    page("tasks of an investor", TASKS, "investor_id={investor}"),
    Call("task summary", "GET", f"{TASKS}/summary"),
    Call("read task", "GET", ONE_TASK),
    Call(
        "create task",
        "POST",
        TASKS,
        body={"title": "Envoyer la plaquette", "due_date": "2026-12-01", "investor_id": None},
        status=201,
    ),
    Call("put task", "PUT", ONE_TASK, body={"title": "Rappeler Quintavalle demain"}),
    Call("patch task", "PATCH", ONE_TASK, body={"status": "en_cours"}),
    Call("complete task", "POST", f"{ONE_TASK}/complete"),
    Call("snooze task", "POST", f"{ONE_TASK}/snooze", body={"days": 2}),
    Call("delete task", "DELETE", ONE_TASK, status=204),
    page("investor tasks", f"{ONE_INVESTOR}/tasks"),
    # Six rows, one per rule the migration created.
    Call("follow-up rules", "GET", RULES, whole_tables=frozenset({"follow_up_rules"})),
    Call("change a follow-up rule", "PUT", f"{RULES}/{{key}}", body={"delay_days": 2}),
    # An export is every matching row: unfiltered, it reads its table whole by design (its
    # investors, users and contacts joined by primary key).
    Call("investor export", "GET", EXPORT_INVESTORS, whole_tables=frozenset({"investors"})),
    Call("investor export of an owner", "GET", EXPORT_INVESTORS, "owner_id=me"),
    Call("investor export of a stage", "GET", EXPORT_INVESTORS, "pipeline_stage=client"),
    Call("investor export of a search", "GET", EXPORT_INVESTORS, "q=banque"),
    Call("contact export", "GET", EXPORT_CONTACTS, whole_tables=frozenset({"contacts"})),
    Call("contact export of an investor", "GET", EXPORT_CONTACTS, "investor_id={investor}"),
    Call(
        "interaction export", "GET", EXPORT_INTERACTIONS, whole_tables=frozenset({"interactions"})
    ),
    Call("interaction export of an investor", "GET", EXPORT_INTERACTIONS, "investor_id={investor}"),
    Call("interaction export of a type", "GET", EXPORT_INTERACTIONS, "type=reunion"),
    Call("KPI export", "GET", EXPORT_KPIS, whole_tables=frozenset({"kpis"})),
    Call("KPI export of a year", "GET", EXPORT_KPIS, "year=2026"),
    Call("KPI export of an investor", "GET", EXPORT_KPIS, "investor_id={investor}"),
    Call("import template", "GET", "/api/v1/imports/templates/{entity}.xlsx"),
    # Imports are kept with their jobs: the unfiltered list counts them all.
    page("imports", IMPORTS, whole_tables=frozenset({"imports"})),
    Call("read import", "GET", f"{IMPORTS}/{{import_id:id}}"),
    Call("import errors as CSV", "GET", f"{IMPORTS}/{{import_id:id}}/errors.csv"),
    Call(
        "create import",
        "POST",
        IMPORTS,
        upload=b"Nom;E-mail\nAcme;contact@acme.fr\n",
        status=202,
    ),
    page("investor history", f"{ONE_INVESTOR}/history"),
    page("investor history after a cursor", f"{ONE_INVESTOR}/history", after_first_page=True),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda call: call.name)
async def test_no_request_path_reads_a_whole_table(
    client: AsyncClient, admin_headers: dict[str, str], sample: Sample, call: Call
) -> None:
    url = call.url(sample)
    if call.after_first_page:
        first = await client.get(call.url(sample, "limit=1"), headers=admin_headers)
        assert first.status_code == 200, first.text
        url = call.url(sample, "limit=1", f"cursor={first.json()['next_cursor']}")
    body = {"refresh_token": sample.refresh_token} if call.sends_refresh_token else call.body
    if call.names_contact:
        body = {"entity": "contact", "id": sample.contact}
    files = None if call.upload is None else {"file": ("a.csv", call.upload, "text/csv")}
    form = None if call.upload is None else {"entity": "investor"}
    with captured_statements() as statements:
        response = await client.request(
            call.method,
            url,
            json=None if files else body,
            files=files,
            data=form,
            headers=admin_headers,
        )
    assert response.status_code == call.status, response.text
    if call.rows:
        assert response.json()["items"], response.text
    planned = await plans(statements)
    assert planned, "the request sent no SQL"
    if call.route == SEARCH:
        # The search's statements run inside its functions: their plans must be seen too.
        assert any(sql.startswith(IN_A_FUNCTION) for sql, _ in planned)
    async with db.engine.connect() as conn:
        database = await Database.read(conn)
    found = [
        f"{reason}\n{sql}\n{render(plan)}"
        for sql, plan in planned
        for table, reason in whole_table_reads(plan, database)
        if table not in call.whole_tables
    ]
    assert not found, "\n\n".join(found)


def test_every_api_operation_has_its_plans_checked() -> None:
    declared = {
        (method, route.path)
        for route in iter_route_contexts(fastapi_app.routes)
        if isinstance(route.original_route, APIRoute) and (route.path or "").startswith("/api/")
        for method in route.methods or ()
    }
    assert {(call.method, call.route) for call in CALLS} == declared


async def test_every_foreign_key_has_an_index_leading_with_its_columns() -> None:
    # Deleting a parent finds the rows to cascade to (or to set null) by the referencing columns.
    async with db.engine.connect() as conn:
        unindexed = await conn.execute(
            text(
                "SELECT c.conrelid::regclass::text, c.conname FROM pg_constraint c "
                "WHERE c.contype = 'f' AND NOT EXISTS ("
                " SELECT FROM pg_index i WHERE i.indrelid = c.conrelid"
                " AND (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(c.conkey)]"
                " @> c.conkey)"
            )
        )
        assert unindexed.all() == []


@pytest.mark.parametrize(
    ("path", "counter_table"),
    [
        (f"{INVESTORS}/stats", "investor_counts"),
        ("/api/v1/kpis/summary/month/2026/1", "kpi_month_totals"),
    ],
)
async def test_statistics_never_read_the_base_tables(
    client: AsyncClient, admin_headers: dict[str, str], path: str, counter_table: str
) -> None:
    investor = await make_investor(client, admin_headers, client_type="cgpi")
    body = {"year": 2026, "month": 1, "rdv_count": 1, "revenue": 10, "commission_rate": 1}
    kpi = await client.post(
        f"/api/v1/kpis/investor/{investor['id']}", json=body, headers=admin_headers
    )
    assert kpi.status_code == 201, kpi.text
    with captured_statements() as statements:
        response = await client.get(path, headers=admin_headers)
    assert response.status_code == 200, response.text
    tables = {table for _, plan in await plans(statements) for _, table in relations(plan)}
    assert counter_table in tables
    assert not tables & {"investors", "kpis"}
