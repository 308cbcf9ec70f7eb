"""server.py's reliance on uvicorn internals: checked against the installed uvicorn, and the
check names what a uvicorn release that changed them would lack."""

from __future__ import annotations

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from r3_service.server import (
    check_uvicorn_internals,
    http_protocol_base,
    missing_uvicorn_internals,
)


@pytest.mark.parametrize("base", [HttpToolsProtocol, H11Protocol])
def test_the_installed_uvicorn_has_what_the_connection_limits_use(base: type) -> None:
    check_uvicorn_internals(base)  # raises, naming what is missing, otherwise


def test_the_server_uses_httptools_when_installed() -> None:
    assert http_protocol_base() is HttpToolsProtocol  # header-size limits count its callbacks


def test_a_uvicorn_without_a_callback_or_cycle_attribute_is_refused_by_name() -> None:
    class Renamed(HttpToolsProtocol):  # a release that renamed one parser callback
        on_header = None  # type: ignore[assignment]

    class Cycle:
        def __init__(self) -> None:
            self.more_body = True
            self.response_started = False
            self.response_complete = False
            self.message_event = None  # no ``disconnected``

    missing = missing_uvicorn_internals(Renamed, Cycle)
    assert missing == ["Renamed.on_header()", "RequestResponseCycle.disconnected"]
    assert missing_uvicorn_internals(HttpToolsProtocol, RequestResponseCycle) == []
    with pytest.raises(RuntimeError, match=r"lacks .*Renamed\.on_header\(\)"):
        check_uvicorn_internals(Renamed)
