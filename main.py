"""The FastAPI application, and `python main.py`: migrate, then serve with uvicorn."""

import gc
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import API_PREFIX, include_api
from api.routes import health
from core.config import settings
from core.db import db
from core.exceptions import DATABASE_ERRORS, register_exception_handlers
from core.middleware import BodySizeLimitMiddleware, SecurityHeadersMiddleware
from services.auth import AuthService
from services.users import USER_CHANGES_CHANNEL, caller_cache

logger = logging.getLogger("tpm_crm")


async def bootstrap_first_admin() -> None:
    async with db.sessionmaker() as session, session.begin():
        generated = await AuthService(session).ensure_first_admin(settings)
    if generated is not None:
        # Printed once, on the console only: the admin must change it after logging in.
        print(  # noqa: T201
            f"\n  First admin created: {settings.first_admin_email or 'admin@example.com'}"
            f"\n  Password (shown once, change it): {generated}\n",
            flush=True,
        )


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings.signing_key()  # load or create data/secret_key before the first request
    db.configure(settings)
    db.listen(USER_CHANGES_CHANNEL, caller_cache.on_notification, caller_cache.set_listening)
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
        yield
    finally:
        await db.dispose()


def create_app() -> FastAPI:
    app = FastAPI(
        title="TPM Finance CRM API",
        version="1.0.0",
        description="CRM backend of TPM Finance: investors, contacts, interactions and KPIs.",
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    register_exception_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Retry-After"],
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it also covers the 413 the body limit answers by itself.
    app.add_middleware(SecurityHeadersMiddleware, api_prefix=API_PREFIX)
    app.include_router(health.router)
    include_api(app)
    return app


app = create_app()

# What a terminal, systemd, `timeout` or a process manager sends to stop `python main.py`.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run() -> None:
    """Start an embedded PostgreSQL if needed, apply migrations, serve with uvicorn.

    SIGINT, SIGTERM and SIGHUP stop the API gracefully, then the embedded server, and the
    process exits with status 0; a failed start-up stops the embedded server too.
    """
    from core.embedded import EmbeddedCluster, start_embedded_postgres
    from core.migrations import upgrade_to_head

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, proxy_headers=True)
    server = _Server(config)
    # From the first step: a signal while the cluster starts or the migrations run is kept
    # and acted on between steps, so nothing is left half started.
    for signum in STOP_SIGNALS:
        signal.signal(signum, server.handle_exit)
    cluster: EmbeddedCluster | None = None
    try:
        if settings.database_url is None:
            cluster = start_embedded_postgres(settings.embedded_pgdata)
            settings.database_url = cluster.url
        if not server.should_exit:
            upgrade_to_head(settings.database_url)
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
