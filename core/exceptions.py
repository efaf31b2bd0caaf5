"""Application errors and the handlers that render every error as
`{"detail", "code", "request_id"}`."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.metrics import record_error
from core.observability import current_request_id

logger = logging.getLogger(__name__)

# PostgreSQL SQLSTATE codes the handlers translate.
UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
CHECK_VIOLATION = "23514"
QUERY_CANCELED = "57014"

# Set on every response by core.middleware, and by the 500 handler itself: Starlette renders
# unexpected errors in ServerErrorMiddleware, outside every middleware the app adds.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
NO_STORE = {"Cache-Control": "no-store"}

# Failures to reach the database that are no DBAPIError: the pool's own checkout timeout, and
# socket errors or timeouts should one ever escape the driver unwrapped. Every driver error,
# including those raised while connecting (core.db), arrives as a DBAPIError with its SQLSTATE.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OSError, TimeoutError, PoolTimeoutError)
DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, *CONNECTION_ERRORS)


class AppError(Exception):
    """An expected failure with a human message, an HTTP status and a stable code.

    Raise a fresh one each time, from a subclass per error: an instance kept at module level
    accumulates the frames of every raise in its traceback (and the values they hold).
    """

    status_code = 400
    code = "bad_request"
    message = "Bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.headers = headers
        super().__init__(self.message)

    @property
    def detail(self) -> str | list[dict[str, Any]]:
        return self.message


class BadRequestError(AppError):
    pass


class AuthError(AppError):
    status_code = 401
    code = "not_authenticated"
    message = "Not authenticated"

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class PermissionDeniedError(AppError):
    status_code = 403
    code = "forbidden"
    message = "You do not have permission to perform this action"


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"
    message = "Resource not found"


class ConflictError(AppError):
    status_code = 409
    code = "conflict"
    message = "The request conflicts with the current state of the resource"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "payload_too_large"
    message = "Request body is too large"


class TooManyAttemptsError(AppError):
    status_code = 429
    code = "too_many_attempts"
    message = "Too many failed attempts, try again later"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(headers={"Retry-After": str(retry_after_seconds)})


class InvalidFieldError(AppError):
    """A 422 for a value the schema accepts but a rule refuses (an owner that does not exist, a
    weak password): rendered like a schema failure, with one item whose `type` is the rule's
    code. A subclass per rule sets `code` and `message`; the raise names the field.
    """

    status_code = 422
    code = "validation_error"
    message = "Invalid value"

    def __init__(self, *loc: str | int, message: str | None = None) -> None:
        super().__init__(message)
        self.loc = loc

    @property
    def detail(self) -> list[dict[str, Any]]:
        return [{"type": self.code, "loc": list(self.loc), "msg": self.message}]


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"
    message = "The database is unavailable, try again shortly"


# Codes used for statuses Starlette raises itself (unknown route, wrong method).
_HTTP_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(detail: str | list[dict[str, Any]], code: str) -> dict[str, Any]:
    """The one error body; every error response is built here, so it is counted here too."""
    record_error(code)
    return {"detail": detail, "code": code, "request_id": current_request_id()}


def sqlstate(exc: DBAPIError) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy error (None: no answer from the server)."""
    # `pgcode`: psycopg's attribute, which SQLAlchemy's asyncpg adapter (and core.db's connect
    # hook) set on the DBAPI error too.
    state: Any = getattr(exc.orig, "pgcode", None)
    return str(state) if state else None


def _render(exc: AppError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.detail, exc.code),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def app_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return _render(exc)


def _allowed_methods(request: Request) -> str:
    """Every method some route accepts on this path.

    The 405 names only the methods of the first route matching the path, while a path often
    has one route per method (GET and POST on a collection).
    """
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        path_regex = getattr(route, "path_regex", None)
        if route.methods and path_regex is not None and path_regex.match(path):
            methods.update(route.methods)
    return ", ".join(sorted(methods))


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        exc = StarletteHTTPException(405, exc.detail, {"Allow": _allowed_methods(request)})
    if exc.status_code == 400 and isinstance(exc.__cause__, (UnicodeDecodeError, RecursionError)):
        # FastAPI answers malformed JSON with 422 json_invalid, but a body that is not even UTF-8,
        # or nested deeper than the parser recurses, with a bare 400 no operation declares: all
        # are the same client error.
        invalid = RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}]
        )
        return await validation_error_handler(request, invalid)
    code = _HTTP_STATUS_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else "Error"
    return JSONResponse(error_body(detail, code), status_code=exc.status_code, headers=exc.headers)


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        # Input echoes can hold bytes or exotic values; keep the body plain JSON.
        clean = {k: v for k, v in err.items() if k in ("type", "loc", "msg")}
        ctx = err.get("ctx")
        if ctx:
            clean["ctx"] = {k: str(v) for k, v in ctx.items()}
        errors.append(clean)
    return JSONResponse(error_body(errors, "validation_error"), status_code=422)


async def database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    state = sqlstate(exc)
    if isinstance(exc, IntegrityError):
        if state == UNIQUE_VIOLATION:
            return _render(ConflictError("A record with these values already exists"))
        if state == FOREIGN_KEY_VIOLATION:
            return _render(ConflictError("A referenced record does not exist or is still in use"))
        if state == CHECK_VIOLATION:
            return _render(ConflictError("A value is outside its allowed range"))
    if state is not None and state.startswith("40"):
        # Deadlock or serialization failure: a concurrent request won, this one may be retried.
        logger.warning(
            "Transaction rolled back (%s) on %s %s", state, request.method, request.url.path
        )
        return _render(ConflictError("The request conflicted with a concurrent change, retry it"))
    if exc.connection_invalidated or state is None:
        logger.warning("Database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return _render(ServiceUnavailableError())
    return await _server_state_error(request, exc, state)


async def _server_state_error(request: Request, exc: Exception, state: str) -> JSONResponse:
    if state == QUERY_CANCELED:
        logger.warning("Statement timeout on %s %s", request.method, request.url.path)
        return _render(ServiceUnavailableError("The request took too long and was cancelled"))
    # Class 08 is a connection failure, 28 a refused login, 3D a missing database, 53 a lack
    # of resources (too many connections), 55 a database not accepting connections, 57P0x a
    # shutdown or a server still starting up.
    if state[:2] in ("08", "28", "3D", "53", "55") or state[:3] == "57P":
        logger.warning("Database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return _render(ServiceUnavailableError())
    # Anything else is a bug (say, a column a migration renamed): a 500 with its traceback.
    return await unexpected_error_handler(request, exc)


async def connection_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("Database unreachable on %s %s: %r", request.method, request.url.path, exc)
    return _render(ServiceUnavailableError())


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = error_body("Internal server error", "internal_error")
    # Starlette sends this response outside every middleware: it carries its own headers.
    headers = SECURITY_HEADERS | NO_STORE
    if body["request_id"] is not None:
        headers = headers | {"X-Request-ID": body["request_id"]}
    return JSONResponse(body, status_code=500, headers=headers)


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(DBAPIError, database_error_handler)
    for error in CONNECTION_ERRORS:
        app.add_exception_handler(error, connection_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
