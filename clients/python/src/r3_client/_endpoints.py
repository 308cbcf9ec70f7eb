"""Several service endpoints behind one client, or a Ray Serve handle instead of a URL.

``Client(base_url=["http://a:8000", "http://b:8000"])`` (or ``R3_BASE_URL="http://a:8000,
http://b:8000"``) sends each request to the healthy endpoint with the fewest requests in
flight (ties in turn). An endpoint that refuses or drops the connection, or answers
502/503 or a gateway's 500, is ejected and the request goes to the next endpoint at once.
When its ejection time is over (1 s, doubling up to 30 s while it keeps failing), a
``GET /readyz`` probe decides whether it is taken back. An endpoint that is healthy but
full (429, or 503 of type ``overloaded``) is not ejected: the request goes to the next
endpoint at once, and this one is passed over until its ``Retry-After`` is over (at most
``MAX_BUSY_S``). When every endpoint has failed or is full, the last answer goes to the
client's own retry policy (backoff, ``Retry-After``).

``Client(base_url=handle)`` with a Ray Serve ``DeploymentHandle`` of the ``R3Reward``
deployment sends the same HTTP requests through ``handle.handle_request`` (Serve picks
the replica), for code that runs inside the Ray cluster.

Both are httpx transports, so the client's request path is unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ._exceptions import InvalidInputError
from ._headers import parse_retry_after

#: What ``base_url`` may be: a URL, several (a list or a comma-separated string), a handle.
BaseURL = str | Sequence[str] | Any

#: The host a pooled client addresses; the transport replaces it with an endpoint's URL.
POOL_BASE_URL = "http://r3-endpoints"
SERVE_BASE_URL = "http://r3-serve-handle"
FAILOVER_STATUS = frozenset({502, 503})
EJECT_S = 1.0
MAX_EJECT_S = 30.0
PROBE_TIMEOUT_S = 2.0
#: Longest a full endpoint is passed over (its ``Retry-After``, capped).
MAX_BUSY_S = 10.0
#: The error ``type`` of the service's 503 when it is healthy but full.
OVERLOADED_TYPE = "overloaded"
_FAILOVER_ERRORS = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


def _error_envelope(response: httpx.Response) -> dict[str, Any] | None:
    """The service's ``{"error": {...}}`` object of an answer, or None if it has none."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def is_gateway_error(response: httpx.Response) -> bool:
    """A 500 without the service's JSON error envelope: a proxy's answer, safe to resend.

    Ray Serve's proxy answers a plain-text 500 when the replica died during the request;
    the service itself always answers ``{"error": ...}``. Scoring has no side effects.
    """
    return response.status_code == 500 and _error_envelope(response) is None


def busy_for(response: httpx.Response) -> float | None:
    """Seconds to pass over an endpoint that answered it is full (429, or a 503 of type
    ``overloaded``): its ``Retry-After``, at most ``MAX_BUSY_S``; None for other answers."""
    full = response.status_code == 429 or (
        response.status_code == 503
        and (_error_envelope(response) or {}).get("type") == OVERLOADED_TYPE
    )
    if not full:
        return None
    wait = parse_retry_after(response.headers.get("retry-after"))
    return min(EJECT_S if wait is None else wait, MAX_BUSY_S)


@dataclass
class EndpointStats:
    """What the pool knows about one endpoint."""

    url: str
    healthy: bool
    in_flight: int
    requests: int
    failures: int
    #: Answers "full" (429, 503 overloaded); such an endpoint stays healthy.
    refusals: int = 0
    #: Passed over now, until the ``Retry-After`` of its last "full" answer.
    busy: bool = False


@dataclass
class _Endpoint:
    url: str
    eject_s: float
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    refusals: int = 0
    ejected_until: float = 0.0  # 0: healthy
    busy_until: float = 0.0  # healthy but full until then
    probing: bool = False

    @property
    def free_at(self) -> float:
        return max(self.ejected_until, self.busy_until)


class EndpointPool:
    """Least-outstanding choice over endpoints, with ejection and re-probing; thread-safe."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        eject_s: float = EJECT_S,
        max_eject_s: float = MAX_EJECT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise InvalidInputError("at least one base URL is needed")
        self._endpoints = [_Endpoint(u.rstrip("/"), eject_s) for u in urls]
        self._eject_s = eject_s
        self._max_eject_s = max_eject_s
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self._endpoints)

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self._endpoints]

    def stats(self) -> list[EndpointStats]:
        """A snapshot per endpoint, in the order given."""
        now = self._clock()
        with self._lock:
            return [
                EndpointStats(
                    e.url,
                    e.ejected_until == 0.0,
                    e.in_flight,
                    e.requests,
                    e.failures,
                    e.refusals,
                    e.busy_until > now,
                )
                for e in self._endpoints
            ]

    def pick(self, tried: set[int]) -> tuple[int, bool] | None:
        """(endpoint index, whether to probe it first), or None when all were tried."""
        now = self._clock()
        n = len(self._endpoints)
        with self._lock:
            left = [i for i in range(n) if i not in tried]
            if not left:
                return None
            due = [
                i
                for i in left
                if 0.0 < self._endpoints[i].ejected_until <= now and not self._endpoints[i].probing
            ]
            if due:  # an ejected endpoint's time is over: probe it (this request waits)
                self._endpoints[due[0]].probing = True
                return due[0], True
            ready = [
                i
                for i in left
                if self._endpoints[i].ejected_until == 0.0 and self._endpoints[i].busy_until <= now
            ]
            if ready:
                turn = next(self._turn)
                best = min(ready, key=lambda i: (self._endpoints[i].in_flight, (i - turn) % n))
                self._start(best)
                return best, False
            # Everything is ejected or full: try the one free first rather than fail unheard.
            soonest = min(left, key=lambda i: self._endpoints[i].free_at)
            self._start(soonest)
            return soonest, False

    def probed(self, index: int, ok: bool) -> bool:
        """Record a ``/readyz`` probe; a passing endpoint is healthy and takes the request."""
        with self._lock:
            e = self._endpoints[index]
            e.probing = False
            if ok:
                e.ejected_until = 0.0
                self._start(index)
            else:
                self._eject(e)
            return ok

    def settle(self, index: int, response: httpx.Response) -> bool:
        """Record endpoint ``index``'s ``response``; True if it is the answer to return
        (False: try the next endpoint)."""
        busy_s = busy_for(response)
        if busy_s is not None:
            self.finish(index, ok=True, busy_s=busy_s)
            return False
        ok = not (response.status_code in FAILOVER_STATUS or is_gateway_error(response))
        self.finish(index, ok=ok)
        return ok

    def finish(self, index: int, ok: bool | None, busy_s: float | None = None) -> None:
        """A request ended: ``ok`` True (healthy), False (eject), None (no verdict);
        ``busy_s``: healthy but full, pass it over for that long."""
        with self._lock:
            e = self._endpoints[index]
            e.in_flight -= 1
            if busy_s is not None:
                e.refusals += 1
                e.busy_until = self._clock() + busy_s
            if ok:
                e.ejected_until = 0.0
                e.eject_s = self._eject_s
            elif ok is False:
                e.failures += 1
                self._eject(e)

    def _start(self, index: int) -> None:
        e = self._endpoints[index]
        e.in_flight += 1
        e.requests += 1

    def _eject(self, e: _Endpoint) -> None:
        e.ejected_until = self._clock() + e.eject_s
        e.eject_s = min(e.eject_s * 2.0, self._max_eject_s)

    def request_for(self, index: int, request: httpx.Request, body: bytes) -> httpx.Request:
        """``request`` addressed to endpoint ``index``."""
        url = self._endpoints[index].url + request.url.raw_path.decode("ascii")
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
        return httpx.Request(
            request.method, url, headers=headers, content=body, extensions=request.extensions
        )

    def probe_request(self, index: int) -> httpx.Request:
        timeout = {
            "connect": PROBE_TIMEOUT_S,
            "read": PROBE_TIMEOUT_S,
            "write": PROBE_TIMEOUT_S,
            "pool": PROBE_TIMEOUT_S,
        }
        url = self._endpoints[index].url + "/readyz"
        return httpx.Request("GET", url, extensions={"timeout": timeout})


def _no_endpoint(request: httpx.Request) -> httpx.ConnectError:
    return httpx.ConnectError("no endpoint passed its readiness probe", request=request)


class PoolTransport(httpx.BaseTransport):
    """Sends each request to the pool's choice, failing over to the others.

    Each endpoint has its own connection pool (``make_inner()``). One httpcore pool shared
    by several hosts closes an idle connection of one host to open one to another when
    it is full, and under many threads it can close a connection that another thread has
    just taken for its request: that request then hangs until its read timeout (seen at
    256 threads: EBADF after 60 s, and throughput halved).
    """

    def __init__(self, pool: EndpointPool, make_inner: Callable[[], httpx.BaseTransport]) -> None:
        self.pool = pool
        self._inners = [make_inner() for _ in range(len(pool))]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        tried: set[int] = set()
        last: httpx.Response | Exception | None = None
        while (choice := self.pool.pick(tried)) is not None:
            index, probe = choice
            tried.add(index)
            if probe and not self.pool.probed(index, self._probe(index)):
                continue
            try:
                sent = self.pool.request_for(index, request, body)
                response = self._inners[index].handle_request(sent)
                response.read()
            except _FAILOVER_ERRORS as exc:
                self.pool.finish(index, ok=False)
                last = exc
                continue
            except BaseException:
                self.pool.finish(index, ok=None)
                raise
            if self.pool.settle(index, response):
                return response
            last = response
        if isinstance(last, Exception):
            raise last
        return last if last is not None else _raise(_no_endpoint(request))

    def _probe(self, index: int) -> bool:
        try:
            response = self._inners[index].handle_request(self.pool.probe_request(index))
            response.read()
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def close(self) -> None:
        for inner in self._inners:
            inner.close()


class AsyncPoolTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`PoolTransport` (one connection pool per endpoint too)."""

    def __init__(
        self, pool: EndpointPool, make_inner: Callable[[], httpx.AsyncBaseTransport]
    ) -> None:
        self.pool = pool
        self._inners = [make_inner() for _ in range(len(pool))]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        tried: set[int] = set()
        last: httpx.Response | Exception | None = None
        while (choice := self.pool.pick(tried)) is not None:
            index, probe = choice
            tried.add(index)
            if probe and not self.pool.probed(index, await self._probe(index)):
                continue
            try:
                sent = self.pool.request_for(index, request, body)
                response = await self._inners[index].handle_async_request(sent)
                await response.aread()
            except _FAILOVER_ERRORS as exc:
                self.pool.finish(index, ok=False)
                last = exc
                continue
            except BaseException:
                self.pool.finish(index, ok=None)
                raise
            if self.pool.settle(index, response):
                return response
            last = response
        if isinstance(last, Exception):
            raise last
        return last if last is not None else _raise(_no_endpoint(request))

    async def _probe(self, index: int) -> bool:
        try:
            probe = self.pool.probe_request(index)
            response = await self._inners[index].handle_async_request(probe)
            await response.aread()
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        for inner in self._inners:
            await inner.aclose()


def _raise(exc: Exception) -> httpx.Response:
    raise exc


def _handle_args(
    request: httpx.Request, body: bytes
) -> tuple[str, str, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
    return request.method, request.url.raw_path.decode("ascii"), headers, body


def _read_timeout(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    value = timeout.get("read")
    return float(value) if value is not None else None


class ServeHandleTransport(httpx.BaseTransport):
    """HTTP requests as calls of a Ray Serve handle's ``handle_request`` (blocking)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        args = _handle_args(request, request.read())
        try:
            call = self.handle.handle_request.remote(*args)
            status, headers, content = call.result(timeout_s=_read_timeout(request))
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"Serve handle call timed out: {exc}", request=request) from exc
        except Exception as exc:  # the replica died or is unavailable: retryable
            raise httpx.ConnectError(f"Serve handle call failed: {exc}", request=request) from exc
        return httpx.Response(status, headers=headers, content=content, request=request)


class AsyncServeHandleTransport(httpx.AsyncBaseTransport):
    """HTTP requests as awaited calls of a Ray Serve handle's ``handle_request``."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        args = _handle_args(request, await request.aread())
        try:
            call = self.handle.handle_request.remote(*args)
            status, headers, content = await asyncio.wait_for(call, _read_timeout(request))
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise httpx.ReadTimeout(f"Serve handle call timed out: {exc}", request=request) from exc
        except Exception as exc:  # the replica died or is unavailable: retryable
            raise httpx.ConnectError(f"Serve handle call failed: {exc}", request=request) from exc
        return httpx.Response(status, headers=headers, content=content, request=request)


@dataclass
class Endpoints:
    """Where a client sends requests: one URL, a pool of URLs, or a Serve handle."""

    base_url: str
    pool: EndpointPool | None = None
    handle: Any = None

    @classmethod
    def parse(cls, base_url: BaseURL) -> Endpoints:
        """From a URL, comma-separated URLs, a list of URLs, or a Serve handle."""
        if not isinstance(base_url, (str, Sequence)):
            return cls(SERVE_BASE_URL, handle=base_url)
        parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
        urls = [str(u).strip().rstrip("/") for u in parts if str(u).strip()]
        if not urls:
            raise InvalidInputError("base_url has no URL")
        if len(urls) == 1:
            return cls(urls[0])
        return cls(POOL_BASE_URL, pool=EndpointPool(urls))

    @property
    def custom(self) -> bool:
        return self.pool is not None or self.handle is not None

    @property
    def spec(self) -> BaseURL:
        """What ``parse`` takes to make these endpoints again (e.g. in another process)."""
        if self.handle is not None:
            return self.handle
        if self.pool is not None:
            return self.pool.urls
        return self.base_url

    def httpx_options(self, limits: httpx.Limits) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client``."""
        if self.handle is not None:
            return {"transport": ServeHandleTransport(self.handle), "trust_env": False}
        if self.pool is not None:
            transport = PoolTransport(self.pool, lambda: httpx.HTTPTransport(limits=limits))
            return {"transport": transport, "trust_env": False}
        return {"limits": limits}

    def async_httpx_options(self, limits: httpx.Limits) -> dict[str, Any]:
        """Keyword arguments of ``httpx.AsyncClient``."""
        if self.handle is not None:
            return {"transport": AsyncServeHandleTransport(self.handle), "trust_env": False}
        if self.pool is not None:
            pooled = AsyncPoolTransport(self.pool, lambda: httpx.AsyncHTTPTransport(limits=limits))
            return {"transport": pooled, "trust_env": False}
        return {"limits": limits}
