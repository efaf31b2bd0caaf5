"""Small helpers shared by the investor, search and contact tests."""

from typing import Any

from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

INVESTORS = "/api/v1/investors"
CONTACTS = "/api/v1/contacts"


async def make_investor(client: AsyncClient, headers: dict[str, str], **fields: Any) -> Any:
    """Create an investor through the API and return its body."""
    body = {"name": "Acme Capital", **fields}
    response = await client.post(INVESTORS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def make_contact(
    client: AsyncClient, headers: dict[str, str], investor_id: int, **fields: Any
) -> Any:
    """Create a contact through the API and return its body."""
    body = {"name": "Jeanne Martin", **fields}
    response = await client.post(f"{CONTACTS}/investor/{investor_id}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def scalar(session: AsyncSession, sql: str, **params: Any) -> Any:
    """One value read directly from the database (outside the API)."""
    value = (await session.execute(text(sql), params)).scalar_one()
    await session.rollback()
    return value


async def execute(session: AsyncSession, sql: str, **params: Any) -> None:
    """Run and commit one statement directly (to arrange rows the API cannot create yet)."""
    await session.execute(text(sql), params)
    await session.commit()
