"""``/docs`` renders the API in a real browser (headless Chromium), offline."""

from __future__ import annotations

import re

import httpx
from browser_support import ARTIFACTS, headless


def test_docs_render_the_operations_in_a_real_browser(live_server: str) -> None:
    """Swagger UI reads the OpenAPI document FastAPI serves and lists every operation.

    The Swagger UI 3.20 of swagger-ui-bundle 1.1 showed only "Unable to render this
    definition" here: it cannot read OpenAPI 3.1.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "docs.png"
    shot.unlink(missing_ok=True)
    dom = headless(live_server + "/docs", f"--screenshot={shot}", "--window-size=1280,1600")
    assert "Unable to render" not in dom and 'class="errors-wrapper"' not in dom, dom[-3000:]
    listed = re.findall(
        r'opblock-summary-method">(\w+)</span>.*?class="opblock-summary-path" data-path="([^"]+)"',
        dom,
    )
    spec = httpx.get(live_server + "/openapi.json").json()
    expected = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert ("POST", "/reward") in set(listed)
    assert set(listed) == expected
    assert shot.stat().st_size > 20_000  # a page with content, kept for a person to look at
