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
    WorkerStalledError,
)

logger = logging.getLogger(__name__)

#: The error ``type`` of a 503 from a replica that is healthy but full (queue, deadline).
OVERLOADED = "overloaded"

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
    detail = ErrorDetail(field=field, index=index, message=message)
    return APIError(422, f"{where(detail)}: {message}", [detail])


def _not_json(reason: str, error: dict[str, Any] | None = None) -> JSONResponse:
    """400 for a body that is not JSON (or not UTF-8), with where it broke."""
    loc = (error or {}).get("loc", ())
    where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
    message = f"body is not valid JSON: {reason}{where}; send UTF-8 JSON"
    return error_response(400, message, [ErrorDetail(field="body", message=message)])


def error_response(
    status: int,
    message: str,
    details: Sequence[ErrorDetail] = (),
    headers: dict[str, str] | None = None,
    kind: str | None = None,
) -> JSONResponse:
    """The service's error envelope; ``kind`` (the ``type``) defaults to the status's."""
    body = ErrorResponse(
        error=ErrorBody(
            type=kind or _TYPES.get(status, "error"), message=message, details=list(details)
        )
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


#: How a query is written, for messages about a malformed one.
QUERY_FORMS = 'a string, or a list of chat messages {"role": "user", "content": "..."}'


#: Where FastAPI says a value came from: the first element of a validation error's ``loc``.
_SOURCES = ("body", "query", "path", "header", "cookie")


def _detail_from_pydantic(error: dict[str, Any]) -> ErrorDetail:
    loc = list(error.get("loc", ()))
    if len(loc) > 1 and loc[0] in _SOURCES:  # ("query", "extra_logs") is extra_logs
        loc = loc[1:]
    field = str(loc[0]) if loc else "body"
    index = next((p for p in loc[1:] if isinstance(p, int)), None)
    rest = [str(p) for p in loc[1:] if not isinstance(p, int)]
    # Union branches appear in loc as type names; keep only real sub-fields.
    rest = [p for p in rest if p in {"role", "content"} or (field == "options" and p)]
    name = ".".join([field, *rest[:1]]) if rest else field
    message = str(error.get("msg", "invalid"))
    if "list[ChatMessage]" in loc:
        message = _chat_message_error(loc, error, message)
    elif field == "query" and index is not None and "str" in loc:
        message = f"expected {QUERY_FORMS}"
    elif error.get("type") == "extra_forbidden":
        message += _known_fields(field)
    return ErrorDetail(field=name, index=index, message=message)


def _chat_message_error(loc: list[Any], error: dict[str, Any], message: str) -> str:
    """Say which message of a conversation is wrong and what a message looks like."""
    after = loc[loc.index("list[ChatMessage]") + 1 :]
    turn = next((p for p in after if isinstance(p, int)), None)
    if turn is None:
        return f"expected {QUERY_FORMS}"
    key = next((p for p in after if isinstance(p, str)), None)
    if error.get("type") == "missing" and key:
        what = f"has no '{key}'"
    elif key:
        what = f"'{key}': {message}"
    else:
        what = "is not an object"
    return f'message {turn} {what}; a chat message is {{"role": "user", "content": "..."}}'


def _known_fields(field: str) -> str:
    if field == "options":
        from r3_service.api.schemas import RewardOptionsModel

        return f"; options are {sorted(RewardOptionsModel.model_fields)}"
    return "; this route's fields are listed at /docs"


def where(detail: ErrorDetail) -> str:
    """The one spelling of a field and index, in messages and docs alike.

    ``index`` is the position in the list the field names: for the item columns that is
    the item (``query[0]``, ``query[0].role``, ``labels[3].qtype``); for an option's list,
    the element (``options.stop_strings[0]``).
    """
    if detail.index is None:
        return detail.field
    if detail.field.startswith("options."):
        return f"{detail.field}[{detail.index}]"
    base, _, sub = detail.field.partition(".")
    return f"{base}[{detail.index}]" + (f".{sub}" if sub else "")


def _dedupe(details: list[ErrorDetail]) -> list[ErrorDetail]:
    seen: set[tuple[str, int | None]] = set()
    unique = []
    for detail in details:
        key = (detail.field, detail.index)
        if key not in seen:
            seen.add(key)
            unique.append(detail)
    return unique


def _prefer_specific(details: list[ErrorDetail]) -> list[ErrorDetail]:
    """For a query that failed as both a string and a conversation, keep the conversation's
    errors when there are any (the client meant a conversation)."""
    specific = {
        (d.field.split(".")[0], d.index) for d in details if d.message.startswith("message ")
    }
    return [
        d
        for d in details
        if d.message.startswith("message ") or (d.field.split(".")[0], d.index) not in specific
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the one error shape; internals never leak."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            bad = next(e for e in errors if e.get("type") == "json_invalid")
            return _not_json(str((bad.get("ctx") or {}).get("error", "invalid JSON")), bad)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not media.endswith("json") and any(len(e.get("loc", ())) <= 1 for e in errors):
            got = f"'{media}'" if media else "none"
            message = (
                f"body: expected JSON with the header 'Content-Type: application/json' "
                f"(got content-type {got})"
            )
            return error_response(415, message, [ErrorDetail(field="body", message=message)])
        details = _prefer_specific(_dedupe([_detail_from_pydantic(e) for e in errors]))
        first = details[0] if details else ErrorDetail(field="body", message="invalid")
        return error_response(422, f"{where(first)}: {first.message}", details[:20])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            try:
                (await request.body()).decode("utf-8")
            except UnicodeDecodeError as err:
                return _not_json(
                    f"not UTF-8 (byte {err.object[err.start]:#04x} at offset {err.start})"
                )
            return _not_json("could not be parsed")
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    def count_rejected(request: Request, reason: str) -> None:
        """Tally a refused request in ``r3_rejected_requests_total{reason}``."""
        state = getattr(request.app.state, "r3", None)
        if state is not None:
            state.metrics.rejected.labels(reason).inc()

    @app.exception_handler(OverloadedError)
    async def _overloaded(request: Request, exc: OverloadedError) -> JSONResponse:
        count_rejected(request, exc.reason)
        # A full queue or an unreachable deadline: healthy, only busy (type "overloaded",
        # so a client pool tries another replica without ejecting this one). A stalled
        # worker is not healthy.
        kind = None if isinstance(exc, WorkerStalledError) else OVERLOADED
        headers = {"Retry-After": retry_after(exc.retry_after)}
        return error_response(503, str(exc), headers=headers, kind=kind)

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
