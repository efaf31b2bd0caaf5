"""The audit trail's cost (issue 16), measured on the bench cluster in a database of its own.

    .venv/bin/python -m bench.audit [small|large]            (also run by `make bench [SIZE=]`)
    .venv/bin/python -m bench.audit --writes 200 --entries 10000   (a quick check)

- write throughput: a mix of API writes (create an investor, change it, move it along the
  pipeline, add a contact, record a month of KPIs) sent through the application in process,
  in blocks that switch AUDIT_ENABLED on and off (on, off, off, on, on, off, after a warm-up
  block, so drift hits both alike); target: with the trail, at least 0.8 x the throughput
  without it;
- `GET /investors/{id}/history` p50 / p95 with `--entries` entries in the trail (INSERT ...
  SELECT generate_series in slices, spread evenly over the few hundred investors the write mix
  created, so the measured investor has tens of thousands of entries and its capped count reads
  10,001 of them): by default 50,000,000 when the large size is benchmarked (the issue's
  target), 5,000,000 for `small` alone. The trail is then vacuumed, as autovacuum does to an
  insert-only table in production (an insert threshold triggers it): without a visibility map,
  the count's index-only scan would fetch every heap page it meets, which no steady-state
  server does.
"""

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import asyncpg
from sqlalchemy import text

from bench.cluster import start_cluster
from bench.run import nearest_rank, write_latest
from core.config import PROJECT_ROOT, settings
from core.migrations import upgrade_to_head

DATABASE = "bench_audit"
RESULTS = PROJECT_ROOT / "bench" / "results" / "audit.md"
BLOCKS = 6
SEED_SLICE = 2_000_000
# Audit entries behind the history, by the sizes `make bench` was given.
ENTRIES = {"small": 5_000_000, "large": 50_000_000}
HISTORY_REQUESTS = 200
API = "/api/v1"


async def _write_mix(client: Any, headers: dict[str, str], n: int) -> int:
    """One round of five writes; returns how many requests it sent."""
    created = await client.post(
        f"{API}/investors", json={"name": f"Bench audit {n}"}, headers=headers
    )
    investor_id = created.json()["id"]
    await client.patch(
        f"{API}/investors/{investor_id}", json={"notes": f"note {n}"}, headers=headers
    )
    await client.put(f"{API}/investors/{investor_id}/move-to-next-stage", headers=headers)
    await client.post(
        f"{API}/contacts/investor/{investor_id}", json={"name": "Jeanne"}, headers=headers
    )
    await client.post(
        f"{API}/kpis/investor/{investor_id}",
        json={"year": 2026, "month": 1 + n % 12, "rdv_count": n % 5},
        headers=headers,
    )
    return 5


async def write_throughput(client: Any, headers: dict[str, str], writes: int) -> dict[bool, float]:
    """Writes per second with the trail on and off, over blocks in the order on, off, off, on,
    on, off (a drift of the machine or of the tables' sizes weighs on both alike), after one
    uncounted warm-up block (the first requests compile statements and fill caches)."""
    per_block = max(1, writes // 5 // BLOCKS)
    seconds = {True: 0.0, False: 0.0}
    sent = {True: 0, False: 0}
    n = 0
    for block in range(-1, BLOCKS):
        enabled = block < 0 or block % 4 in (0, 3)
        settings.audit_enabled = enabled
        started = time.perf_counter()
        count = 0
        for _ in range(per_block):
            count += await _write_mix(client, headers, n)
            n += 1
        if block >= 0:
            seconds[enabled] += time.perf_counter() - started
            sent[enabled] += count
    settings.audit_enabled = True
    return {enabled: sent[enabled] / seconds[enabled] for enabled in (True, False)}


async def _vacuum_trail(url: str) -> None:
    """VACUUM (ANALYZE) the trail, on a connection of its own: VACUUM runs outside any
    transaction, and for minutes, past the API's statement timeout."""
    connection = await asyncpg.connect(
        url.replace("+asyncpg", ""), server_settings={"statement_timeout": "0"}
    )
    try:
        await connection.execute("VACUUM (ANALYZE) audit_log")
    finally:
        await connection.close()


async def history_latency(
    client: Any, headers: dict[str, str], session_factory: Any, url: str, entries: int
) -> list[float]:
    """ms per GET /investors/{id}/history with `entries` entries in the trail."""
    async with session_factory() as session, session.begin():
        investors = int(await session.scalar(text("SELECT max(id) FROM investors")))
    # In slices of their own transaction, free of the API's statement timeout: 50,000,000
    # entries take minutes.
    for first in range(1, entries + 1, SEED_SLICE):
        async with session_factory() as session, session.begin():
            await session.execute(text("SET LOCAL statement_timeout = 0"))
            await session.execute(
                text(
                    "INSERT INTO audit_log (actor_kind, action, entity, entity_id, investor_id, "
                    "changes) SELECT 'system', 'update', 'contact', n, 1 + n % :investors, "
                    "jsonb_build_object('notes', jsonb_build_array('a', 'b')) "
                    "FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS n"
                ),
                {
                    "investors": investors,
                    "first": first,
                    "last": min(first + SEED_SLICE - 1, entries),
                },
            )
    await _vacuum_trail(url)
    samples = []
    target = f"{API}/investors/1/history"
    for _ in range(HISTORY_REQUESTS):
        started = time.perf_counter()
        response = await client.get(target, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return samples


async def measure(url: str, writes: int, entries: int) -> str:
    from asgi_lifespan import LifespanManager
    from httpx import ASGITransport, AsyncClient

    settings.database_url = url
    from core.db import db
    from core.security import create_access_token
    from main import app

    async with (
        LifespanManager(app),
        AsyncClient(transport=ASGITransport(app=app), base_url="http://bench") as client,
    ):
        async with db.sessionmaker() as session, session.begin():
            # A fresh start on every run (the trail's guard lifted for this transaction).
            await session.execute(text("SELECT set_config('crm.audit_unlock', 'on', true)"))
            await session.execute(text("TRUNCATE investors, audit_log RESTART IDENTITY CASCADE"))
            admin_id, stamp = (
                await session.execute(
                    text("SELECT id, security_stamp FROM users ORDER BY id LIMIT 1")
                )
            ).one()
        token, _ = create_access_token(admin_id, stamp, uuid.uuid4(), settings)
        headers = {"Authorization": f"Bearer {token}"}
        rates = await write_throughput(client, headers, writes)
        history = await history_latency(client, headers, db.sessionmaker, url, entries)
    ratio = rates[True] / rates[False]
    return "\n".join(
        [
            "## Audit trail",
            "",
            f"Write mix through the application in process ({writes:,} writes, "
            f"{BLOCKS} blocks on/off after a warm-up); history with {entries:,} entries in the "
            "trail.",
            "",
            "| Measure | Value | Target |",
            "|---|---:|---:|",
            f"| writes/s, AUDIT_ENABLED=false | {rates[False]:,.0f} | |",
            f"| writes/s, with the trail | {rates[True]:,.0f} | |",
            f"| ratio | {ratio:.2f} x | >= 0.8 x |",
            f"| GET /investors/{{id}}/history p50 | {nearest_rank(history, 0.5):.1f} ms | |",
            f"| GET /investors/{{id}}/history p95 | {nearest_rank(history, 0.95):.1f} ms "
            "| < 20 ms |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", help=f"{' and/or '.join(ENTRIES)} (default: all)")
    parser.add_argument("--writes", type=int, default=3_000, help="API writes to time")
    parser.add_argument("--entries", type=int, help="audit entries behind the history")
    args = parser.parse_args()
    if unknown := sorted(set(args.sizes) - set(ENTRIES)):
        parser.error(f"unknown size {', '.join(unknown)} (choose from {', '.join(ENTRIES)})")
    entries = args.entries or max(ENTRIES[size] for size in args.sizes or ENTRIES)
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-not-used-anywhere-else-0123456789")
    os.environ.setdefault("RUN_WORKER", "false")
    settings.run_worker = False
    cluster = start_cluster()
    try:
        cluster.ensure_database(DATABASE)
        url = cluster.url(DATABASE)
        upgrade_to_head(url)
        report = asyncio.run(measure(url, args.writes, entries))
    finally:
        cluster.stop()
    RESULTS.write_text(report)
    print(report)
    write_latest()


if __name__ == "__main__":
    main()
