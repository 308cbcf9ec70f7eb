"""/docs is served with its assets from this process: it works without a network."""

from __future__ import annotations

import re

import httpx


def test_docs_page_and_assets_are_local(live_server: str) -> None:
    page = httpx.get(live_server + "/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url:\\s*['"]([^'"]+)['"]""", page.text)
    assets = [u for u in urls if u.endswith((".js", ".css", ".png"))]
    assert any(u.endswith("swagger-ui-bundle.js") for u in assets), urls
    assert any(u.endswith(".css") for u in assets), urls
    for url in assets:
        assert url.startswith("/"), f"{url} is not served by the service itself"
        answer = httpx.get(live_server + url)
        assert answer.status_code == 200 and len(answer.content) > 500, url
    assert httpx.get(live_server + "/openapi.json").json()["info"]["title"] == "R3 reward service"
    assert "/docs" not in httpx.get(live_server + "/openapi.json").json()["paths"]
