"""Request ids, the access line and the log format (text or one JSON object per line).

core.middleware.EdgeMiddleware calls these on every request."""

import logging
import os
import re
import sys
from contextvars import ContextVar, Token
from typing import Any, Literal, TextIO
from urllib.parse import quote

from fastapi.routing import iter_route_contexts
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import Scope

from core import metrics

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
RequestContext = tuple[str, str, str]
_current: ContextVar[RequestContext | None] = ContextVar("request", default=None)


def current_request() -> RequestContext | None:
    """The request being served (a new object for each request), or None outside requests."""
    return _current.get()


def current_request_id() -> str | None:
    current = _current.get()
    return None if current is None else current[0]


def request_id(sent: bytes | None) -> str:
    """The id the caller sent, if it is a valid one, otherwise a new one."""
    if sent is not None and _VALID_REQUEST_ID.fullmatch(sent):
        return sent.decode("ascii")
    return _new_uuid4()


def _new_uuid4() -> str:
    """A random (version 4) UUID in its usual form, at half the cost of str(uuid.uuid4()):
    most requests come without an id, and this runs on each of them."""
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def enter_request(request_id: str, method: str, path: str) -> Token[RequestContext | None]:
    """Make this request the one every log line and error body of the task refers to."""
    return _current.set((request_id, method, path))


def leave_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def finish_request(method: str, route: str, path: str, status: int, seconds: float) -> None:
    """Record the answered request: its metrics, and its access line when that is wanted."""
    metrics.record_request(method, route, status, seconds)
    if access_logger.isEnabledFor(logging.INFO):
        duration_ms = round(seconds * 1000, 2)
        access_logger.info(
            '"%s %s" %d %.2fms',
            method,
            # Quoted as it came: a decoded %0A would otherwise start a forged text line.
            quote(path),
            status,
            duration_ms,
            extra={"status": status, "duration_ms": duration_ms},
        )


class RouteTemplates:
    """The whole path template of the route a request matched: the metrics' route label."""

    def __init__(self) -> None:
        # id of the matched route -> its whole path template, learnt from the application.
        self._templates: dict[int, str] = {}

    def of(self, scope: Scope) -> str:
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
    access log gives way to the one core.middleware.EdgeMiddleware writes, which stays on unless
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
