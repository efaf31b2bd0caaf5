"""/docs and /redoc render with no internet access (every asset from the API, a strict CSP),
and the README stays an entry point."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from httpx import AsyncClient

from core.config import Settings

EXPECTED_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "worker-src 'self' blob:"
)
# The only sources a directive may name: the API's own origin and the non-network schemes
# the viewers need. Any host here would be a dependency on a network the reader may not have.
ALLOWED_SOURCES = {"'self'", "'unsafe-inline'", "data:", "blob:"}
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


class PageScan(HTMLParser):
    """The URLs a page makes the browser fetch, and the bodies of its <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self.data_configs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href", "spec-url"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if found.get("data-config"):
            self.data_configs.append(str(found["data-config"]))
        if tag == "script":
            self._in_script = True
            if not found.get("src"):
                self.inline_scripts.append("<script> without src")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


async def scan(client: AsyncClient, path: str) -> PageScan:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = PageScan()
    page.feed(response.text)
    return page


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_page_has_the_strict_csp(client: AsyncClient, path: str) -> None:
    response = await client.get(path)
    csp = response.headers["content-security-policy"]
    assert csp == EXPECTED_CSP
    sources = {source for directive in csp.split(";") for source in directive.split()[1:]}
    assert sources <= ALLOWED_SOURCES


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_page_has_no_inline_script(client: AsyncClient, path: str) -> None:
    page = await scan(client, path)
    assert page.inline_scripts == []


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_every_asset_comes_from_the_api_itself(client: AsyncClient, path: str) -> None:
    page = await scan(client, path)
    assert any(url.endswith(".js") for url in page.urls)
    for url in page.urls:
        # Same origin: a path, never a scheme or a protocol-relative //host.
        assert url.startswith("/") and not url.startswith("//"), url
        response = await client.get(url)
        assert response.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert response.headers["content-type"].startswith(CONTENT_TYPES[suffix]), url
        assert response.content, url


async def test_swagger_page_loads_the_bundle_then_the_start_up_file(client: AsyncClient) -> None:
    page = await scan(client, "/docs")
    scripts = [url for url in page.urls if url.endswith(".js")]
    assert scripts == ["/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-init.js"]
    start_up = (await client.get(scripts[1])).text
    # The file starts Swagger UI from the page's data-config: the page needs no inline script.
    assert "SwaggerUIBundle(" in start_up
    assert "dataset.config" in start_up
    bundle = (await client.get(scripts[0])).text
    assert "SwaggerUIBundle" in bundle


async def test_redoc_page_loads_the_standalone_bundle(client: AsyncClient) -> None:
    page = await scan(client, "/redoc")
    assert "/docs-assets/redoc.standalone.js" in page.urls
    assert "/openapi.json" in page.urls
    bundle = (await client.get("/docs-assets/redoc.standalone.js")).text
    assert "Redoc" in bundle


async def test_swagger_config_keeps_authorize_and_try_it_out(client: AsyncClient) -> None:
    page = await scan(client, "/docs")
    [raw] = page.data_configs
    config = json.loads(raw)
    assert config["persistAuthorization"] is True
    assert config["dom_id"] == "#swagger-ui"
    assert config["url"] == "/openapi.json"
    spec = (await client.get(config["url"])).json()
    # "Try it out" calls the server the document names; none means this origin, which the
    # CSP's default-src 'self' allows. The Authorize button posts to a same-origin tokenUrl.
    assert "servers" not in spec
    flows = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flows["password"]["tokenUrl"].startswith("/")


async def test_unknown_asset_is_a_json_404(client: AsyncClient) -> None:
    response = await client.get("/docs-assets/missing.js")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_no_oauth2_redirect_page(client: AsyncClient) -> None:
    """The password flow never leaves the page; the redirect page would be dead code with an
    inline script, so it is not served."""
    response = await client.get("/docs/oauth2-redirect")
    assert response.status_code == 404


# --- README, the entry point ----------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_is_an_entry_point() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert "make run" in text
    assert "make test" in text


def test_readme_documents_every_setting() -> None:
    """A setting added to core/config.py without a row in the configuration table fails here."""
    table_rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {row.split("`")[1] for row in table_rows}
    assert {name.upper() for name in Settings.model_fields} <= documented
