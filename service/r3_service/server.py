"""The HTTP server: uvicorn, plus the connection limits a production front end would apply.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no header
timeout, no cap on open connections, and (with httptools) no limit on header size. Its
HTTP protocol is subclassed here (``guarded_protocol``) to add them:

- **Connection cap** (``R3_MAX_CONNECTIONS``): a new connection beyond the cap closes the
  connection that has waited longest for its request headers (idle keep-alive or slow);
  if every connection is busy with a request, the new one gets 503 and is closed.
  Requests in progress are never cut.
- **Header timeout** (``R3_HEADER_TIMEOUT_S``): a connection must send a request's
  headers within this time of connecting or of its previous answer; else it is closed
  (with 408 if it sent part of a request).
- **Header size** (``R3_MAX_HEADER_BYTES``): larger request heads get 431 and are closed.
  Counted per request, whatever the read sizes: the URL and headers as the parser hands
  them over (a whole head in one read), and every read spent inside an unfinished head (one
  huge header). A head pipelined behind a request in progress counts the same; the 431
  goes out after the answers to the requests before it.
- **Malformed HTTP** gets uvicorn's 400, in the service's error shape (JSON, not
  uvicorn's plain text). WebSocket upgrades are not served (``ws="none"``): such a request
  is an ordinary HTTP request (404 in the error shape, not uvicorn's empty 403).
- **Half-closed body**: a client that ends its side before the body it announced is
  complete gets 400, and the connection closes.
- **Lingering close**: after such an error answer the server ends its side and reads (and
  discards) what the client still sends for up to ``LINGER_S``, as nginx does. Closing at
  once with unread input makes the kernel reset the connection, and a client still
  writing its request would then see a broken pipe instead of the answer.

The open-file limit is raised towards its hard limit at start, and the cap and listen
backlog are kept well under it, so that the process never runs out of descriptors.
Body size, body deadline (408) and JSON checks are ASGI middleware (``api/middleware.py``).

These limits rely on uvicorn internals (its protocol classes and their request cycle), so
uvicorn is pinned to the tested range in ``pyproject.toml`` and ``check_uvicorn_internals``
refuses to start, naming what is missing, when an installed uvicorn lacks one of them
(a test runs the same check). Moving the limits to a pure ASGI layer is not possible:
header size, header timeout and the connection cap act before ASGI sees a request.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn

from r3_service.config import Settings

logger = logging.getLogger(__name__)

#: uvicorn's default listen backlog.
BACKLOG = 2048

#: Seconds a connection closed with an error answer keeps draining the client's input.
LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    max_header_bytes: int


def raw_response(status: int, reason: str, message: str, kind: str) -> bytes:
    """A complete HTTP/1.1 error answer in the service's error shape, closing the connection."""
    body = json.dumps({"error": {"type": kind, "message": message, "details": []}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """Server-wide book of connections: which wait for headers (oldest first), counts."""

    def __init__(
        self, limits: ConnectionLimits, on_close: Callable[[str], None] | None = None
    ) -> None:
        self.limits = limits
        self.on_close = on_close
        self.open: set[Any] = set()
        #: Connections waiting for a request's headers, in the order they started waiting.
        self.waiting: OrderedDict[Any, None] = OrderedDict()
        #: Connections answered and closing, still draining the client's input.
        self.lingering: set[Any] = set()
        self.closed: dict[str, int] = {}

    @property
    def max_lingering(self) -> int:
        """Lingering connections at most (a quarter of the cap; beyond, they close at once)."""
        return max(4, self.limits.max_connections // 4)

    def count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1
        if self.on_close is not None:
            self.on_close(reason)

    def make_room(self, newcomer: Any) -> bool:
        """Close the longest-waiting connection if at the cap; False if none can go."""
        if len(self.open) <= self.limits.max_connections:
            return True
        for victim in self.waiting:
            if victim is not newcomer:
                victim.r3_close("evicted", None)
                return True
        return False


_HEADER_TIMEOUT = raw_response(408, "Request Timeout", "request headers too slow", "timeout")
_HEADER_TOO_LARGE = raw_response(
    431, "Request Header Fields Too Large", "request headers too large", "request_too_large"
)
_BUSY = raw_response(
    503, "Service Unavailable", "too many open connections", "service_unavailable"
).replace(b"connection: close\r\n", b"connection: close\r\nretry-after: 1\r\n")
_BODY_INCOMPLETE = raw_response(
    400, "Bad Request", "the client closed its side before the body was complete", "bad_request"
)
_MALFORMED = raw_response(400, "Bad Request", "invalid HTTP request", "bad_request")


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limit."""


class GuardMixin:
    """Connection limits on top of a uvicorn HTTP protocol (mixed in by ``guarded_protocol``).

    Relies on what uvicorn's h11 and httptools protocols share: ``transport``, ``loop``,
    ``cycle`` (the request in progress, with ``more_body``, ``response_started``,
    ``response_complete``, ``disconnected`` and ``message_event``).
    """

    guard: ClassVar[ConnectionGuard]
    _r3_timer: asyncio.TimerHandle | None = None
    _r3_bytes = 0
    _r3_lingering = False
    #: The current request's head: bytes of its URL and headers seen by the parser, bytes
    #: of the reads that fell wholly inside it, whether it is unfinished, and whether it
    #: began in the read being parsed.
    _r3_head = 0
    _r3_head_reads = 0
    _r3_in_head = False
    _r3_head_began = False
    #: Set once the connection is refused (431, 400): its input is ignored from then on.
    _r3_refused = False
    #: (reason, answer) of a refusal that waits for the requests in progress to be answered.
    _r3_pending: tuple[str, bytes] | None = None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.guard.open.add(self)
        if not self.guard.make_room(self):
            self.r3_close("refused", _BUSY)
            return
        self._r3_wait_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.open.discard(self)
        self.guard.waiting.pop(self, None)
        self.guard.lingering.discard(self)
        self._r3_cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._r3_lingering or self._r3_refused:
            return  # answered and closing, or refused: drain
        waiting = self in self.guard.waiting
        before = self.cycle
        self._r3_head_began = False
        super().data_received(data)  # type: ignore[misc]
        if self._r3_refused:
            return
        if self._r3_in_head and not self._r3_head_began:  # the whole read is head
            self._r3_head_reads += len(data)
            if self._r3_head_reads > self.guard.limits.max_header_bytes:
                self._r3_refuse("header_too_large", _HEADER_TOO_LARGE)
                return
        if not waiting:
            return
        if self.cycle is not before:  # headers complete: a request started
            self.guard.waiting.pop(self, None)
            self._r3_cancel()
            return
        self._r3_bytes += len(data)  # still in the request's head

    # httptools' parser callbacks (uvicorn's h11 protocol has its own head limit).
    def on_message_begin(self) -> None:
        self._r3_head = self._r3_head_reads = 0
        self._r3_in_head = self._r3_head_began = True
        super().on_message_begin()  # type: ignore[misc]

    def on_url(self, url: bytes) -> None:
        self._r3_count_head(len(url))
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._r3_count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._r3_in_head = False
        super().on_headers_complete()  # type: ignore[misc]

    def _r3_count_head(self, size: int) -> None:
        self._r3_head += size
        if self._r3_head > self.guard.limits.max_header_bytes:
            self._r3_refuse("header_too_large", _HEADER_TOO_LARGE)
            raise _HeadTooLarge  # stops the parser; uvicorn calls send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refused: the service's error shape."""
        if not self._r3_refused:  # else the refusal is already on its way
            self._r3_refuse("malformed", _MALFORMED)

    def _unsupported_upgrade_warning(self) -> None:
        logger.debug("upgrade request served as plain HTTP")

    def _r3_refuse(self, reason: str, answer: bytes) -> None:
        """Refuse the request being read: answer and close once the requests before it
        on this connection are answered (at once when there are none)."""
        self._r3_refused = True
        self.transport.pause_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not self.transport.is_closing():
            self._r3_pending = (reason, answer)
            return
        self.r3_close(reason, answer)

    def on_response_complete(self) -> None:
        pending = self._r3_pending
        if pending is not None and not getattr(self, "pipeline", None):  # the last answer
            super().on_response_complete()  # type: ignore[misc]
            self._unset_keepalive_if_required()  # type: ignore[attr-defined]
            self._r3_pending = None
            self.r3_close(*pending)
            return
        super().on_response_complete()  # type: ignore[misc]
        if pending is not None:
            self.transport.pause_reading()  # resumed by uvicorn: keep the refused input out
            return
        cycle = self.cycle
        if not self.transport.is_closing() and (cycle is None or cycle.response_complete):
            self._r3_wait_headers()

    def eof_received(self) -> bool | None:
        if self._r3_lingering:
            return None  # the client has read the answer and ended: close now
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started:
            cycle.disconnected = True  # the app sees a disconnect and writes nothing
            cycle.message_event.set()
            self.r3_close("body_incomplete", _BODY_INCOMPLETE)
            return None
        result: bool | None = super().eof_received()  # type: ignore[misc]
        return result

    def _r3_wait_headers(self) -> None:
        self._r3_cancel()
        self._r3_bytes = 0
        self.guard.waiting[self] = None
        self.guard.waiting.move_to_end(self)
        timeout = self.guard.limits.header_timeout_s
        self._r3_timer = self.loop.call_later(timeout, self._r3_header_timeout)

    def _r3_header_timeout(self) -> None:
        self._r3_timer = None
        if self in self.guard.waiting:
            sent_part = self._r3_bytes > 0
            self.r3_close("header_timeout", _HEADER_TIMEOUT if sent_part else None)

    def _r3_cancel(self) -> None:
        if self._r3_timer is not None:
            self._r3_timer.cancel()
            self._r3_timer = None

    def r3_close(self, reason: str, answer: bytes | None) -> None:
        """Close this connection (after writing ``answer``), counting why."""
        self.guard.waiting.pop(self, None)
        self.guard.open.discard(self)
        self._r3_cancel()
        if self.transport.is_closing():
            return
        self.guard.count(reason)
        if answer is not None:
            self.transport.write(answer)
            if self._r3_linger():
                return
        self.transport.close()

    def _r3_linger(self) -> bool:
        """End our side and drain the client's input for ``LINGER_S``; False if not possible."""
        if (
            not self.transport.can_write_eof()
            or len(self.guard.lingering) >= self.guard.max_lingering
        ):
            return False
        self._r3_lingering = True
        self.guard.lingering.add(self)
        self.transport.write_eof()
        self.transport.resume_reading()
        self._r3_timer = self.loop.call_later(LINGER_S, self.transport.close)
        return True


#: What ``GuardMixin`` uses of uvicorn's protocols: methods it overrides or calls, the
#: attributes their ``__init__`` sets, and those of the request cycle (``cycle``).
UVICORN_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "eof_received",
    "on_response_complete",
    "send_400_response",
    "_unset_keepalive_if_required",
    "_unsupported_upgrade_warning",
)
HTTPTOOLS_CALLBACKS = ("on_message_begin", "on_url", "on_header", "on_headers_complete")
UVICORN_ATTRIBUTES = ("transport", "loop", "cycle")
CYCLE_ATTRIBUTES: tuple[str, ...] = (
    "more_body",
    "response_started",
    "response_complete",
    "disconnected",
    "message_event",
)


def _sets(cls: type, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` ``cls.__init__`` does not assign to ``self``."""
    try:
        source = inspect.getsource(getattr(cls, "__init__"))  # noqa: B009 - the class's own
    except (OSError, TypeError):
        return list(names)
    return [n for n in names if f"self.{n} =" not in source and f"self.{n}:" not in source]


def missing_uvicorn_internals(base: type, cycle: type | None) -> list[str]:
    """What ``GuardMixin`` needs that the protocol class ``base`` (and its request cycle
    class) lacks; empty when the installed uvicorn is one the limits work with."""
    httptools = any(c.__name__ == "HttpToolsProtocol" for c in base.__mro__)
    methods = UVICORN_METHODS + (HTTPTOOLS_CALLBACKS if httptools else ())
    missing = [f"{base.__name__}.{m}()" for m in methods if not callable(getattr(base, m, None))]
    missing += [f"{base.__name__}.{a}" for a in _sets(base, UVICORN_ATTRIBUTES)]
    if cycle is None:
        return [*missing, "RequestResponseCycle"]
    return missing + [f"RequestResponseCycle.{a}" for a in _sets(cycle, CYCLE_ATTRIBUTES)]


def check_uvicorn_internals(base: type) -> None:
    """Raise RuntimeError (refusing to start) when uvicorn lacks what the limits rely on."""
    module = inspect.getmodule(base)
    missing = missing_uvicorn_internals(base, getattr(module, "RequestResponseCycle", None))
    if missing:
        raise RuntimeError(
            f"uvicorn {uvicorn.__version__} lacks what the connection limits rely on: "
            f"{', '.join(missing)}. Install the uvicorn version pinned in pyproject.toml."
        )


def guarded_protocol(base: type[asyncio.Protocol], guard: ConnectionGuard) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` that applies ``guard``'s limits."""
    return type(f"Guarded{base.__name__}", (GuardMixin, base), {"guard": guard})


def http_protocol_base() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol when httptools is installed, else its h11 one."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - depends on the install
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - a locked-down host
            logger.warning("could not raise the open-file limit from %d", soft)
    return int(soft) if soft != resource.RLIM_INFINITY else wanted


def connection_budget(max_connections: int, open_files: int) -> tuple[int, int]:
    """(connection cap, listen backlog) that fit in ``open_files`` descriptors.

    Half the descriptors for connections, a quarter for the backlog (accepted in bursts
    before the cap can act), the rest for the model, logs and sockets of the process.
    """
    cap = max(16, min(max_connections, open_files // 2))
    backlog = max(16, min(BACKLOG, open_files // 4))
    return cap, backlog


def build_server(
    settings: Settings,
    app: Any,
    on_close: Callable[[str], None] | None = None,
    **uvicorn_options: Any,
) -> tuple[uvicorn.Server, ConnectionGuard]:
    """A uvicorn server for ``app`` with the settings' connection limits and timeouts."""
    open_files = raise_open_file_limit(2 * settings.max_connections + BACKLOG + 1024)
    cap, backlog = connection_budget(settings.max_connections, open_files)
    if cap < settings.max_connections:
        logger.warning(
            "R3_MAX_CONNECTIONS=%d lowered to %d to fit the open-file limit (%d)",
            settings.max_connections,
            cap,
            open_files,
        )
    limits = ConnectionLimits(cap, settings.header_timeout_s, settings.max_header_bytes)
    guard = ConnectionGuard(limits, on_close)
    base = http_protocol_base()
    check_uvicorn_internals(base)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(base, guard),
        backlog=backlog,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        ws="none",  # no WebSocket routes: an upgrade request is plain HTTP
        h11_max_incomplete_event_size=settings.max_header_bytes,  # when h11 is the parser
        timeout_graceful_shutdown=int(settings.request_timeout_s),
        log_level=settings.log_level.lower(),
        access_log=False,
        **uvicorn_options,
    )
    return uvicorn.Server(config), guard


def serve(settings: Settings) -> None:
    """Run the service until SIGTERM/SIGINT (then drain in-flight requests)."""
    from r3_service.api.app import create_app

    for warning in settings.warnings():
        logger.warning(warning)
    app = create_app(settings)
    metrics = app.state.r3.metrics
    server, guard = build_server(
        settings, app, on_close=lambda reason: metrics.connections_closed.labels(reason).inc()
    )
    metrics.connections.set_function(lambda: len(guard.open))
    server.run()
