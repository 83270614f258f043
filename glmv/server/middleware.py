"""ASGI middlewares that run before any route: body size and content type guards, and status-code counting.

Written as plain ASGI (not Starlette's BaseHTTPMiddleware) so that streaming responses and disconnects pass through
untouched.
"""

from __future__ import annotations

import email.message

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmv.server.auth import route_path
from glmv.server.errors import error_response
from glmv.server.metrics import ServerMetrics

_BODY_METHODS = ("POST", "PUT", "PATCH")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def is_json_content_type(value: str) -> bool:
    msg = email.message.Message()
    msg["content-type"] = value
    if msg.get_content_maintype() != "application":
        return False
    sub = msg.get_content_subtype()
    return sub == "json" or sub.endswith("+json")


class RequestBodyGuard:
    """Refuses bodies larger than `max_bytes` with 413 before anything parses them, and non-JSON bodies with 415.

    The body is read here, counted as it arrives (a lying or missing Content-Length cannot get past the limit), and
    handed to the app in one piece. A request without a Content-Type is read as JSON.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        content_type = _header(scope, b"content-type")
        if not content_type:  # no Content-Type: read the body as JSON (FastAPI would refuse it as a string)
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        elif not is_json_content_type(content_type):
            await error_response(415, f"Unsupported Content-Type '{content_type}': send the body as JSON with "
                                 "'Content-Type: application/json'.", None, "unsupported_media_type")(
                scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, size)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        mib = self.max_bytes / (1 << 20)
        response = error_response(413, f"The request body ({size} bytes so far) is larger than this server's limit of "
                                  f"{self.max_bytes} bytes ({mib:.1f} MiB; --max-request-bytes). Send media by URL "
                                  "or smaller.", None, "request_too_large", headers={"Connection": "close"})
        await response(scope, receive, send)


class ResponseCounter:
    """Counts every HTTP response by method, route template and status code (glmv_http_responses_total)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, known_paths: frozenset[str] = frozenset()):
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths  # route label for responses sent before routing (401, 413, 415)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            status = status or 500  # answered by the outermost error handler, after this middleware
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template is None:
                path = route_path(scope)
                template = path if path in self.known_paths else "other"
            if status == 0:
                status = 499  # the client left before any response started
            self.metrics.http_responses.labels(method=scope.get("method", ""), route=template,
                                               status=str(status)).inc()
