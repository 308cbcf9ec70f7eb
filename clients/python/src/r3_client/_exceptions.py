"""Exception hierarchy; every error raised by the client subclasses :class:`R3Error`."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "InternalServerError",
    "InvalidInputError",
    "NotFoundError",
    "PermissionDeniedError",
    "R3Error",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
]


class R3Error(Exception):
    """Base class of all client errors."""

    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(R3Error, ValueError, TypeError):
    """Arguments rejected locally, before any request (wrong type, unequal lengths, bad setting).

    Also a ``ValueError`` and a ``TypeError``, so code written against those still catches it.
    """


class APIError(R3Error):
    """The server answered with a non-2xx status.

    ``body`` is the parsed JSON error body (``{"error": {...}}``) or the raw text
    when the body is not JSON. ``type`` and ``details`` are taken from ``body["error"]``.
    """

    status_code: int
    body: Any
    type: str | None
    details: list[dict[str, Any]]
    retry_after: float | None
    request_id: str | None
    response: httpx.Response

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: Any,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code
        self.body = body
        self.retry_after = retry_after
        self.request_id = response.headers.get("x-request-id")
        err = body.get("error") if isinstance(body, dict) else None
        self.type = None
        self.details = []
        if isinstance(err, dict):
            etype = err.get("type")
            self.type = etype if isinstance(etype, str) else None
            details = err.get("details")
            if isinstance(details, list):
                self.details = [d for d in details if isinstance(d, dict)]

    def __str__(self) -> str:
        kind = f" {self.type}" if self.type else ""
        return f"HTTP {self.status_code}{kind}: {self.message}"


class BadRequestError(APIError):
    """HTTP 400."""


class UnprocessableEntityError(BadRequestError):
    """HTTP 422: the request failed validation."""


class UnsupportedMediaTypeError(BadRequestError):
    """HTTP 415: the body was not sent as ``application/json``."""


class AuthenticationError(APIError):
    """HTTP 401."""


class PermissionDeniedError(APIError):
    """HTTP 403."""


class NotFoundError(APIError):
    """HTTP 404."""


class RequestTooLargeError(APIError):
    """HTTP 413: body, item count or text length exceeds the server limits."""


class RateLimitError(APIError):
    """HTTP 429."""


class InternalServerError(APIError):
    """HTTP status >= 500."""


class ServiceUnavailableError(InternalServerError):
    """HTTP 503: the server is not ready or is overloaded."""


class APIConnectionError(R3Error):
    """The request could not be sent or no response was received."""

    request: httpx.Request | None

    def __init__(
        self, message: str = "Connection error.", *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(message)
        self.request = request


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(
        self, message: str = "Request timed out.", *, request: httpx.Request | None = None
    ) -> None:
        super().__init__(message, request=request)


class APIResponseValidationError(R3Error):
    """A 2xx response did not match the expected schema."""


_STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def make_status_error(response: httpx.Response, retry_after: float | None = None) -> APIError:
    """Build the exception matching ``response.status_code``."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    message = ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    elif isinstance(body, str):
        message = body.strip()[:500]
    if not message:
        message = response.reason_phrase or "error"
    status = response.status_code
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIError
    return cls(message, response=response, body=body, retry_after=retry_after)
