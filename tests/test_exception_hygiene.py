"""Errors are raised fresh: no module keeps an exception instance, and failed logins leave
neither memory growth nor a password behind (issue 12 §1)."""

import gc
import importlib
import logging
import pkgutil
import tracemalloc
from collections.abc import Iterator
from types import ModuleType

import pytest
from httpx import AsyncClient
from passlib.context import CryptContext

import core.security

LOGIN = "/api/v1/auth/login"
PACKAGES = ("core", "models", "schemas", "services", "api")
# Each submitted password is this prefix and a number; no other string in the process has it.
PROBE = "Probe-Secret-5f3c91-"
# Memory is traced from the 200th login to the 800th (tracing triples the cost of a login); the
# password check covers all 2,000.
WARM_UP_LOGINS, TRACED_UNTIL, TOTAL_LOGINS = 200, 800, 2000
# One login's frames, kept alive by a reused exception, weigh several kilobytes: 600 of them
# would be megabytes.
GROWTH_BOUND_BYTES = 256 * 1024


def application_modules() -> Iterator[ModuleType]:
    yield importlib.import_module("main")
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            yield importlib.import_module(info.name)


def test_no_module_level_name_is_an_exception_instance() -> None:
    modules = list(application_modules())
    assert {"main", "core.exceptions", "services.auth", "api.routes.auth"} <= {
        module.__name__ for module in modules
    }
    instances = [
        f"{module.__name__}.{name}"
        for module in modules
        for name, value in vars(module).items()
        if isinstance(value, BaseException)
    ]
    assert instances == []


@pytest.fixture
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its lowest cost for this test only: 2,000 checks at the real cost take minutes."""
    cheap = CryptContext(
        schemes=["argon2"], argon2__memory_cost=8, argon2__time_cost=1, argon2__parallelism=1
    )
    monkeypatch.setattr(core.security, "_password_context", cheap)
    monkeypatch.setattr(core.security, "_DUMMY_HASH", cheap.hash("timing-equaliser"))


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The log capture keeps every record: 2,000 logins' lines would be growth of their own."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


async def fail_logins(client: AsyncClient, first: int, last: int) -> None:
    for number in range(first, last):
        response = await client.post(
            LOGIN, json={"email": f"nobody{number}@crm.test", "password": f"{PROBE}{number}"}
        )
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_credentials"


def traced_bytes_after_collection() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def probe_strings_alive() -> list[str]:
    """Submitted passwords still referenced by any object the collector tracks (frames,
    dicts, models, exceptions and their tracebacks, ...)."""
    gc.collect()
    found = []
    for holder in gc.get_objects():
        for value in gc.get_referents(holder):
            if isinstance(value, str) and value.startswith(PROBE) and value != PROBE:
                found.append(value)
    return found


@pytest.mark.usefixtures("cheap_password_hashing", "quiet_logs")
async def test_failed_logins_leave_no_memory_growth_and_no_password(client: AsyncClient) -> None:
    await fail_logins(client, 0, WARM_UP_LOGINS)
    tracemalloc.start()
    try:
        after_warm_up = traced_bytes_after_collection()
        await fail_logins(client, WARM_UP_LOGINS, TRACED_UNTIL)
        after_traced = traced_bytes_after_collection()
    finally:
        tracemalloc.stop()
    await fail_logins(client, TRACED_UNTIL, TOTAL_LOGINS)

    assert after_traced - after_warm_up < GROWTH_BOUND_BYTES, (after_warm_up, after_traced)
    assert probe_strings_alive() == []


async def test_a_refused_duplicate_leaves_no_password_behind(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    # The 409 is raised while the database's IntegrityError is handled: a reused instance would
    # keep that error as its context, and with it the frames of the request and their password.
    for number in range(2):
        response = await client.post(
            "/api/v1/users",
            json={"email": "twin@crm.test", "full_name": "Twin", "password": f"{PROBE}{number}"},
            headers=admin_headers,
        )
        assert response.status_code == (201, 409)[number], response.text
    assert response.json()["code"] == "duplicate_email"
    del response
    assert probe_strings_alive() == []
