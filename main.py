"""The FastAPI application, and `python main.py`: migrate, then serve with uvicorn."""

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import API_PREFIX, include_api
from api.responses import publish_validation_error_fields
from api.routes import health, metrics
from api.routes.docs import add_offline_docs
from core.config import settings
from core.db import db
from core.encryption import keyring
from core.exceptions import DATABASE_ERRORS, register_exception_handlers
from core.middleware import EdgeMiddleware
from core.observability import configure_logging
from models.notification import NOTIFICATIONS_CHANNEL
from services.auth import AuthService
from services.notification_stream import hub
from services.users import USER_CHANGES_CHANNEL, caller_cache

logger = logging.getLogger("tpm_crm")


async def bootstrap_first_admin() -> None:
    async with db.sessionmaker() as session, session.begin():
        generated = await AuthService(session).ensure_first_admin(settings)
    if generated is not None:
        # Printed once, on the console only: the admin must change it after logging in. print,
        # not logging, whose handlers may write (JSON) lines to files that outlive the console.
        print(  # noqa: T201
            f"\n  First admin created: {settings.first_admin_email or 'admin@example.com'}"
            f"\n  Password (shown once, change it): {generated}\n",
            flush=True,
        )


# `make run` stops within seconds: a job still running after this goes back to the queue.
IN_PROCESS_WORKER_GRACE_S = 10.0


@asynccontextmanager
async def in_process_worker() -> AsyncIterator[None]:
    """With RUN_WORKER (the default, for `make run`), jobs and schedules run in this process."""
    if not settings.run_worker:
        yield
        return
    from worker.runtime import run_worker

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_worker(db, settings, stop, grace_s=IN_PROCESS_WORKER_GRACE_S), name="worker"
    )
    try:
        yield
    finally:
        stop.set()
        await task


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # Again: `uvicorn.run(app)` configures its loggers after the import (create_app).
    configure_logging(settings.log_format)
    settings.signing_key()  # load or create data/secret_key before the first request
    keyring()  # likewise data/encryption_key (two-factor secrets)
    db.configure(settings)
    # One LISTEN connection for both channels. The cache first: a stream woken by a change to
    # its account then reads the account afresh.
    db.listen(USER_CHANGES_CHANNEL, caller_cache.on_notification, caller_cache.set_listening)
    db.listen(USER_CHANGES_CHANNEL, hub.on_user_changed)
    db.listen(NOTIFICATIONS_CHANNEL, hub.on_notification, hub.set_listening)
    try:
        try:
            await bootstrap_first_admin()
        except DATABASE_ERRORS as exc:
            # The API still starts (/health answers, /ready says 503); retried at next start.
            logger.warning("Database unreachable at start-up, first admin not checked: %r", exc)
        # Everything built so far (routes, schemas, mappers) lives as long as the process:
        # frozen out of the collector, it is no longer walked by every full collection, which
        # otherwise stalls a busy worker for tens of milliseconds at a time.
        gc.freeze()
        async with in_process_worker():
            yield
    finally:
        await db.dispose()


def create_app() -> FastAPI:
    # At import, so that `uvicorn main:app` writes every line (its start-up too) in LOG_FORMAT.
    configure_logging(settings.log_format)
    app = FastAPI(
        title="TPM Finance CRM API",
        version="1.0.0",
        description="CRM backend of TPM Finance: investors, contacts, interactions and KPIs.",
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
        # Served by api/routes/docs.py from local assets, not by FastAPI from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    register_exception_handlers(app)
    cors = partial(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Retry-After", "X-Request-ID"],
    )
    app.add_middleware(
        EdgeMiddleware,
        api_prefix=API_PREFIX,
        max_bytes=settings.max_body_bytes,
        path_max_bytes={f"{API_PREFIX}/imports": settings.import_max_bytes},
        cors=cors if settings.allowed_origins else None,
    )
    include_api(app)
    # After the API, so that API requests do not test these paths first.
    app.include_router(health.router)
    app.include_router(metrics.router)
    if settings.docs_enabled:
        add_offline_docs(app)
    app.openapi = lambda: publish_validation_error_fields(FastAPI.openapi(app))  # type: ignore[method-assign]
    return app


app = create_app()

# What a terminal, systemd, `timeout` or a process manager sends to stop `python main.py`.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run() -> None:
    """Start an embedded PostgreSQL if needed, apply migrations as the owner, serve as the app.

    SIGINT, SIGTERM and SIGHUP stop the API gracefully, then the embedded server, and the
    process exits with status 0; a failed start-up stops the embedded server too.
    """
    from core.embedded import EmbeddedCluster, start_embedded_postgres
    from core.migrations import app_role_of, upgrade_to_head

    # log_config=None: uvicorn keeps the application's logging configuration.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_config=None,
        server_header=False,  # no `server: uvicorn` banner telling what to attack
    )
    server = _Server(config)
    # From the first step: a signal while the cluster starts or the migrations run is kept
    # and acted on between steps, so nothing is left half started.
    for signum in STOP_SIGNALS:
        signal.signal(signum, server.handle_exit)
    cluster: EmbeddedCluster | None = None
    try:
        # Migrated as the owner role, served as the application role (docs/securite.md).
        if settings.database_url is None:
            cluster = start_embedded_postgres(settings.embedded_pgdata)
            settings.database_url = cluster.url
            migration_url = cluster.owner_url
        else:
            migration_url = settings.migration_database_url or settings.database_url
        if not server.should_exit:
            upgrade_to_head(migration_url, app_role_of(settings.database_url, migration_url))
            configure_logging(settings.log_format)  # Alembic's env.py installed its own
        if not server.should_exit:
            server.run()
    finally:
        if cluster is not None:
            cluster.stop()


class _Server(uvicorn.Server):
    """uvicorn's server with the signal handlers left to `run()`.

    uvicorn's own handlers cover SIGINT and SIGTERM only, and raise the signal again once the
    server has shut down: the process then dies of it, before anything can stop the embedded
    PostgreSQL, and with a signal status instead of 0.
    """

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


if __name__ == "__main__":
    run()
