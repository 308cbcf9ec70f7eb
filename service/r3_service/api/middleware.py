"""Pure ASGI middleware: body size limit, request metrics. No per-request task overhead."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r3_service.api.errors import error_response
from r3_service.metrics import Metrics

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


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``, by Content-Length or by counting a stream."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    message = f"body larger than {self.max_bytes} bytes"
                    status = 413 if declared > 0 else 400
                    await error_response(status, message)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"body larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


class MetricsMiddleware:
    """Counts requests by route and status and times them."""

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
        status = 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
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
