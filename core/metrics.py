"""Prometheus metrics: requests by route template, errors by code, the database pool.

With PROMETHEUS_MULTIPROC_DIR set (several uvicorn workers), prometheus-client keeps each
worker's counters in files of that directory and a scrape adds them up; otherwise each process
answers with its own.
"""

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.pool import Pool, QueuePool

# Requests no route matched share one label: a raw path would give each scanner's guess a series.
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LABELS = ("method", "route", "status")

REQUESTS = Counter(
    "crm_http_requests_total", "HTTP requests answered, by route template and status", _LABELS
)
LATENCY = Histogram(
    "crm_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and status",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ERRORS = Counter("crm_http_errors_total", "Error responses, by error code", ("code",))

# The children of each label set, looked up once: labels() costs more than the increment.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    if method not in _METHODS:
        method = "OTHER"
    key = (method, route, status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (
            REQUESTS.labels(method, route, status),
            LATENCY.labels(method, route, status),
        )
    children[0].inc()
    children[1].observe(seconds)


def record_error(code: str) -> None:
    ERRORS.labels(code).inc()


class _PoolGauges(Collector):
    """The pool as it is at scrape time (in multiprocess mode: the worker that answers)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        queue = self.pool if isinstance(self.pool, QueuePool) else None
        yield GaugeMetricFamily(
            "crm_db_pool_connections_in_use",
            "Database connections checked out of the pool",
            value=queue.checkedout() if queue else 0,
        )
        yield GaugeMetricFamily(
            "crm_db_pool_size",
            "Connections the pool keeps open, overflow aside",
            value=queue.size() if queue else 0,
        )


def exposition(pool: Pool) -> bytes:
    """Every metric in Prometheus text format."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_PoolGauges(pool))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        return generate_latest(scrape)
    return generate_latest(REGISTRY) + generate_latest(scrape)
