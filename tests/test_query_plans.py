"""/investors/stats and the month summary read only the counter tables, never investors or kpis.

The SQL each request runs is captured on the engine and EXPLAINed with its own parameters; the
plan must not touch the base tables at all (on tables this small PostgreSQL would pick a
sequential scan anyway, so "no Seq Scan on them" means "not read").
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import event

from core.db import db
from tests.investor_factories import INVESTORS, make_investor

Statement = tuple[str, Any]


@contextmanager
def captured_statements() -> Iterator[list[Statement]]:
    statements: list[Statement] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        statements.append((sql, params))

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", capture)


def relations(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(node type, relation) of every plan node reading a relation."""
    if "Relation Name" in plan:
        yield plan["Node Type"], plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from relations(child)


async def planned_relations(statements: list[Statement]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    async with db.engine.connect() as conn:
        for sql, params in statements:
            if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            result = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", params)
            (plan,) = result.scalar_one()
            found |= set(relations(plan["Plan"]))
    return found


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
    read = await planned_relations(statements)
    tables = {table for _, table in read}
    assert counter_table in tables
    assert not tables & {"investors", "kpis"}
