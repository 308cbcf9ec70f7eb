"""One JSON error shape for every failure; validation errors name field and index."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from r3_service.api.schemas import ErrorBody, ErrorDetail, ErrorResponse
from r3_service.engine import (
    OverloadedError,
    RequestTimeoutError,
    RequestTooLargeError,
    WorkerDeadError,
)

logger = logging.getLogger(__name__)

_TYPES = {
    400: "bad_request",
    401: "authentication_error",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    431: "request_header_fields_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout",
}


class APIError(Exception):
    """An error answer: status, message, optional per-field details and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        details: Sequence[ErrorDetail] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = list(details)
        self.headers = headers or {}


def validation_error(field: str, index: int | None, message: str) -> APIError:
    """A 422 for one field (and item index)."""
    where = field if index is None else f"{field}[{index}]"
    return APIError(
        422, f"{where}: {message}", [ErrorDetail(field=field, index=index, message=message)]
    )


def error_response(
    status: int,
    message: str,
    details: Sequence[ErrorDetail] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(type=_TYPES.get(status, "error"), message=message, details=list(details))
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _detail_from_pydantic(error: dict[str, Any]) -> ErrorDetail:
    loc = [part for part in error.get("loc", ()) if part != "body"]
    field = str(loc[0]) if loc else "body"
    index = next((p for p in loc[1:] if isinstance(p, int)), None)
    rest = [str(p) for p in loc[1:] if not isinstance(p, int)]
    # Union branches appear in loc as type names; keep only real sub-fields.
    rest = [p for p in rest if p in {"role", "content"} or (field == "options" and p)]
    name = ".".join([field, *rest[:1]]) if rest else field
    return ErrorDetail(field=name, index=index, message=str(error.get("msg", "invalid")))


def _dedupe(details: list[ErrorDetail]) -> list[ErrorDetail]:
    seen: set[tuple[str, int | None]] = set()
    unique = []
    for detail in details:
        key = (detail.field, detail.index)
        if key not in seen:
            seen.add(key)
            unique.append(detail)
    return unique


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the one error shape; internals never leak."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(
                400, "body is not valid JSON", [ErrorDetail(field="body", message="invalid JSON")]
            )
        details = _dedupe([_detail_from_pydantic(e) for e in errors])
        first = details[0] if details else ErrorDetail(field="body", message="invalid")
        where = first.field if first.index is None else f"{first.field}[{first.index}]"
        return error_response(422, f"{where}: {first.message}", details[:20])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    def count_rejected(request: Request, reason: str) -> None:
        """Tally a refused request in ``r3_rejected_requests_total{reason}``."""
        state = getattr(request.app.state, "r3", None)
        if state is not None:
            state.metrics.rejected.labels(reason).inc()

    @app.exception_handler(OverloadedError)
    async def _overloaded(request: Request, exc: OverloadedError) -> JSONResponse:
        count_rejected(request, exc.reason)
        return error_response(503, str(exc), headers={"Retry-After": retry_after(exc.retry_after)})

    @app.exception_handler(RequestTooLargeError)
    async def _too_large(request: Request, exc: RequestTooLargeError) -> JSONResponse:
        count_rejected(request, "too_large")
        return error_response(413, str(exc))

    @app.exception_handler(RequestTimeoutError)
    async def _timeout(request: Request, exc: RequestTimeoutError) -> JSONResponse:
        count_rejected(request, "deadline")
        return error_response(504, "request timed out: " + str(exc))

    @app.exception_handler(WorkerDeadError)
    async def _dead(request: Request, exc: WorkerDeadError) -> JSONResponse:
        count_rejected(request, "worker_dead")
        return error_response(503, "not ready: " + str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal error")
