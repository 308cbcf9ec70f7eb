"""``/docs`` (Swagger UI) served from a packaged copy of its assets: it works offline."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the Swagger UI files are mounted.
ASSETS_PATH = "/docs/assets"


def swagger_ui_dir() -> Path:
    """The Swagger UI build (5.x, reads OpenAPI 3.1) inside the ``swagger-ui-bundle-v2`` package."""
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its JavaScript/CSS from this process (no CDN).

    Create the app with ``docs_url=None`` and ``redoc_url=None`` (ReDoc has no packaged copy).
    """
    app.mount(ASSETS_PATH, StaticFiles(directory=swagger_ui_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - docs",
            oauth2_redirect_url=redirect,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )

    @app.get(redirect, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
