"""APIKeyAuth: `Authorization: Bearer KEY` on the API routes when the server has --api-key (or GLMV_API_KEY).

/v1/*, /tokenize and /detokenize need the key; /health, /version, /metrics, /docs and /openapi.json stay open so that
load balancers and Prometheus work without it. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from glmv.server.errors import error_response


def route_path(scope: Scope) -> str:
    """The request path without the --root-path prefix (the app serves both forms)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):] or "/"
    return path


def is_protected(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/") or path in ("/tokenize", "/detokenize")


class APIKeyAuth:
    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...]):
        self.app = app
        self.keys = [k.encode() for k in api_keys]

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip().encode()
                    return any(hmac.compare_digest(given, key) for key in self.keys)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") == "OPTIONS" or not is_protected(route_path(scope))
                or self._authorized(scope)):
            await self.app(scope, receive, send)
            return
        response = error_response(401, "Missing or wrong API key: send 'Authorization: Bearer <key>' (the key the "
                                  "server was started with, --api-key or GLMV_API_KEY).", None, "invalid_api_key",
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
