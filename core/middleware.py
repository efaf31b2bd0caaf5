"""Pure ASGI middleware: request body cap and security headers."""

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.exceptions import NO_STORE, SECURITY_HEADERS, PayloadTooLargeError, error_body


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


# JSON only: an API response rendered as a document (a browser opening a URL) may load and
# frame nothing. The documentation pages send their own policy, which this one does not replace.
API_CSP = "default-src 'none'; frame-ancestors 'none'"

_SECURITY_HEADERS = _raw(SECURITY_HEADERS)
_API_HEADERS = _raw(NO_STORE | {"Content-Security-Policy": API_CSP})


class SecurityHeadersMiddleware:
    """Adds security headers everywhere, and `Cache-Control: no-store` and a deny-all
    Content-Security-Policy on API responses."""

    def __init__(self, app: ASGIApp, api_prefix: str) -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(_SECURITY_HEADERS)
        if scope["path"].startswith(self.api_prefix):
            extra += _API_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in extra if name not in names
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimitMiddleware:
    """Answers 413 when the body, declared or streamed, exceeds the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            exc = PayloadTooLargeError()
            response = JSONResponse(error_body(exc.message, exc.code), status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing; the handler renders it.
                    raise HTTPException(413, PayloadTooLargeError.message)
            return message

        await self.app(scope, limited_receive, send)
