"""One exception tree for everything a client can see, rendered as OpenAI-style JSON errors.

Every error has a stable ``code`` that clients may branch on and a message written for the
caller. Internal details (stack traces, file paths, upstream bodies) never reach a response:
anything that is not an ``ApiError`` becomes a generic ``internal_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of every error a client can receive. Subclasses fix status, type and default code."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "The server could not complete the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.code = code or self.default_code
        self.param = param
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


class InvalidRequest(ApiError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"
    default_message = "The request is not valid."


class AuthenticationFailed(ApiError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_token"
    default_message = "Authentication failed."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": 'Bearer realm="warden"'})


class PermissionDenied(ApiError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"
    default_message = "You are not allowed to perform this request."


class NotFound(ApiError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"
    default_message = "The requested resource does not exist."


class MethodNotAllowed(ApiError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"
    default_message = "This method is not allowed on this route."


class PayloadTooLarge(ApiError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"
    default_message = "The request body is too large."


class RateLimited(ApiError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"
    default_message = "Too many requests; retry later."


class ServiceUnavailable(ApiError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
    default_message = "The service is temporarily unavailable."


class UpstreamError(ApiError):
    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"
    default_message = "The inference worker failed to answer."


_HTTP_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_body(message: str, error_type: str, code: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope: ``{"error": {"message", "type", "code", "param"}}``."""
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


async def _api_error_handler(_request: Request, exc: Exception) -> Response:
    error = exc if isinstance(exc, ApiError) else ApiError()
    return error.to_response()


async def _http_exception_handler(_request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    response = _HTTP_ERRORS.get(status, ApiError)().to_response()
    response.status_code = status
    return response


class UnexpectedErrorMiddleware:
    """Turns any exception that escapes the app into a generic 500, without a traceback anywhere.

    Starlette's own handler for ``Exception`` re-raises after responding, so the server would log
    a traceback whose message may carry request data; this middleware logs the type only.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:  # noqa: BLE001 - this is the boundary that must catch everything
            logger.error("unhandled error", extra={"error_type": type(exc).__name__})
            if not started:
                response = ApiError().to_response()
                await response(scope, receive, send)


def install_error_handlers(app: Starlette) -> None:
    """Map every exception an app can raise onto the error envelope."""
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(HTTPException, _http_exception_handler)
    app.add_middleware(UnexpectedErrorMiddleware)
