"""One place that maps exceptions a user can cause to OpenAI-format error responses and status codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from glmv.engine.client import EngineOverloadedError, PromptTooLongError
from glmv.inputs.processor import InvalidInputError

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


class APIError(Exception):
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


def to_api_error(exc: Exception) -> APIError:
    """Map any exception to an APIError; unknown ones become 500 (and are logged with a traceback)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidInputError):
        return APIError(exc.status, str(exc), exc.param, exc.code)
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), "messages", "context_length_exceeded")
    if isinstance(exc, EngineOverloadedError):
        return APIError(503, str(exc) or "The server is overloaded; retry shortly.", headers={"Retry-After": "1"})
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    log.exception("internal error", exc_info=exc)
    return APIError(500, f"Internal error: {type(exc).__name__}. See the server log.")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, "The request body is not valid JSON.", None, "invalid_json")
        msg = f"{loc}: {first.get('msg', 'invalid value')}" if loc else str(first.get("msg", "invalid request"))
        return error_response(400, msg, loc or None, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unknown(_: Request, exc: Exception):
        err = to_api_error(exc)
        return error_response(err.status, err.message, err.param, err.code, err.headers)
