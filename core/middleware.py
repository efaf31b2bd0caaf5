"""The one pure ASGI middleware every request passes through on its way in and out."""

from collections.abc import Callable, Mapping
from time import perf_counter

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.exceptions import NO_STORE, SECURITY_HEADERS, PayloadTooLargeError, error_body
from core.observability import (
    RouteTemplates,
    enter_request,
    finish_request,
    leave_request,
    request_id,
)

REQUEST_ID_HEADER = b"x-request-id"


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


# JSON only: an API response rendered as a document (a browser opening a URL) may load and
# frame nothing. The documentation pages send their own policy, which this one does not replace.
API_CSP = "default-src 'none'; frame-ancestors 'none'"

_SECURITY_HEADERS = _raw(SECURITY_HEADERS)
_API_HEADERS = _SECURITY_HEADERS + _raw(NO_STORE | {"Content-Security-Policy": API_CSP})
# What CORS says on a request without Origin: the answer differs for one that has one.
_VARY_ORIGIN = (b"vary", b"Origin")


class EdgeMiddleware:
    """Per request: its id (X-Request-ID, the logs, the error bodies), the body cap, CORS, the
    security headers (with `Cache-Control: no-store` and a deny-all Content-Security-Policy on
    API responses), then its metrics and access line.

    One layer instead of four: each layer wrapped `send` (and `receive`) again, a cost paid on
    every request (docs/adr/0004). `cors` wraps the application for the requests that carry an
    Origin header, the only ones CORS answers differently; None when no origin is allowed.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_prefix: str,
        max_bytes: int,
        cors: Callable[[ASGIApp], ASGIApp] | None,
        path_max_bytes: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.api_prefix = api_prefix
        self.max_bytes = max_bytes
        # Paths with a cap of their own instead of `max_bytes` (file uploads).
        self.path_max_bytes = dict(path_max_bytes or {})
        self.cors = cors(app) if cors is not None else None
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent_id = declared = origin = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                sent_id = value if sent_id is None else sent_id
            elif name == b"content-length":
                declared = value
            elif name == b"origin":
                origin = value if origin is None else origin
        method, path = scope["method"], scope["path"]
        max_bytes = self.path_max_bytes.get(path, self.max_bytes)
        rid = request_id(sent_id)
        context = enter_request(rid, method, path)
        extra = list(_API_HEADERS if path.startswith(self.api_prefix) else _SECURITY_HEADERS)
        extra.append((REQUEST_ID_HEADER, rid.encode("ascii")))
        app = self.app
        vary = False
        if self.cors is not None:
            if origin is None:
                vary = True
            else:
                app = self.cors
        status = 500
        started = perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if vary:
                    _add_vary_origin(headers, names)
                # Those a response set itself stay (the documentation pages' own policy; the
                # 500 handler, which Starlette calls outside this middleware, sets them all).
                headers += [(name, value) for name, value in extra if name not in names]
                message["headers"] = headers
            await send(message)

        try:
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                exc = PayloadTooLargeError()
                response = JSONResponse(error_body(exc.message, exc.code), status_code=413)
                await response(scope, receive, send_with_headers)
            else:
                await app(scope, self._limited(receive, max_bytes), send_with_headers)
        finally:
            elapsed = perf_counter() - started
            finish_request(method, self.templates.of(scope), path, status, elapsed)
        # Left set when the app raised: Starlette's 500 handler, which runs outside every
        # middleware, still reads it; each request runs in its own task, so it goes with it.
        leave_request(context)

    def _limited(self, receive: Receive, max_bytes: int) -> Receive:
        """`receive`, raising 413 once the streamed body exceeds `max_bytes`."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # FastAPI re-raises HTTPException from body parsing; the handler renders it.
                    raise HTTPException(413, PayloadTooLargeError.message)
            return message

        return limited_receive


def _add_vary_origin(headers: list[tuple[bytes, bytes]], names: set[bytes]) -> None:
    if b"vary" not in names:
        headers.append(_VARY_ORIGIN)
        return
    values = [value for name, value in headers if name.lower() == b"vary"]
    headers[:] = [(name, value) for name, value in headers if name.lower() != b"vary"]
    headers.append((b"vary", b", ".join([*values, b"Origin"])))
