"""Logs never hold a password, a password hash or a token, even with every logger at DEBUG
(the access log, SQLAlchemy's SQL echo with its parameters, the app's own loggers)."""

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import uvicorn
from httpx import AsyncClient

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

API = "/api/v1"
LOGGERS = (
    "",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "tpm_crm.access",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "asyncpg",
    "passlib",
    "jose",
    "tpm_crm",
    "core",
    "services",
    "api",
)


@pytest.fixture
async def served(app: object) -> AsyncIterator[AsyncClient]:
    """The app behind a real uvicorn on a free port, in this event loop (its lifespan is already
    running); `log_config=None` keeps uvicorn's loggers propagating to the capture."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_config=None,
        log_level="debug",
        access_log=True,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


# SQL echo is decided when a connection opens: the requests need connections of their own.
@pytest.mark.committing
async def test_no_log_record_holds_a_password_a_hash_or_a_token(
    served: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    new_password, wrong_password, changed_password = (
        "Initial-Secret-4821",
        "Wrong-Secret-9377",
        "Changed-Secret-1650",
    )

    admin_login = await served.post(
        f"{API}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert admin_login.status_code == 200
    admin_token = admin_login.json()["access_token"]
    admin = {"Authorization": f"Bearer {admin_token}"}
    created = await served.post(
        f"{API}/users",
        json={"email": "jeanne@crm.test", "full_name": "Jeanne", "password": new_password},
        headers=admin,
    )
    assert created.status_code == 201

    login = await served.post(
        f"{API}/auth/login", json={"email": "jeanne@crm.test", "password": new_password}
    )
    assert login.status_code == 200
    token = login.json()["access_token"]
    # The OAuth2 form, as Swagger's Authorize button sends it.
    failed = await served.post(
        f"{API}/auth/login", data={"username": "jeanne@crm.test", "password": wrong_password}
    )
    assert failed.status_code == 401
    me = await served.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    changed = await served.put(
        f"{API}/auth/me/password",
        json={"current_password": new_password, "new_password": changed_password},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert changed.status_code == 204
    bad_token = await served.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}x"})
    assert bad_token.status_code == 401

    records = caplog.records
    # The capture really saw the access log, the SQL echo and the app's failed-login line.
    names = {record.name for record in records}
    assert "tpm_crm.access" in names
    assert "sqlalchemy.engine.Engine" in names
    assert any(record.getMessage() == "Failed login attempt" for record in records)

    secrets = [
        ADMIN_PASSWORD,
        new_password,
        wrong_password,
        changed_password,
        admin_token,
        token,
        token.split(".")[2],  # the signature alone
        "$argon2",
    ]
    for record in records:
        logged = " ".join(
            [record.getMessage(), repr(record.args), str(record.exc_info), record.exc_text or ""]
        )
        for secret in secrets:
            assert secret not in logged, (record.name, secret, logged[:300])
    assert not any(secret in caplog.text for secret in secrets)
