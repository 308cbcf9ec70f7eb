"""Synchronous and asynchronous clients."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ._base import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_TIMEOUT,
    BaseClient,
    Batch,
    classify_batch,
    encode_json,
    error_retry_delay,
    parse_json,
    parse_retry_after,
    relevance_batch,
    response_retry_delay,
    reward_batch,
)
from ._endpoints import BaseURL
from ._exceptions import (
    APIConnectionError,
    APITimeoutError,
    NotFoundError,
    make_status_error,
)
from ._types import (
    ClassifyResult,
    Info,
    Query,
    RelevanceResult,
    RewardOptions,
    RewardResult,
)

__all__ = ["AsyncClient", "Client"]

_R = TypeVar("_R", RewardResult, RelevanceResult, ClassifyResult)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


def _transport_error(exc: httpx.TransportError) -> APIConnectionError:
    request = None
    with contextlib.suppress(RuntimeError):  # .request is unset on some errors
        request = exc.request
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"Request timed out: {exc}", request=request)
    return APIConnectionError(f"Connection error: {exc}", request=request)


class Client(BaseClient):
    """Blocking client for the R^3 reward service.

    ``base_url`` and ``api_key`` default to the ``R3_BASE_URL`` and ``R3_API_KEY``
    environment variables (base URL fallback ``http://127.0.0.1:8000``). Large
    batches are split by the server limits from ``/v1/info`` and sent on up to
    ``max_concurrency`` threads; results keep the input order.

    Failures worth retrying (connection errors, 408, 429, 502, 503, 504) are retried for
    up to ``retry_timeout`` seconds from a request's first attempt (default 60 s: a
    server restart of 30 s or more goes unnoticed), and at most ``max_retries`` times
    when given. A ``Retry-After`` is honoured (a little jitter added); otherwise the
    wait grows exponentially with jitter, and starts longer after a 504 or a read
    timeout, so the same heavy request is never resent at once.
    """

    def __init__(
        self,
        base_url: BaseURL | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int | None = DEFAULT_MAX_RETRIES,
        *,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_items_per_request: int | None = None,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout,
            max_retries,
            max_concurrency,
            max_items_per_request,
            default_headers,
            retry_timeout,
        )
        self._owns_http = http_client is None
        if http_client is not None and self._endpoints.custom:
            raise ValueError("give either several base URLs / a Serve handle or http_client")
        self._http = http_client or httpx.Client(
            timeout=timeout,
            **self._endpoints.httpx_options(httpx.Limits(max_connections=max(10, max_concurrency))),
        )
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HTTP connections (unless ``http_client`` was given)."""
        if self._owns_http:
            self._http.close()

    # -- transport -------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        content = None if body is None else encode_json(body)
        headers = self._headers()
        if content is not None:
            headers["Content-Type"] = "application/json"
        budget = self._retry_budget()
        while True:
            try:
                response = self._http.request(
                    method, self._url(path), content=content, headers=headers, timeout=self.timeout
                )
            except httpx.TransportError as e:
                delay = error_retry_delay(budget, e)
                if delay is None:
                    raise _transport_error(e) from e
            else:
                if response.is_success:
                    return parse_json(response)
                delay = response_retry_delay(budget, response)
                if delay is None:
                    raise make_status_error(response, _retry_after(response))
            _sleep(delay)

    def _probe(self, path: str) -> bool:
        try:
            response = self._http.get(
                self._url(path), headers=self._headers(), timeout=self.timeout
            )
        except httpx.RequestError:
            return False
        return response.is_success

    def _ensure_limits(self) -> None:
        if self._limits_loaded:
            return
        with self._lock:
            if self._limits_loaded:
                return
            with contextlib.suppress(NotFoundError):  # no /v1/info: send unsplit
                self.info()
            self._limits_loaded = True

    def _run(self, batch: Batch, parse: Callable[[Any, int], _R], concat: Callable[..., _R]) -> _R:
        self._ensure_limits()
        chunks = batch.plan(*self._limits())
        if not chunks:
            return concat([], self._empty_model())

        def send(span: tuple[int, int]) -> _R:
            start, end = span
            return parse(self._request("POST", batch.path, batch.payload(start, end)), end - start)

        if len(chunks) == 1:
            return send(chunks[0])
        workers = min(self.max_concurrency, len(chunks))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="r3-client") as pool:
            futures = [pool.submit(send, span) for span in chunks]
            try:
                parts = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return concat(parts)

    # -- API -------------------------------------------------------------

    def reward(
        self,
        *,
        query: Sequence[Query],
        response: Sequence[str],
        reference: Sequence[str | None] | None = None,
        qtype: Sequence[str | None] | None = None,
        options: RewardOptions | Mapping[str, Any] | None = None,
    ) -> RewardResult:
        """Score ``response[i]`` against ``query[i]`` (``POST /reward``)."""
        batch = reward_batch(query, response, reference, qtype, options)
        return self._run(batch, RewardResult.from_json, RewardResult.concat)

    def relevance(self, *, anchor: Sequence[str], text: Sequence[str]) -> RelevanceResult:
        """Relevance of ``text[i]`` to ``anchor[i]`` (``POST /relevance``)."""
        batch = relevance_batch(anchor, text)
        return self._run(batch, RelevanceResult.from_json, RelevanceResult.concat)

    def classify(self, *, query: Sequence[Query]) -> ClassifyResult:
        """Classify queries as OPENENDED or CONSTRAINED (``POST /classify``)."""
        batch = classify_batch(query)
        return self._run(batch, ClassifyResult.from_json, ClassifyResult.concat)

    def info(self) -> Info:
        """Model, profile and limits (``GET /v1/info``); refreshes the cached limits."""
        info = Info.from_json(self._request("GET", "/v1/info"))
        self._info = info
        return info

    def health(self) -> bool:
        """``True`` if ``GET /healthz`` answers 2xx; no retries."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """``True`` if ``GET /readyz`` answers 2xx; no retries."""
        return self._probe("/readyz")

    def wait_until_ready(self, timeout: float = 120.0, interval: float = 1.0) -> None:
        """Poll ``/readyz`` until ready; raise :class:`APITimeoutError` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline:
                raise APITimeoutError(f"{self.base_url} not ready after {timeout:g} s")
            _sleep(interval)


class AsyncClient(BaseClient):
    """Asyncio client for the R^3 reward service; same API as :class:`Client`.

    Chunks of a large batch are sent concurrently with ``asyncio.gather``,
    at most ``max_concurrency`` at a time.
    """

    def __init__(
        self,
        base_url: BaseURL | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int | None = DEFAULT_MAX_RETRIES,
        *,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_items_per_request: int | None = None,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout,
            max_retries,
            max_concurrency,
            max_items_per_request,
            default_headers,
            retry_timeout,
        )
        self._owns_http = http_client is None
        if http_client is not None and self._endpoints.custom:
            raise ValueError("give either several base URLs / a Serve handle or http_client")
        limits = httpx.Limits(max_connections=max(10, max_concurrency))
        self._http = http_client or httpx.AsyncClient(
            timeout=timeout, **self._endpoints.async_httpx_options(limits)
        )
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the underlying HTTP connections (unless ``http_client`` was given)."""
        if self._owns_http:
            await self._http.aclose()

    # -- transport -------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        content = None if body is None else encode_json(body)
        headers = self._headers()
        if content is not None:
            headers["Content-Type"] = "application/json"
        budget = self._retry_budget()
        while True:
            try:
                response = await self._http.request(
                    method, self._url(path), content=content, headers=headers, timeout=self.timeout
                )
            except httpx.TransportError as e:
                delay = error_retry_delay(budget, e)
                if delay is None:
                    raise _transport_error(e) from e
            else:
                if response.is_success:
                    return parse_json(response)
                delay = response_retry_delay(budget, response)
                if delay is None:
                    raise make_status_error(response, _retry_after(response))
            await _async_sleep(delay)

    async def _probe(self, path: str) -> bool:
        try:
            response = await self._http.get(
                self._url(path), headers=self._headers(), timeout=self.timeout
            )
        except httpx.RequestError:
            return False
        return response.is_success

    async def _ensure_limits(self) -> None:
        if self._limits_loaded:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._limits_loaded:
                return
            with contextlib.suppress(NotFoundError):  # no /v1/info: send unsplit
                await self.info()
            self._limits_loaded = True

    async def _run(
        self, batch: Batch, parse: Callable[[Any, int], _R], concat: Callable[..., _R]
    ) -> _R:
        await self._ensure_limits()
        chunks = batch.plan(*self._limits())
        if not chunks:
            return concat([], self._empty_model())
        sem = asyncio.Semaphore(self.max_concurrency)

        async def send(span: tuple[int, int]) -> _R:
            start, end = span
            async with sem:
                data = await self._request("POST", batch.path, batch.payload(start, end))
            return parse(data, end - start)

        if len(chunks) == 1:
            return await send(chunks[0])
        tasks = [asyncio.ensure_future(send(span)) for span in chunks]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return concat(parts)

    # -- API -------------------------------------------------------------

    async def reward(
        self,
        *,
        query: Sequence[Query],
        response: Sequence[str],
        reference: Sequence[str | None] | None = None,
        qtype: Sequence[str | None] | None = None,
        options: RewardOptions | Mapping[str, Any] | None = None,
    ) -> RewardResult:
        """Score ``response[i]`` against ``query[i]`` (``POST /reward``)."""
        batch = reward_batch(query, response, reference, qtype, options)
        return await self._run(batch, RewardResult.from_json, RewardResult.concat)

    async def relevance(self, *, anchor: Sequence[str], text: Sequence[str]) -> RelevanceResult:
        """Relevance of ``text[i]`` to ``anchor[i]`` (``POST /relevance``)."""
        batch = relevance_batch(anchor, text)
        return await self._run(batch, RelevanceResult.from_json, RelevanceResult.concat)

    async def classify(self, *, query: Sequence[Query]) -> ClassifyResult:
        """Classify queries as OPENENDED or CONSTRAINED (``POST /classify``)."""
        batch = classify_batch(query)
        return await self._run(batch, ClassifyResult.from_json, ClassifyResult.concat)

    async def info(self) -> Info:
        """Model, profile and limits (``GET /v1/info``); refreshes the cached limits."""
        info = Info.from_json(await self._request("GET", "/v1/info"))
        self._info = info
        return info

    async def health(self) -> bool:
        """``True`` if ``GET /healthz`` answers 2xx; no retries."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """``True`` if ``GET /readyz`` answers 2xx; no retries."""
        return await self._probe("/readyz")

    async def wait_until_ready(self, timeout: float = 120.0, interval: float = 1.0) -> None:
        """Poll ``/readyz`` until ready; raise :class:`APITimeoutError` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() >= deadline:
                raise APITimeoutError(f"{self.base_url} not ready after {timeout:g} s")
            await _async_sleep(interval)
