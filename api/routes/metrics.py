"""Prometheus metrics, for the operator's scraper only (outside /api/v1 and the schema)."""

import secrets

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from core import metrics
from core.config import settings
from core.db import db
from core.exceptions import NotFoundError

router = APIRouter(include_in_schema=False)


class MetricsHidden(NotFoundError):
    # The body of any unknown path: without the token, nothing says the endpoint exists.
    message = "Not Found"


def _bearer_matches(authorization: str | None, token: str) -> bool:
    scheme, _, presented = (authorization or "").partition(" ")
    # Compared in constant time, so the answer's timing does not reveal the token bit by bit.
    return scheme.lower() == "bearer" and secrets.compare_digest(
        presented.strip().encode(), token.encode()
    )


@router.get("/metrics")
async def read_metrics(request: Request) -> Response:
    """Request, error and pool metrics in Prometheus text format (bearer METRICS_TOKEN)."""
    token = settings.metrics_token
    if token is None or not _bearer_matches(
        request.headers.get("authorization"), token.get_secret_value()
    ):
        raise MetricsHidden()
    return Response(metrics.exposition(db.engine.pool), media_type=CONTENT_TYPE_LATEST)
