"""Rows the interaction and KPI tests arrange and check directly in SQL, apart from the API."""

from typing import Any

from sqlalchemy import text

from core.db import db


async def fetch(sql: str, **params: Any) -> list[Any]:
    """The rows of one statement, run in its own committed transaction."""
    async with db.sessionmaker() as session, session.begin():
        return list((await session.execute(text(sql), params)).all())


async def execute(sql: str, **params: Any) -> None:
    """Run one statement that returns no rows, in its own committed transaction."""
    async with db.sessionmaker() as session, session.begin():
        await session.execute(text(sql), params)


async def insert_investor(name: str = "Acme Capital") -> int:
    rows = await fetch("INSERT INTO investors (name) VALUES (:name) RETURNING id", name=name)
    return int(rows[0].id)


async def insert_contact(investor_id: int, name: str = "Jeanne Martin") -> int:
    rows = await fetch(
        "INSERT INTO contacts (investor_id, name) VALUES (:investor_id, :name) RETURNING id",
        investor_id=investor_id,
        name=name,
    )
    return int(rows[0].id)
