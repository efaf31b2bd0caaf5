"""Liveness and readiness probes (no authentication)."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import ReadSession
from api.responses import errors
from core.config import settings
from core.exceptions import ServiceUnavailableError

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive (does not touch the database)."""
    return {"status": "ok"}


@router.get("/ready", responses=errors(503))
async def ready(session: ReadSession) -> JSONResponse:
    """The database answers `SELECT 1` within a short timeout."""
    try:
        ping = session.execute(text("SELECT 1"))
        await asyncio.wait_for(ping, timeout=settings.database_ready_timeout_s)
    except Exception as exc:
        raise ServiceUnavailableError("The database is not reachable") from exc
    return JSONResponse({"status": "ok", "database": "ok"})
