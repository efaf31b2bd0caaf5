"""Request ids, the access line and the log format (text or one JSON object per line)."""

import logging
import os
import re
import sys
from contextvars import ContextVar
from time import perf_counter
from typing import Any, Literal, TextIO
from urllib.parse import quote

from fastapi.routing import iter_route_contexts
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics

REQUEST_ID_HEADER = b"x-request-id"
# A caller's id is kept only if it cannot smuggle anything into a log line or a header.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = (
    "levelname",
    "name",
    "message",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
)
_JSON_RENAMES = {"levelname": "level", "name": "logger"}

access_logger = logging.getLogger("tpm_crm.access")

# (request id, method, path) of the request being served: read by every log line it writes.
_current: ContextVar[tuple[str, str, str] | None] = ContextVar("request", default=None)


def current_request_id() -> str | None:
    current = _current.get()
    return None if current is None else current[0]


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _VALID_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return _new_uuid4()


def _new_uuid4() -> str:
    """A random (version 4) UUID in its usual form, at half the cost of str(uuid.uuid4()):
    most requests come without an id, and this runs on each of them."""
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


class RequestContextMiddleware:
    """Gives each request an id (X-Request-ID, the logs, the error bodies), writes its access
    line and records its metrics. Pure ASGI: it runs on every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # id of the matched route -> its whole path template, learnt from the application.
        self._templates: dict[int, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope["headers"])
        method, path = scope["method"], scope["path"]
        token = _current.set((request_id, method, path))
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500
        started = perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                # The 500 handler sets it itself (Starlette calls it outside this middleware).
                if not any(name == REQUEST_ID_HEADER for name, _ in headers):
                    message["headers"] = [*headers, header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = perf_counter() - started
            metrics.record_request(method, self._template(scope), status, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                duration_ms = round(elapsed * 1000, 2)
                access_logger.info(
                    '"%s %s" %d %.2fms',
                    method,
                    # Quoted as it came: a decoded %0A would otherwise start a forged text line.
                    quote(path),
                    status,
                    duration_ms,
                    extra={"status": status, "duration_ms": duration_ms},
                )
        # Left set when the app raised: Starlette's 500 handler, which runs outside every
        # middleware, still reads it; each request runs in its own task, so it goes with it.
        _current.reset(token)

    def _template(self, scope: Scope) -> str:
        # Set by the router once a route (or the same path with another method) matched.
        route = scope.get("route")
        if route is None:
            return metrics.UNMATCHED_ROUTE
        template = self._templates.get(id(route))
        return template if template is not None else self._learn(scope["app"], route)

    def _learn(self, app: Any, route: object) -> str:
        """A route of an included router knows its path without the router's prefix: the
        application's route contexts hold the whole template."""
        for context in iter_route_contexts(app.routes):
            if context.path_format:
                self._templates[id(context.original_route)] = context.path_format
        fallback = getattr(route, "path_format", None) or metrics.UNMATCHED_ROUTE
        return self._templates.setdefault(id(route), fallback)


class _RequestFields(logging.Filter):
    """Adds the current request's id, method and path to every record a handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _current.get()
        request_id, method, path = current if current is not None else ("-", None, None)
        record.request_id = request_id
        if not hasattr(record, "method"):
            record.method = method
            record.path = path
        return True


def configure_logging(log_format: LogFormat, stream: TextIO | None = None) -> None:
    """One handler on the root logger, in the chosen format, that every logger writes through.

    uvicorn's own handlers are replaced so its lines get the same format and request id, and its
    access log gives way to the one RequestContextMiddleware writes, which stays on unless
    uvicorn's was turned off (`--no-access-log`). Called again after something else configured
    logging (uvicorn, Alembic's env.py), it takes the process back.
    """
    uvicorn_access = logging.getLogger("uvicorn.access")
    if uvicorn_access.handlers:
        access_wanted = True  # uvicorn has just configured its access log
    elif access_logger.level != logging.NOTSET:
        access_wanted = access_logger.level <= logging.INFO  # as decided by an earlier call
    else:
        # --no-access-log leaves uvicorn's access logger without handlers and not propagating.
        access_wanted = uvicorn_access.propagate
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RequestFields())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                list(JSON_FIELDS),
                rename_fields=_JSON_RENAMES,
                timestamp="time",
                # uvicorn's coloured copy of each message.
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.handlers.clear()
    uvicorn_logger.propagate = True
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    access_logger.setLevel(logging.INFO if access_wanted else logging.WARNING)
