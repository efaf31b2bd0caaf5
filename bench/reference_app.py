"""The bare reference: a plain ASGI callable, an asyncpg pool and the API's SQL, no framework.

Served by the same uvicorn settings as the API, it is the ceiling for "serve this row from
PostgreSQL in Python": same statements as the API's services, same JSON body, nothing else
(no auth, no validation, no ORM). BENCH_DSN names the database.

    GET /investors/{id}                  = GET /api/v1/investors/{id}  (detail, contacts, counts)
    GET /investors?skip=&limit=&cursor=  = GET /api/v1/investors       (default sort: name, id)

The list's `next_cursor` is encoded as schemas.investor.InvestorCursor does, and a `cursor` is
decoded without the API's checks: the bench only sends cursors the API handed out.
"""

import base64
import json
import os
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import asyncpg

INVESTOR_COLUMNS = (
    "i.id, i.name, i.email, i.phone, i.website, i.company, i.industry, i.notes, "
    "i.pipeline_stage, i.client_type, i.is_active, i.created_at, i.updated_at"
)
DETAIL_SQL = f"""
SELECT {INVESTOR_COLUMNS},
       (SELECT count(*) FROM interactions WHERE interactions.investor_id = i.id)
           AS interaction_count,
       (SELECT max(date) FROM interactions WHERE interactions.investor_id = i.id)
           AS last_interaction_date,
       (SELECT count(*) FROM kpis WHERE kpis.investor_id = i.id) AS kpi_count
FROM investors AS i WHERE i.id = $1
"""
CONTACTS_SQL = """
SELECT id, investor_id, name, email, phone, title, notes, created_at, updated_at
FROM contacts WHERE investor_id = $1 ORDER BY name, id
"""
# The API's list total: summed from the trigger-kept counters, not a count(*) of investors.
COUNT_SQL = "SELECT coalesce(sum(n), 0) FROM investor_counts"
PAGE_SQL = f"SELECT {INVESTOR_COLUMNS} FROM investors AS i ORDER BY i.name, i.id LIMIT $1 OFFSET $2"
# The API's keyset page: a row comparison the (name, id) index seeks to.
PAGE_AFTER_SQL = f"""
SELECT {INVESTOR_COLUMNS} FROM investors AS i
WHERE (i.name, i.id) > ($3::varchar, $4::integer)
ORDER BY i.name, i.id LIMIT $1 OFFSET $2
"""
DEFAULT_SORT = "name"

JSON_HEADERS = [(b"content-type", b"application/json")]
Scope = dict[str, Any]


def _default(value: object) -> object:
    if isinstance(value, datetime):
        # Pydantic's rendering of an aware UTC datetime.
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def _encode_cursor(key: str, investor_id: int) -> str:
    # InvestorCursor.encode for the default sort: compact ASCII JSON, base64url without padding.
    raw = json.dumps({"sort": DEFAULT_SORT, "key": key, "id": investor_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[str, int]:
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return data["key"], data["id"]


def _dumps(body: object) -> bytes:
    return json.dumps(body, default=_default, separators=(",", ":"), ensure_ascii=False).encode()


class ReferenceApp:
    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        status, body = await self._route(scope)
        await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": _dumps(body)})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The API's pool: 10 connections plus 10 overflow.
                self.pool = await asyncpg.create_pool(
                    os.environ["BENCH_DSN"],
                    min_size=10,
                    max_size=20,
                    server_settings={"application_name": "crm-bench-reference"},
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope) -> tuple[int, object]:
        assert self.pool is not None
        parts = scope["path"].strip("/").split("/")
        if parts[0] != "investors" or scope["method"] != "GET":
            return 404, {"detail": "Not found", "code": "not_found"}
        async with self.pool.acquire() as conn:
            if len(parts) == 2 and parts[1].isdigit():
                return await self._detail(conn, int(parts[1]))
            if len(parts) == 1:
                query = parse_qs(scope["query_string"].decode())
                skip = int(query.get("skip", ["0"])[0])
                limit = int(query.get("limit", ["50"])[0])
                cursor = query.get("cursor", [None])[0]
                after = _decode_cursor(cursor) if cursor else None
                return await self._page(conn, skip, limit, after)
        return 404, {"detail": "Not found", "code": "not_found"}

    async def _detail(self, conn: asyncpg.Connection, investor_id: int) -> tuple[int, object]:
        row = await conn.fetchrow(DETAIL_SQL, investor_id)
        if row is None:
            return 404, {"detail": "Investor not found", "code": "not_found"}
        contacts = await conn.fetch(CONTACTS_SQL, investor_id)
        body = dict(row)
        body["contacts"] = [dict(contact) for contact in contacts]
        return 200, body

    async def _page(
        self, conn: asyncpg.Connection, skip: int, limit: int, after: tuple[str, int] | None
    ) -> tuple[int, object]:
        total = await conn.fetchval(COUNT_SQL)
        body: dict[str, object] = {"items": [], "total": total, "skip": skip, "limit": limit}
        if total == 0 or skip >= total:
            return 200, body
        # One row more than the page tells whether there is a next one, as in the API.
        if after is None:
            rows = await conn.fetch(PAGE_SQL, limit + 1, skip)
        else:
            rows = await conn.fetch(PAGE_AFTER_SQL, limit + 1, skip, *after)
        body["items"] = [dict(row) for row in rows[:limit]]
        # Like the API's InvestorPage: no next_cursor key at all on the last page.
        if len(rows) > limit:
            last = rows[limit - 1]
            body["next_cursor"] = _encode_cursor(last["name"], last["id"])
        return 200, body


app = ReferenceApp()
