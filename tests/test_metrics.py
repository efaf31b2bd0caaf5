"""GET /metrics: hidden without its token, Prometheus text with it, counters by route template,
and one count across several uvicorn workers (issue 12 §8)."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx import AsyncClient, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from core.config import settings
from main import app as fastapi_app
from tests.uvicorn_process import uvicorn_process

TOKEN = "metrics-token-for-the-tests-0123456789"
INVESTORS = "/api/v1/investors"
TEMPLATE = "/api/v1/investors/{investor_id}"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metrics_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(settings, "metrics_token", SecretStr(TOKEN))
    return TOKEN


async def scrape(client: AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return samples(response.text)


def assert_hidden(response: Response, unknown: Response) -> None:
    """A 404 with the very body of a path that does not exist."""
    assert response.status_code == 404
    body, expected = response.json(), unknown.json()
    assert body.pop("request_id") == response.headers["x-request-id"]
    expected.pop("request_id")
    assert body == expected == {"detail": "Not Found", "code": "not_found"}


async def test_without_a_configured_token_metrics_do_not_exist(client: AsyncClient) -> None:
    assert settings.metrics_token is None
    unknown = await client.get("/no-such-endpoint")
    assert_hidden(await client.get("/metrics"), unknown)
    # Not even with a token that would be right if one were set.
    with_token = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert_hidden(with_token, unknown)


@pytest.mark.usefixtures("metrics_token")
@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer "],
)
async def test_without_the_right_bearer_token_metrics_are_hidden(
    client: AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    unknown = await client.get("/no-such-endpoint")
    assert_hidden(await client.get("/metrics", headers=headers), unknown)


def test_metrics_are_not_in_the_published_schema() -> None:
    assert not any(path.startswith("/metrics") for path in fastapi_app.openapi()["paths"])


@pytest.mark.usefixtures("metrics_token")
async def test_requests_are_counted_by_route_template_and_status(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    created = await client.post(INVESTORS, json={"name": "Amundi"}, headers=admin_headers)
    assert created.status_code == 201, created.text
    investor_id = created.json()["id"]
    before = await scrape(client)
    for _ in range(3):
        ok = await client.get(f"{INVESTORS}/{investor_id}", headers=admin_headers)
        assert ok.status_code == 200
    for missing in (999_991, 999_992):
        gone = await client.get(f"{INVESTORS}/{missing}", headers=admin_headers)
        assert gone.status_code == 404
    for path in ("/wp-admin/setup.php", "/.env"):
        assert (await client.get(path)).status_code == 404
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    found = {"method": "GET", "route": TEMPLATE, "status": "200"}
    not_found = {**found, "status": "404"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert moved("crm_http_requests_total", **found) == 3
    assert moved("crm_http_requests_total", **not_found) == 2
    assert moved("crm_http_requests_total", **unmatched) == 2
    assert moved("crm_http_request_duration_seconds_count", **found) == 3
    assert moved("crm_http_request_duration_seconds_bucket", **found, le="+Inf") == 3
    assert moved("crm_http_request_duration_seconds_sum", **found) > 0
    assert moved("crm_http_errors_total", code="not_found") == 4
    # No raw path became a label.
    routes = {dict(labels).get("route") for _, labels in after}
    assert not routes & {f"{INVESTORS}/{investor_id}", "/wp-admin/setup.php", "/.env"}


@pytest.mark.usefixtures("metrics_token")
async def test_errors_are_counted_by_code(client: AsyncClient) -> None:
    before = await scrape(client)
    for _ in range(2):
        assert (await client.get("/api/v1/auth/me")).status_code == 401
    invalid = await client.post("/api/v1/auth/login", json={"email": "not-an-email"})
    assert invalid.status_code == 422
    after = await scrape(client)
    for code, count in (("not_authenticated", 2), ("validation_error", 1)):
        moved = value(after, "crm_http_errors_total", code=code) - value(
            before, "crm_http_errors_total", code=code
        )
        assert moved == count, code


@pytest.mark.committing
@pytest.mark.usefixtures("metrics_token")
async def test_the_pool_is_read_at_scrape_time(client: AsyncClient) -> None:
    scraped = await scrape(client)
    assert value(scraped, "crm_db_pool_size") == settings.database_pool_size
    # Scraping holds no connection, and no request is running.
    assert value(scraped, "crm_db_pool_connections_in_use") == 0


# --- several workers ------------------------------------------------------------------------


@pytest.fixture
def two_workers(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`uvicorn main:app --workers 2` on the test database, in multiprocess mode."""
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    env = {"METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with uvicorn_process(database_url, "--workers", "2", env=env) as (base, _):
        yield base, multiproc_dir


def test_several_workers_answer_one_count(two_workers: tuple[str, Path]) -> None:
    base, multiproc_dir = two_workers
    # A new connection per request, so that both workers get some.
    for _ in range(30):
        assert httpx.get(f"{base}/ready").status_code == 200
    scraped = samples(
        httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    )
    labels = {"method": "GET", "route": "/ready", "status": "200"}
    # Whichever worker answers the scrape, it adds up what every worker counted.
    assert value(scraped, "crm_http_requests_total", **labels) == 30
    assert value(scraped, "crm_http_request_duration_seconds_count", **labels) == 30
    assert any(multiproc_dir.glob("counter_*.db"))
