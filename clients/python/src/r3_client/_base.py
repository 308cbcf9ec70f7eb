"""I/O-free parts shared by the sync and async clients."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ._endpoints import BaseURL, Endpoints, is_gateway_error
from ._exceptions import APIResponseValidationError, InvalidInputError
from ._headers import parse_retry_after
from ._types import Info, Query, RewardOptions
from ._version import __version__

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES: int | None = None
"""No cap on the number of retries by default: the time budget decides."""
DEFAULT_RETRY_TIMEOUT = 60.0
"""Seconds from a request's first attempt during which failures are retried: a caller
rides through a server restart (or an overload) of up to about this long."""
DEFAULT_MAX_CONCURRENCY = 4
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
HEAVY_RETRY_DELAY = 2.0
"""First wait after a 504 or a read timeout: the same heavy request ran out of time, so it
is never sent again at once; the wait doubles (up to ``MAX_HEAVY_RETRY_DELAY``)."""
MAX_HEAVY_RETRY_DELAY = 30.0
RETRY_AFTER_JITTER = 0.1
"""Up to this share is added to a ``Retry-After``, so that many callers told the same
delay do not come back in the same instant."""


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as sent on the wire."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def backoff_delay(attempt: int, heavy: bool = False) -> float:
    """Exponential backoff with jitter for retry number ``attempt`` (0-based).

    ``heavy``: the previous attempt ran out of time (504, read timeout); back off longer.
    """
    if heavy:
        delay = min(HEAVY_RETRY_DELAY * 2.0**attempt, MAX_HEAVY_RETRY_DELAY)
    else:
        delay = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY)
    return delay * (1.0 - 0.25 * random.random())


class RetryBudget:
    """When to retry one request: within ``timeout`` seconds of its first attempt (and at
    most ``max_retries`` times, when given), honouring ``Retry-After``."""

    def __init__(self, timeout: float, max_retries: int | None) -> None:
        self.timeout = timeout
        self.max_retries = max_retries
        self.started = time.monotonic()
        self.retries = 0
        self.heavy = 0
        self.waited = 0.0

    def delay(self, retry_after: float | None = None, heavy: bool = False) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up."""
        if self.max_retries is not None and self.retries >= self.max_retries:
            return None
        if retry_after is not None:
            delay = retry_after * (1.0 + RETRY_AFTER_JITTER * random.random())
        else:
            delay = backoff_delay(self.heavy if heavy else self.retries - self.heavy, heavy)
        # Real time, or the waits alone when sleeping is faked (never less than the waits).
        spent = max(time.monotonic() - self.started, self.waited)
        if spent + delay > self.timeout:
            return None
        self.retries += 1
        self.heavy += heavy
        self.waited += delay
        return delay


def _as_list(name: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidInputError(f"{name} must be a list, got {type(value).__name__}")
    return list(value)


def _message(m: Any) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        raise InvalidInputError(
            f"chat messages must be mappings {{'role', 'content'}}, got {type(m).__name__}"
        )
    return dict(m)


def _query(q: Any) -> str | list[dict[str, Any]]:
    if isinstance(q, str):
        return q
    if isinstance(q, (list, tuple)):
        return [_message(m) for m in q]
    raise InvalidInputError(
        f"a query must be a str or a list of chat messages, got {type(q).__name__}"
    )


@dataclass
class Batch:
    """A batched call: per-item ``columns`` of equal length plus constant fields."""

    path: str
    columns: dict[str, list[Any]]
    const: dict[str, Any]
    n: int

    def payload(self, start: int, end: int) -> dict[str, Any]:
        """The request body for items ``[start, end)``."""
        body: dict[str, Any] = {k: v[start:end] for k, v in self.columns.items()}
        body.update(self.const)
        return body

    def plan(self, max_items: int | None, max_bytes: int | None) -> list[tuple[int, int]]:
        """Split into ``(start, end)`` chunks within the item and body-size limits."""
        if self.n == 0:
            return []
        if max_items is None and max_bytes is None:
            return [(0, self.n)]
        limit_items = max(1, max_items) if max_items is not None else self.n
        if max_bytes is None:
            return [(s, min(s + limit_items, self.n)) for s in range(0, self.n, limit_items)]
        # Exact size: a list item costs its JSON plus one comma.
        budget = max_bytes - len(encode_json(self.payload(0, 0)))
        sizes = [
            sum(len(encode_json(col[i])) + 1 for col in self.columns.values())
            for i in range(self.n)
        ]
        chunks: list[tuple[int, int]] = []
        start, used = 0, 0
        for i, size in enumerate(sizes):
            if i > start and (i - start >= limit_items or used + size > budget):
                chunks.append((start, i))
                start, used = i, 0
            used += size
        chunks.append((start, self.n))
        return chunks


def reward_batch(
    query: Sequence[Query],
    response: Sequence[str],
    reference: Sequence[str | None] | None,
    qtype: Sequence[str | None] | None,
    options: RewardOptions | Mapping[str, Any] | None,
) -> Batch:
    """Validate ``reward()`` arguments and build the batch."""
    q = [_query(x) for x in _as_list("query", query)]
    cols: dict[str, list[Any]] = {"query": q, "response": _as_list("response", response)}
    if reference is not None:
        cols["reference"] = _as_list("reference", reference)
    if qtype is not None:
        cols["qtype"] = _as_list("qtype", qtype)
    _same_len(cols)
    const: dict[str, Any] = {}
    if options is not None:
        if not isinstance(options, Mapping):
            raise InvalidInputError("options must be a mapping")
        const["options"] = dict(options)
    return Batch("/reward", cols, const, len(q))


def relevance_batch(anchor: Sequence[str], text: Sequence[str]) -> Batch:
    """Validate ``relevance()`` arguments and build the batch."""
    cols = {"anchor": _as_list("anchor", anchor), "text": _as_list("text", text)}
    _same_len(cols)
    return Batch("/relevance", cols, {}, len(cols["anchor"]))


def classify_batch(query: Sequence[Query]) -> Batch:
    """Validate ``classify()`` arguments and build the batch."""
    q = [_query(x) for x in _as_list("query", query)]
    return Batch("/classify", {"query": q}, {}, len(q))


def _same_len(cols: Mapping[str, list[Any]]) -> None:
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise InvalidInputError(f"all inputs must have one entry per item ({desc})")


def parse_json(response: httpx.Response) -> Any:
    """Decode a 2xx JSON body."""
    try:
        return response.json()
    except ValueError as e:
        raise APIResponseValidationError(
            f"{response.request.url.path}: response is not valid JSON"
        ) from e


class BaseClient:
    """Configuration, headers, retry policy and limit cache."""

    base_url: str
    api_key: str | None
    timeout: float | httpx.Timeout | None
    max_retries: int | None
    retry_timeout: float
    max_concurrency: int

    def __init__(
        self,
        base_url: BaseURL | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int | None,
        max_concurrency: int,
        max_items_per_request: int | None,
        default_headers: Mapping[str, str] | None,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        if max_retries is not None and max_retries < 0:
            raise InvalidInputError("max_retries must be >= 0")
        if retry_timeout < 0:
            raise InvalidInputError("retry_timeout must be >= 0")
        if max_concurrency < 1:
            raise InvalidInputError("max_concurrency must be >= 1")
        if max_items_per_request is not None and max_items_per_request < 1:
            raise InvalidInputError("max_items_per_request must be >= 1")
        # Several URLs or a Ray Serve handle: see _endpoints.py.
        self._endpoints = Endpoints.parse(
            base_url or os.environ.get("R3_BASE_URL") or DEFAULT_BASE_URL
        )
        self.base_url = self._endpoints.base_url
        self.endpoints = self._endpoints.pool
        key = api_key if api_key is not None else os.environ.get("R3_API_KEY")
        self.api_key = key or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_timeout = retry_timeout
        self.max_concurrency = max_concurrency
        self._max_items_override = max_items_per_request
        self._extra_headers = dict(default_headers or {})
        self._info: Info | None = None
        self._limits_loaded = max_items_per_request is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"r3-client/{__version__}", "Accept": "application/json"}
        headers.update(self._extra_headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _retry_budget(self) -> RetryBudget:
        return RetryBudget(self.retry_timeout, self.max_retries)

    def _limits(self) -> tuple[int | None, int | None]:
        if self._max_items_override is not None:
            return self._max_items_override, None
        if self._info is None:
            return None, None
        lim = self._info.limits
        return lim.max_items_per_request, lim.max_body_bytes

    def _empty_model(self) -> str:
        return self._info.model if self._info is not None else ""


def response_retry_delay(budget: RetryBudget, response: httpx.Response) -> float | None:
    """Seconds to wait before retrying after ``response``, or ``None`` to raise it.

    Retried: 408, 429, 502, 503, 504, and a proxy's plain 500 (``is_gateway_error``).
    """
    if response.status_code not in RETRYABLE_STATUS and not is_gateway_error(response):
        return None
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return budget.delay(retry_after, heavy=response.status_code == 504)


def error_retry_delay(budget: RetryBudget, exc: httpx.TransportError) -> float | None:
    """Seconds to wait before retrying after a network failure, or ``None`` to raise it."""
    if not is_retryable_transport_error(exc):
        return None
    return budget.delay(heavy=isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout)))


def is_retryable_transport_error(exc: httpx.TransportError) -> bool:
    """Network failures worth retrying (not config errors like a bad URL scheme)."""
    return isinstance(
        exc,
        (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError),
    )
