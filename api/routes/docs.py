"""Swagger UI (/docs) and ReDoc (/redoc) served with every asset from the API itself.

The viewers' scripts and styles come from the installed `fastapi-offline` wheel (ADR 0005), so
the pages render on a network with no internet access; the start-up script is a file of ours.
"""

import html
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import swagger_ui_default_parameters
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
OWN_ASSETS_DIR = Path(__file__).resolve().parent.parent / "docs_assets"

# Only the API's own origin. The viewers still need data: images (Swagger's icons), styles they
# inject at run time, and ReDoc's search worker, which it builds from a blob: URL.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "worker-src 'self' blob:"
)

router = APIRouter(include_in_schema=False)


def _page(title: str, head: str, body: str) -> HTMLResponse:
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n{head}</head>\n<body>\n{body}</body>\n</html>\n"
    )
    return HTMLResponse(document, headers={"Content-Security-Policy": DOCS_CSP})


def _urls(request: Request) -> tuple[str, str]:
    """The OpenAPI document and the assets, under the root path the API is mounted at."""
    root = request.scope.get("root_path", "")
    return root + (request.app.openapi_url or ""), root + ASSETS_PATH


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    openapi_url, assets = _urls(request)
    config: dict[str, Any] = swagger_ui_default_parameters | (
        request.app.swagger_ui_parameters or {}
    )
    config["url"] = openapi_url
    head = (
        f'<link rel="stylesheet" href="{assets}/swagger-ui.css">\n'
        f'<link rel="icon" href="{assets}/favicon.png">\n'
    )
    body = (
        f'<div id="swagger-ui" data-config="{html.escape(json.dumps(config))}"></div>\n'
        f'<script src="{assets}/swagger-ui-bundle.js"></script>\n'
        f'<script src="{assets}/swagger-init.js"></script>\n'
    )
    return _page(f"{request.app.title} - Swagger UI", head, body)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    openapi_url, assets = _urls(request)
    head = f'<link rel="icon" href="{assets}/favicon.png">\n'
    # ReDoc's bundle starts by itself on the <redoc> element: no start-up script to serve.
    body = (
        f'<redoc spec-url="{html.escape(openapi_url)}"></redoc>\n'
        f'<script src="{assets}/redoc.standalone.js"></script>\n'
    )
    return _page(f"{request.app.title} - ReDoc", head, body)


def add_offline_docs(app: FastAPI) -> None:
    """The two pages, and one mount serving the wheel's files beside our start-up script."""
    app.include_router(router)
    assets = StaticFiles(directory=OWN_ASSETS_DIR, packages=[("fastapi_offline", "static")])
    app.mount(ASSETS_PATH, assets, name="docs-assets")
