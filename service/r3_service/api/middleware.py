"""Pure ASGI middleware: body size limit, request metrics. No per-request task overhead."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r3_service.api.body import BodyProblem, ElementLimits, check_json_body
from r3_service.api.errors import error_response, where
from r3_service.api.schemas import ErrorDetail
from r3_service.engine import request_started
from r3_service.metrics import Metrics

#: Status counted for a request whose client hung up before it was answered (nginx's).
CLIENT_CLOSED = 499

#: Routes with their own metric labels; anything else is "other" (bounded cardinality).
KNOWN_ROUTES = frozenset(
    {
        "/reward",
        "/relevance",
        "/classify",
        "/openrlhf/reward",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/info",
    }
)


class BodyMiddleware:
    """Reads a request body within limits before any route sees it.

    - larger than ``max_bytes`` (by Content-Length or by counting a stream): 413;
    - not complete within ``timeout_s`` of the headers: 408;
    - JSON (or no content type) that is not UTF-8 or nested deeper than ``max_depth``: 400;
    - more values than ``limits`` allow: 413 for the body, 422 naming the field and item
      for a column or an item's list (counted on the bytes, before anything is parsed);
      a string in any field over ``max_chars`` or with a lone surrogate: 422 naming the
      field and item index (``api/body.py``).

    Errors about the body itself close the connection (``Connection: close``): the rest
    of a body that was refused is never read. The body is then replayed to the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = 30.0,
        max_depth: int = 32,
        max_chars: int = 50_000,
        limits: ElementLimits | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_depth = max_depth
        self.max_chars = max_chars
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in _NO_BODY:
            await self.app(scope, receive, send)
            return
        problem = self._declared(scope)
        body = b""
        if problem is None:
            try:
                body = await asyncio.wait_for(self._read(receive), self.timeout_s)
            except asyncio.TimeoutError:
                problem = BodyProblem(408, f"request body not received within {self.timeout_s:g} s")
            except _TooLarge:
                problem = BodyProblem(413, f"body larger than {self.max_bytes} bytes")
            except _Gone:
                return  # the client left mid-body: nobody to answer
        if problem is None and _is_json(scope):
            problem = await self._inspect(body)
        if problem is not None:
            await _refuse(problem, scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _declared(self, scope: Scope) -> BodyProblem | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return BodyProblem(400, "invalid Content-Length")
                if declared < 0:
                    return BodyProblem(400, "invalid Content-Length")
                if declared > self.max_bytes:
                    return BodyProblem(413, f"body larger than {self.max_bytes} bytes")
        return None

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _inspect(self, body: bytes) -> BodyProblem | None:
        args = (body, self.max_depth, self.max_chars, self.limits)
        if len(body) <= _INLINE_BODY_BYTES:
            return check_json_body(*args)
        return await asyncio.get_running_loop().run_in_executor(None, check_json_body, *args)


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


#: Methods whose requests are not read for a body here.
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})
#: Larger bodies are inspected in a worker thread.
_INLINE_BODY_BYTES = 64 * 1024


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return True  # FastAPI parses a body without a content type as JSON


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` once, then whatever the server sends (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(problem: BodyProblem, scope: Scope, receive: Receive, send: Send) -> None:
    details = []
    headers = None
    if problem.status == 422:
        details = [ErrorDetail(field=problem.field, index=problem.index, message=problem.message)]
        message = f"{where(details[0])}: {problem.message}"
    else:
        message = problem.message
        headers = {"Connection": "close"}  # the rest of the body is never read
    await error_response(problem.status, message, details, headers)(scope, receive, send)


class MetricsMiddleware:
    """Counts requests by route and status and times them; stamps the request's arrival.

    A request whose client hung up before any answer counts as status 499.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in KNOWN_ROUTES else "other"
        started = time.perf_counter()
        status: int | None = None
        gone = False

        async def watched() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = request_started.set(time.monotonic())
        in_flight = self.metrics.in_flight.labels(route)
        in_flight.inc()
        try:
            await self.app(scope, watched, observed)
        finally:
            in_flight.dec()
            request_started.reset(token)
            code = status if status is not None else (CLIENT_CLOSED if gone else 500)
            self.metrics.requests.labels(route, str(code)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - started)


class AuthMiddleware:
    """Bearer API keys, compared in constant time; one 401 for every failure."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open_paths = open_paths

    def _authorised(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        # Compare with every key, without early exit, so timing says nothing.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token, key)
        return scheme.lower() == b"bearer" and matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
        if not self._authorised(header):
            response = error_response(
                401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class DisconnectMiddleware:
    """Cancels a request's handler when its client disconnects, so queued work is dropped."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        handler = asyncio.ensure_future(self.app(scope, tracked_receive, send))

        async def watch() -> None:
            await body_read.wait()
            while True:  # after the body, the server only ever sends http.disconnect
                message = await receive()
                if message["type"] == "http.disconnect":
                    handler.cancel()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not handler.cancelled():
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
