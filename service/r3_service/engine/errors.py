"""Why the engine refuses or gives up on a request (the HTTP layer maps each to a status)."""

from __future__ import annotations


class OverloadedError(Exception):
    """Refused now, retryable: ``retry_after`` seconds is when it would likely be taken (503)."""

    reason = "overloaded"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFullError(OverloadedError):
    """The queue cannot hold a request's texts now."""

    reason = "queue_full"


class DeadlineUnreachableError(OverloadedError):
    """The queued work ahead means the request could not finish before its deadline."""

    reason = "deadline"


class WorkerStalledError(OverloadedError):
    """The running batch has run past the hung-batch limit."""

    reason = "stalled"


class RequestTooLargeError(Exception):
    """The request can never be served under the current limits; retrying cannot help (413).

    ``limit`` names the setting that refuses it (e.g. ``R3_MAX_QUEUE_TEXTS``).
    """

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class RequestTimeoutError(Exception):
    """The request's deadline passed, or will pass before its texts can run (504)."""


class WorkerDeadError(RuntimeError):
    """The inference worker thread is not running."""
