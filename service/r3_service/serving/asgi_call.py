"""Call an ASGI app in process with one buffered HTTP request (no socket, no extra deps)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

#: (status, headers, body), the plain values a Serve handle call returns.
RawResponse = tuple[int, list[tuple[str, str]], bytes]


async def call_asgi(
    app: Any, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
) -> RawResponse:
    """Send one request through ``app`` (all its middleware) and collect the answer."""
    url = urlsplit(path)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": url.path or "/",
        "raw_path": (url.path or "/").encode(),
        "query_string": url.query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("serve-handle", 0),
        "server": ("r3-replica", 80),
    }
    finished = asyncio.Event()
    body_sent = False
    status = 500
    out_headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # the caller never disconnects before the answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            out_headers.extend(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])
            )
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    return status, out_headers, b"".join(chunks)
