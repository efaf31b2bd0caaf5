"""EXPLAIN (ANALYZE, BUFFERS) of the SQL each benchmarked request path really sends.

The service methods run in-process against the bench database while a SQLAlchemy event
listener records every statement with its parameters; each one is then replayed under
EXPLAIN on a raw asyncpg connection, in a transaction that is rolled back (writes included).
A scan on a big table is flagged when it is a Seq Scan, or when it walks at least half of the
table through an index (a deep OFFSET does that). The statements run inside a function (the
search's, migration 0008), which EXPLAIN shows as one Function Scan, are reported by
auto_explain with the plans their function made, and checked alike.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from bench.seed import BIG_TABLES
from core.config import settings
from core.db import create_engine, create_sessionmaker
from models.interaction import InteractionType
from schemas.interaction import InteractionCreate
from schemas.investor import InvestorCursor, InvestorFilters
from schemas.kpi import KpiUpsert
from schemas.task import TaskFilters
from services.interactions import InteractionService
from services.investor_search import search_investors
from services.investors import InvestorService
from services.kpis import KpiService
from services.tasks import TaskService
from services.users import UserService

EXPLAINABLE = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE")
FULL_SCAN_SHARE = 0.5
# Every statement a function runs, sent to this client as a log message with its plan.
AUTO_EXPLAIN = {
    "log_min_duration": "0",
    "log_nested_statements": "on",
    "log_analyze": "on",
    "log_buffers": "on",
}

RequestPath = Callable[[AsyncSession], Awaitable[object]]
T = TypeVar("T")


@dataclass
class PlanCheck:
    path: str
    statements: int = 0
    slowest_ms: float = 0.0
    buffers: int = 0
    seq_scans: list[str] = field(default_factory=list)
    plans: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


def request_paths(investors: int, deep_cursor: InvestorCursor | None) -> dict[str, RequestPath]:
    """The service calls the benchmarked routes make, with the bench's fixed arguments."""
    middle = investors // 2 or 1
    kpi_investor = max(investors // 3 // 2 * 3, 3)
    unfiltered = InvestorFilters()

    async def list_deep_cursor(s: AsyncSession) -> object:
        if deep_cursor is None:
            raise LookupError("the page before the last gave no next_cursor to resume at")
        return await InvestorService(s).list_investors(
            unfiltered, sort="name", skip=0, limit=50, caller_id=1, after=deep_cursor
        )

    def search(term: str) -> RequestPath:
        return lambda s: search_investors(s, term, skip=0, limit=50)

    return {
        "auth (every request): user by id": lambda s: UserService(s).get_caller(1),
        "GET one investor": lambda s: InvestorService(s).get_detail(middle),
        "list page 1": lambda s: InvestorService(s).list_investors(
            unfiltered, sort="name", skip=0, limit=50, caller_id=1
        ),
        "list deep page": lambda s: InvestorService(s).list_investors(
            unfiltered, sort="name", skip=max(investors - 50, 0), limit=50, caller_id=1
        ),
        "list deep page (cursor)": list_deep_cursor,
        "search rare term": search("Quintavalle"),
        "search typo (rare)": search("Quintavale"),
        "search common term": search("banque"),
        "search typo (common)": search("Rotchild"),
        "stats": lambda s: InvestorService(s).stats(),
        "month summary": lambda s: KpiService(s).monthly_summary(2025, 6),
        "annual summary": lambda s: KpiService(s).annual_summary(kpi_investor, 2025),
        "POST interaction": lambda s: InteractionService(s).create_for_investor(
            middle,
            InteractionCreate(
                type=InteractionType.appel, date=date(2026, 1, 15), subject="Appel bench"
            ),
            created_by=1,
        ),
        "KPI upsert": lambda s: KpiService(s).upsert_month(
            middle, KpiUpsert(year=2026, month=6, rdv_count=3, revenue=Decimal("1500.50"))
        ),
        "my tasks due today": lambda s: TaskService(s).list_tasks(
            TaskFilters(assignee_id="me", due="today"),
            sort="due_date",
            skip=0,
            limit=50,
            caller_id=1,
        ),
    }


def _scan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _scan_nodes(child)
    return nodes


def _flag_scans(plan: dict[str, Any], sizes: dict[str, float]) -> list[str]:
    flagged = []
    for node in _scan_nodes(plan):
        table = node.get("Relation Name")
        if table not in BIG_TABLES:
            continue
        touched = (
            node.get("Actual Rows", 0)
            + node.get("Rows Removed by Filter", 0)
            + node.get("Rows Removed by Index Recheck", 0)
        ) * max(node.get("Actual Loops", 1), 1)
        kind = node["Node Type"]
        if kind == "Seq Scan" or (
            sizes.get(table, 0) > 1000 and touched >= FULL_SCAN_SHARE * sizes[table]
        ):
            flagged.append(f"{kind} on {table} ({touched:,.0f} rows)")
    return flagged


async def _capture(
    url: str, path: Callable[[AsyncSession], Awaitable[T]]
) -> tuple[T, list[tuple[str, tuple[Any, ...]]]]:
    """What `path` returns, and the statements it sent with their parameters."""
    engine = create_engine(settings, url)
    captured: list[tuple[str, tuple[Any, ...]]] = []

    def record(_conn: object, _cursor: object, statement: str, params: Any, *_: object) -> None:
        captured.append((statement, tuple(params or ())))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with create_sessionmaker(engine)() as session:
            result = await path(session)
            await session.rollback()
    finally:
        await engine.dispose()
    return result, captured


async def _deep_cursor(url: str, investors: int) -> InvestorCursor | None:
    """Where the last page of the default sort resumes: the next_cursor of the page before it,
    decoded as the route decodes it (the cursor the load benchmark sends)."""
    (_, _, token), _ = await _capture(
        url,
        lambda s: InvestorService(s).list_investors(
            InvestorFilters(), sort="name", skip=max(investors - 100, 0), limit=50, caller_id=1
        ),
    )
    return InvestorCursor.decode(token) if token else None


async def explain_request_paths(url: str, investors: int) -> list[PlanCheck]:
    """One PlanCheck per request path, with its plans and any whole-table scan."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    checks = []
    try:
        sizes = {
            row["relname"]: float(row["reltuples"])
            for row in await conn.fetch(
                "SELECT relname, reltuples FROM pg_class WHERE relname = ANY($1::text[])",
                list(BIG_TABLES),
            )
        }
        try:
            deep_cursor = await _deep_cursor(url, investors)
        except Exception:  # the cursor path then says it was not checked
            deep_cursor = None
        for name, path in request_paths(investors, deep_cursor).items():
            check = PlanCheck(name)
            checks.append(check)
            try:
                _, statements = await _capture(url, path)
            except Exception as exc:  # a route being rewritten must not stop the bench
                check.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            tx = conn.transaction()
            await tx.start()
            try:
                await _explain_nested_statements(conn)
                for sql, params in statements:
                    if not sql.lstrip().upper().startswith(EXPLAINABLE):
                        await conn.execute(sql)  # SAVEPOINT and friends
                        continue
                    await _explain(conn, check, sizes, sql, params)
            except asyncpg.PostgresError as exc:
                check.error = f"{type(exc).__name__}: {exc}"
            finally:
                await tx.rollback()
    finally:
        await conn.close()
    return checks


async def _explain_nested_statements(conn: asyncpg.Connection) -> None:
    """Have auto_explain report, until the transaction ends, the statements functions run."""
    await conn.execute("LOAD 'auto_explain'")
    for name, value in AUTO_EXPLAIN.items():
        await conn.execute(f"SET LOCAL auto_explain.{name} = {value}")
    await conn.execute("SET LOCAL client_min_messages = log")


async def _explain(
    conn: asyncpg.Connection,
    check: PlanCheck,
    sizes: dict[str, float],
    sql: str,
    params: tuple[Any, ...],
) -> None:
    """Adds the plans of `sql`, and of the statements the functions it calls run, to `check`."""
    await conn.execute("SET LOCAL auto_explain.log_min_duration = -1")
    result = await _timed_plan(conn, sql, params)
    nested: list[dict[str, Any]] = []
    nested_text: list[tuple[str, str]] = []
    if any(node["Node Type"] == "Function Scan" for node in _scan_nodes(result["Plan"])):
        minimum = AUTO_EXPLAIN["log_min_duration"]
        await conn.execute(f"SET LOCAL auto_explain.log_min_duration = {minimum}")
        nested = [json.loads(plan)["Plan"] for _, plan in await _logged(conn, "json", sql, params)]
        nested_text = await _logged(conn, "text", sql, params)
        await conn.execute("SET LOCAL auto_explain.log_min_duration = -1")
        # Timed again once the functions are compiled, as on the app's long-lived connections,
        # and without auto_explain, whose timing of every nested node costs time.
        result = await _timed_plan(conn, sql, params)
    check.statements += 1
    check.slowest_ms = max(check.slowest_ms, result["Execution Time"])
    top = result["Plan"]
    check.buffers += top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    for plan in (top, *nested):
        check.seq_scans += _flag_scans(plan, sizes)
    text_rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
    check.plans.append((sql, "\n".join(row[0] for row in text_rows)))
    check.plans += [(f"-- run by a function\n{query}", plan) for query, plan in nested_text]


async def _timed_plan(conn: asyncpg.Connection, sql: str, params: tuple[Any, ...]) -> Any:
    raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *params)
    return json.loads(raw)[0]


async def _logged(
    conn: asyncpg.Connection, log_format: str, sql: str, params: tuple[Any, ...]
) -> list[tuple[str, str]]:
    """(statement, plan) of each statement the functions `sql` calls run, as auto_explain
    reports them in `log_format`."""
    logged: list[str] = []

    def log(_conn: object, message: Any) -> None:
        logged.append(message.message)

    conn.add_log_listener(log)
    try:
        await conn.execute(f"SET LOCAL auto_explain.log_format = {log_format}")
        await conn.fetch(f"EXPLAIN (ANALYZE) {sql}", *params)
        await asyncio.sleep(0)  # log listeners are called soon, not at once
    finally:
        conn.remove_log_listener(log)
    return _nested(logged)


def _nested(messages: list[str]) -> list[tuple[str, str]]:
    """(statement, plan) of each statement run inside a function, from auto_explain's log
    messages (JSON or text); the explained statement itself (reported too) is left out."""
    found = []
    for message in messages:
        _, separator, report = message.partition("plan:\n")
        if not separator:
            continue
        if report.lstrip().startswith("{"):
            query = json.loads(report)["Query Text"]
        else:
            # "Query Text: ..." over one or more lines, maybe "Query Parameters: ...", the plan.
            lines = report.splitlines()
            start = next(n for n, line in enumerate(lines) if "(cost=" in line)
            header = "\n".join(lines[:start]).removeprefix("Query Text: ")
            query = header.partition("\nQuery Parameters:")[0]
            report = "\n".join(lines[start:])
        if not query.lstrip().upper().startswith("EXPLAIN"):
            found.append((query.strip(), report))
    return found
