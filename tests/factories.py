"""Test data for every test module: rows arranged and read directly in SQL, apart from the API,
and entities created through the API where the test needs their JSON body.

Each helper opens its own session, so inside a rolled-back test (see conftest) it runs in the
test's transaction and sees what the requests wrote, and what it writes is undone with the rest.
"""

import functools
import uuid
from datetime import date
from typing import Any

from httpx import AsyncClient
from sqlalchemy import Row, text

from core.config import settings
from core.db import db

INVESTORS = "/api/v1/investors"
CONTACTS = "/api/v1/contacts"
USER_PASSWORD = "user-password-123"


async def fetch(sql: str, **params: Any) -> list[Row[Any]]:
    """The rows of one statement."""
    async with db.sessionmaker() as session, session.begin():
        return list((await session.execute(text(sql), params)).all())


async def scalar(sql: str, **params: Any) -> Any:
    """The one value of a one-row, one-column statement."""
    async with db.sessionmaker() as session, session.begin():
        return (await session.execute(text(sql), params)).scalar_one()


async def execute(sql: str, **params: Any) -> None:
    """Run one statement that returns no rows."""
    async with db.sessionmaker() as session, session.begin():
        await session.execute(text(sql), params)


@functools.cache
def password_hash(password: str) -> str:
    """argon2 is deliberately slow: hash each test password once per run."""
    from core.security import hash_password

    return hash_password(password)


async def create_user(
    email: str = "user@crm.test",
    *,
    role: str = "user",
    is_active: bool = True,
    password: str = USER_PASSWORD,
) -> int:
    """Insert a user directly and return its id."""
    return int(
        await scalar(
            "INSERT INTO users (email, full_name, hashed_password, role, is_active) "
            "VALUES (:email, :name, :hash, :role, :active) RETURNING id",
            email=email,
            name=email.split("@")[0].title(),
            hash=password_hash(password),
            role=role,
            active=is_active,
        )
    )


async def first_admin_id() -> int:
    """The id of the first admin (created at start-up)."""
    email = settings.first_admin_email
    return int(await scalar("SELECT id FROM users WHERE email = :e", e=email))


async def account(user_id: int) -> tuple[int, uuid.UUID]:
    """The user's id and security stamp: what a login puts in a token."""
    stamp = await scalar("SELECT security_stamp FROM users WHERE id = :id", id=user_id)
    return user_id, stamp


async def bearer(user_id: int) -> dict[str, str]:
    """An Authorization header for this user, as a login would give (with its security stamp),
    in a session of its own that no logout can end (tests/test_sessions.py logs in for those)."""
    from core.security import create_access_token

    token, _ = create_access_token(*(await account(user_id)), uuid.uuid4(), settings)
    return {"Authorization": f"Bearer {token}"}


async def insert_investor(name: str = "Acme Capital", owner_id: int | None = None) -> int:
    return int(
        await scalar(
            "INSERT INTO investors (name, owner_id) VALUES (:name, :owner_id) RETURNING id",
            name=name,
            owner_id=owner_id,
        )
    )


async def insert_contact(investor_id: int, name: str = "Jeanne Martin") -> int:
    return int(
        await scalar(
            "INSERT INTO contacts (investor_id, name) VALUES (:investor_id, :name) RETURNING id",
            investor_id=investor_id,
            name=name,
        )
    )


async def insert_interaction(
    investor_id: int,
    on: date = date(2024, 1, 1),
    *,
    type_: str = "appel",
    contact_id: int | None = None,
) -> int:
    return int(
        await scalar(
            "INSERT INTO interactions (investor_id, contact_id, type, date) "
            "VALUES (:investor_id, :contact_id, :type, :on) RETURNING id",
            investor_id=investor_id,
            contact_id=contact_id,
            type=type_,
            on=on,
        )
    )


async def insert_kpi(investor_id: int, year: int = 2024, month: int = 1) -> int:
    """A month of KPIs, every count at its default (zero)."""
    return int(
        await scalar(
            "INSERT INTO kpis (investor_id, year, month) "
            "VALUES (:investor_id, :year, :month) RETURNING id",
            investor_id=investor_id,
            year=year,
            month=month,
        )
    )


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
