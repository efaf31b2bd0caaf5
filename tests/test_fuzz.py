"""Property-based fuzzing of every operation from the OpenAPI document (schemathesis), against
the real app on the real test database, authenticated as the first admin.

Positive and negative data, the examples, coverage and fuzzing phases, then the stateful phase
(chains of calls following the links schemathesis infers). Every default check runs except
`allow_header_conformance`: no 5xx, documented status codes, content types and bodies, valid
data accepted, invalid data rejected. `make test` runs a small seeded pass; `make fuzz` sets
FUZZ_EXAMPLES (and FUZZ_STATEFUL_EXAMPLES) for a deeper one. The module prints its figures."""

import asyncio
import io
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from requests.adapters import BaseAdapter, HTTPAdapter
from schemathesis import GenerationMode
from sqlalchemy import text
from urllib3 import HTTPResponse
from urllib3._collections import HTTPHeaderDict

from core.config import settings
from core.db import db
from core.security import create_access_token
from models import Base
from schemas.investor import InvestorCursor
from tests.conftest import ADMIN_EMAIL

BASE_URL = "http://fuzz.test"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "4"))
SEED = int(os.environ.get("FUZZ_SEED", "20240601"))


@dataclass
class Figures:
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


FIGURES = Figures()


def _whole_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_floats_as_ints(item) for item in value]
    return value


def send_integers_as_integers(case: Any) -> None:
    """JSON Schema counts 3.0 as an integer; this API's strict integers refuse it by design
    (`Count`), so the generated 3.0 are sent as 3. The refusal itself is tested in test_kpis."""
    if isinstance(case.body, dict | list):
        case.body = _whole_floats_as_ints(case.body)


# Sort value to resume after, per sort key, for the cursors minted below.
_CURSOR_KEYS: dict[str, str | int | datetime] = {
    "name": "M",
    "created_at": datetime(2000, 1, 1, tzinfo=UTC),
    "updated_at": datetime(2000, 1, 1, tzinfo=UTC),
    "pipeline_stage": 2,
}


def send_cursors_the_server_mints(case: Any) -> None:
    """A list cursor is an opaque token only the server mints: no schema can tell the valid
    ones, so a positive case sends a real one for its sort, with skip 0 as a cursor requires.
    Forged cursors are refused with 422, tested in test_investor_cursor."""
    query = case.query
    meta = case.meta
    if not isinstance(query, dict) or "cursor" not in query or meta is None:
        return
    if meta.generation.mode.is_positive:
        sort = str(query.get("sort", "name"))
        key = _CURSOR_KEYS[sort.lstrip("-")]
        query["cursor"] = InvestorCursor(sort=sort, key=key, id=1).encode()
        query["skip"] = 0


class AppAdapter(BaseAdapter):
    """A `requests` adapter that answers from the ASGI app on the test session's event loop.

    schemathesis sends through `requests`; the app's pooled asyncpg connections belong to the
    session loop, so each request runs there (idle between tests) instead of in a thread.
    """

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.app = app
        self.loop = loop

    async def _send(self, request: requests.PreparedRequest) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        body = request.body.encode() if isinstance(request.body, str) else request.body
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.request(
                request.method or "GET",
                request.url or "/",
                headers=[(name, str(value)) for name, value in request.headers.items()],
                content=body,  # type: ignore[arg-type]
            )

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:  # type: ignore[override]
        answer = self.loop.run_until_complete(self._send(request))
        FIGURES.cases += 1
        FIGURES.statuses[answer.status_code] += 1
        raw = HTTPResponse(
            body=io.BytesIO(answer.content),
            headers=HTTPHeaderDict(answer.headers.multi_items()),
            status=answer.status_code,
            reason=answer.reason_phrase,
            version=11,
            preload_content=False,
            decode_content=False,
        )
        return HTTPAdapter().build_response(request, raw)

    def close(self) -> None:
        pass


async def reset_database() -> None:
    """What the conftest does after each test: empty tables, then the first admin again."""
    from main import bootstrap_first_admin

    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    async with db.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await bootstrap_first_admin()


@pytest.fixture(scope="session")
async def session_loop(app: object) -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.fixture
def http_session(app: object, session_loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    session = requests.Session()
    session.mount(BASE_URL, AppAdapter(app, session_loop))
    yield session
    session.close()


def _configure(schema: Any) -> Any:
    schema.config.update(base_url=BASE_URL)
    schema.config.seed = SEED
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=EXAMPLES,
        deterministic=True,
    )
    checks = schema.config.checks
    checks.update(excluded_check_names=["allow_header_conformance"])
    # 400 is this API's refusal of well-formed data by a business rule (a wrong current
    # password); schema violations are 422.
    acceptance = checks.positive_data_acceptance
    acceptance.expected_statuses = [*acceptance.expected_statuses, "400"]
    return schema


def _load_schema() -> Any:
    # Built at import, so pytest collects one test per operation. The app only builds its
    # OpenAPI document here; its database comes with the `app` fixture.
    from main import app

    return _configure(schemathesis.openapi.from_dict(app.openapi()))


schema = _load_schema()


@pytest.fixture
def admin_auth(app: object, session_loop: asyncio.AbstractEventLoop) -> dict[str, str]:
    """The first admin's Authorization header (the database is emptied after every test)."""

    async def admin_token() -> str:
        async with db.sessionmaker() as session:
            query = text("SELECT id, security_stamp FROM users WHERE email = :email")
            admin = (await session.execute(query, {"email": ADMIN_EMAIL})).one()
        return create_access_token(admin.id, admin.security_stamp, settings)[0]

    token = session_loop.run_until_complete(admin_token())
    return {"Authorization": f"Bearer {token}"}


@schema.parametrize()  # type: ignore[untyped-decorator]
@hypothesis.settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_operation(
    case: Any, http_session: requests.Session, admin_auth: dict[str, str]
) -> None:
    FIGURES.operations.add(f"{case.operation.method.upper()} {case.operation.path}")
    send_integers_as_integers(case)
    send_cursors_the_server_mints(case)
    case.call_and_validate(session=http_session, headers=admin_auth)


def test_stateful_sequences(
    http_session: requests.Session,
    admin_auth: dict[str, str],
    session_loop: asyncio.AbstractEventLoop,
) -> None:
    """Chains of calls through the links schemathesis infers (create, then read/update/delete)."""

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def teardown(self) -> None:
            # Each scenario starts from the same database, so a replayed scenario (Hypothesis
            # shrinking a failure) generates the same ids and the same calls.
            session_loop.run_until_complete(reset_database())

        def before_call(self, case: Any) -> None:
            send_integers_as_integers(case)
            send_cursors_the_server_mints(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"session": http_session, "headers": admin_auth}

    Machine.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )


def test_figures(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], app: Any
) -> None:
    """Every documented operation was fuzzed, and none answered a server error."""
    documented = {
        f"{method.upper()} {path}"
        for path, item in app.openapi()["paths"].items()
        for method in item
    }
    line = (
        f"fuzz: {len(FIGURES.operations)}/{len(documented)} operations, {FIGURES.cases} cases, "
        f"{FIGURES.server_errors} server errors, statuses {dict(sorted(FIGURES.statuses.items()))}"
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        with capsys.disabled():  # shown on success too, not only in a failure report
            reporter.write_line("\n" + line)
    assert FIGURES.operations == documented
    assert FIGURES.server_errors == 0
