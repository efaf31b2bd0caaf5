"""Property-based fuzzing of every operation from the OpenAPI document (schemathesis), against
the real app on the real test database, authenticated as the first admin.

Positive and negative data, the examples, coverage and fuzzing phases, then the stateful phase
(chains of calls following the links schemathesis infers). Every check runs: no 5xx, documented
status codes, headers, content types and bodies, valid data accepted, invalid data rejected;
the only exceptions are the per-operation ones schemathesis.toml lists, refusals no schema can
express. `make test` runs a small seeded pass; `make fuzz` sets FUZZ_EXAMPLES (and
FUZZ_STATEFUL_EXAMPLES) for a deeper one. The module prints its figures."""

import asyncio
import io
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from pydantic import BaseModel, ValidationError
from requests.adapters import BaseAdapter, HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from sqlalchemy import text
from urllib3 import HTTPResponse
from urllib3._collections import HTTPHeaderDict

from core.config import PROJECT_ROOT, settings
from core.db import db
from core.security import create_access_token
from models import Base
from schemas.investor import InvestorCreate
from schemas.user import LoginJSON, PasswordChange, UserCreate
from tests.conftest import ADMIN_EMAIL, owner_connection
from tests.factories import fetch, insert_investor

# Each case starts from emptied tables (reset_database) on a connection of its own.
pytestmark = pytest.mark.committing

BASE_URL = "http://fuzz.test"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "4"))
SEED = int(os.environ.get("FUZZ_SEED", "20240601"))
SCHEMATHESIS_TOML = PROJECT_ROOT / "schemathesis.toml"


@dataclass
class Figures:
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


FIGURES = Figures()


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
    async with owner_connection() as conn:
        # As in the conftest: the audit trail's guard is lifted for this transaction only.
        await conn.execute(text("SELECT set_config('crm.audit_unlock', 'on', true)"))
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
    # Checks and their per-operation exceptions come from the file; only the volume is set here.
    schema.config.update(base_url=BASE_URL)
    schema.config.seed = SEED
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=EXAMPLES,
        deterministic=True,
    )
    return schema


def _load_schema() -> Any:
    # Built at import, so pytest collects one test per operation. The app only builds its
    # OpenAPI document here; its database comes with the `app` fixture.
    from main import app

    config = SchemathesisConfig.from_path(SCHEMATHESIS_TOML)
    return _configure(schemathesis.openapi.from_dict(app.openapi(), config=config))


schema = _load_schema()


@pytest.fixture
def admin_auth(app: object, session_loop: asyncio.AbstractEventLoop) -> dict[str, str]:
    """The first admin's Authorization header (the database is emptied after every test)."""

    async def admin_token() -> str:
        async with db.sessionmaker() as session:
            query = text("SELECT id, security_stamp FROM users WHERE email = :email")
            admin = (await session.execute(query, {"email": ADMIN_EMAIL})).one()
        return create_access_token(admin.id, admin.security_stamp, uuid.uuid4(), settings)[0]

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


# --- what the schema calls an integer is accepted as one -------------------------------------

KPIS = "/api/v1/kpis"


async def test_an_integral_number_in_a_body_is_that_integer(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor_id = await insert_investor()
    body = {"year": 2026.0, "month": 3.0, "rdv_count": 406.0}

    response = await client.post(f"{KPIS}/investor/{investor_id}", json=body, headers=admin_headers)

    assert response.status_code == 201, response.text
    data = response.json()
    assert (data["year"], data["month"], data["rdv_count"]) == (2026, 3, 406)
    assert '"rdv_count":406,' in response.text  # written back as an integer, not 406.0
    assert await fetch("SELECT year, month, rdv_count FROM kpis") == [(2026, 3, 406)]


@pytest.mark.parametrize("value", [406.5, 0.5, True, "406"])
async def test_a_body_integer_refuses_fractions_booleans_and_strings(
    client: httpx.AsyncClient, admin_headers: dict[str, str], value: Any
) -> None:
    investor_id = await insert_investor()
    body = {"year": 2026, "month": 3, "rdv_count": value}

    response = await client.post(f"{KPIS}/investor/{investor_id}", json=body, headers=admin_headers)

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "rdv_count"]]
    assert await fetch("SELECT id FROM kpis") == []


async def test_an_integral_number_in_a_query_is_that_integer(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    investor_id = await insert_investor()
    for year in (2025, 2026):
        body = {"year": year, "month": 3, "rdv_count": 1}
        response = await client.post(
            f"{KPIS}/investor/{investor_id}", json=body, headers=admin_headers
        )
        assert response.status_code == 201, response.text

    response = await client.get(
        f"{KPIS}/investor/{investor_id}",
        params={"year": "2026.0", "limit": "1.0"},
        headers=admin_headers,
    )

    assert response.status_code == 200, response.text
    page = response.json()
    assert [item["year"] for item in page["items"]] == [2026]
    assert (page["total"], page["limit"]) == (1, 1)


@pytest.mark.parametrize(
    ("name", "value"), [("year", "2026.5"), ("limit", "1.5"), ("year", "true")]
)
async def test_a_query_integer_refuses_fractions_and_booleans(
    client: httpx.AsyncClient, admin_headers: dict[str, str], name: str, value: str
) -> None:
    investor_id = await insert_investor()

    response = await client.get(
        f"{KPIS}/investor/{investor_id}", params={name: value}, headers=admin_headers
    )

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["query", name]]


# Each model with a valid body, and the text field whose published pattern is checked.
TRIMMED_TEXTS = [
    (UserCreate, {"email": "a@crm.test", "full_name": "A"}, "password"),
    (LoginJSON, {"email": "a@crm.test"}, "password"),
    (PasswordChange, {"new_password": "long-enough"}, "current_password"),
    (InvestorCreate, {}, "name"),
]
TEXT_VALUES = [
    "abcdefgh",
    "  abcdefgh  ",
    "a      b",
    "\u3000abcdefg\n",
    "  abcdefg ",
    "x",
    " ",
    "",
]


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [pytest.param(*text, id=f"{text[0].__name__}.{text[2]}") for text in TRIMMED_TEXTS],
)
@pytest.mark.parametrize("value", TEXT_VALUES)
def test_a_trimmed_text_publishes_the_length_it_needs_once_trimmed(
    model: type[BaseModel], body: dict[str, Any], field: str, value: str
) -> None:
    published = model.model_json_schema()["properties"][field]
    allowed = (
        published.get("minLength", 0) <= len(value) <= published["maxLength"]
        and re.search(published["pattern"], value) is not None
    )
    try:
        model.model_validate({**body, field: value})
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == allowed


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [pytest.param(*text, id=f"{text[0].__name__}.{text[2]}") for text in TRIMMED_TEXTS],
)
def test_a_trimmed_text_counts_its_maximum_length_before_trimming(
    model: type[BaseModel], body: dict[str, Any], field: str
) -> None:
    longest = model.model_json_schema()["properties"][field]["maxLength"]
    model.model_validate({**body, field: "x" * longest})
    # One character more than published, if only a space, is refused as the schema says.
    with pytest.raises(ValidationError, match="string_too_long"):
        model.model_validate({**body, field: " " + "x" * longest})


async def test_a_405_lists_every_method_of_the_path(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # GET and POST on /users are two routes: Starlette alone would name the first one only.
    response = await client.delete("/api/v1/users", headers=admin_headers)

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"


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
