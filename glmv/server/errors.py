"""One place that maps exceptions a user can cause to OpenAI-format error responses and status codes.

Every error leaves the server as {"error": {"message", "type", "param", "code"}}. Bad input is always a 4xx with a
message that says what to change; only our own bugs become a 500 (logged with a traceback).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glmv.engine.client import EngineOverloadedError, PromptTooLongError, ReplicaFailedError
from glmv.inputs.processor import InvalidInputError
from glmv.server.protocol import ErrorResponse

log = logging.getLogger("glmv.server")

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "TimeoutError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
# For /openapi.json: the error statuses a generation route may answer, all in OpenAI's error shape.
OPENAPI_ERRORS: dict = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 503)}
# Seconds a client should wait before retrying an overloaded server.
RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error with its HTTP status; raised anywhere in a route, rendered by the handlers below."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "Error"), "param": param,
                      "code": code if code is not None else status}}


def error_response(status: int, message: str, param: str | None = None, code: str | int | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def overloaded_error(message: str | None = None) -> APIError:
    return APIError(503, message or "The server is overloaded; retry shortly.", None, "overloaded",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def to_api_error(exc: Exception) -> APIError:
    """Map any exception to an APIError; unknown ones become 500 (and are logged with a traceback)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidInputError):
        return APIError(exc.status, str(exc), exc.param, exc.code)
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), "messages", "context_length_exceeded")
    if isinstance(exc, ReplicaFailedError):
        return APIError(503, str(exc), None, "replica_failed", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, EngineOverloadedError):
        return overloaded_error(str(exc) or None)
    if isinstance(exc, ValueError):
        return APIError(400, str(exc), None, "invalid_request")
    log.error("internal error", exc_info=exc)
    return APIError(500, f"Internal error: {type(exc).__name__}. See the server log.")


def _clean_loc(loc: tuple) -> str:
    """`("body", "messages", 0, "content", "list[...]", 0, "image_url")` -> `messages.0.content.0.image_url`.

    Pydantic puts union-branch names into locations; they mean nothing to a client.
    """
    skip = {"body", "str", "int", "float", "bool", "list", "dict", "none"}
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in skip or "[" in p))]
    return ".".join(parts)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """The most specific (deepest) validation error as (message, param)."""
    if not errors:
        return "Invalid request.", None
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    loc = _clean_loc(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    return (f"{loc}: {msg}" if loc else msg), (loc or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "The request body is not valid JSON.", None, "invalid_json")
        message, param = validation_message(errors)
        return error_response(400, message, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "No such route. The API lives under /v1 (see /docs or /openapi.json)."
        elif exc.status_code == 405:
            message = "Method not allowed on this route (see /docs or /openapi.json)."
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    async def _mapped(_: Request, exc: Exception):
        err = to_api_error(exc)
        return error_response(err.status, err.message, err.param, err.code, err.headers)

    # Errors a user can cause are handled here, quietly. Starlette re-raises whatever reaches the catch-all
    # `Exception` handler (after sending its 500) so that the server logs it: that is for our bugs only.
    for user_error in (InvalidInputError, PromptTooLongError, EngineOverloadedError, ValueError):
        app.add_exception_handler(user_error, _mapped)
    app.add_exception_handler(Exception, _mapped)
