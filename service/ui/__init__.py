"""The page for people at the coater, served by the service itself at /ui/.

The page is static (index.html, app.js, app.css beside this file; no build step, nothing loaded from elsewhere,
since lab networks are often offline) and talks to the same HTTP API as every other client: GET /models once when
it opens, then one POST per user action. It holds no data, so its files may be answered without a token
(`service.security.DEFAULT_OPEN_PATHS` lists `UI_PATHS`); every API call it makes carries the token the user
entered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.responses import FileResponse, RedirectResponse

if TYPE_CHECKING:  # the security settings import UI_PATHS: no need to load FastAPI for that
    from fastapi import FastAPI

UI_DIR = Path(__file__).resolve().parent
UI_PATH = "/ui"
# Exactly these files are served (not this module, nor its byte code): name -> media type.
UI_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# Every path the page is answered at; the security middleware matches open paths exactly.
UI_PATHS: tuple[str, ...] = (UI_PATH, f"{UI_PATH}/", *(f"{UI_PATH}/{name}" for name in UI_FILES))


def _file_route(name: str, media_type: str) -> FileResponse:
    # no-cache: the browser asks again on every load (about 50 kB in all), so an upgraded service's page is never
    # shown stale from its cache.
    return FileResponse(UI_DIR / name, media_type=media_type, headers={"Cache-Control": "no-cache"})


def mount_ui(app: FastAPI) -> None:
    """Serve the page at /ui/ (/ui redirects there) and redirect /docs to the API docs BentoML serves at /."""

    @app.get(UI_PATH, include_in_schema=False)
    def page_redirect() -> RedirectResponse:
        # Relative links in the page (app.js, ../models) need the trailing slash. Redirects are relative too, so
        # they hold behind a reverse proxy that serves the service under a path prefix.
        return RedirectResponse("ui/", status_code=307)

    @app.get(f"{UI_PATH}/", include_in_schema=False)
    def page() -> FileResponse:
        return _file_route("index.html", UI_FILES["index.html"])

    for name, media_type in UI_FILES.items():
        app.add_api_route(f"{UI_PATH}/{name}", _file_endpoint(name, media_type), methods=["GET"],
                          include_in_schema=False)

    @app.get("/docs", include_in_schema=False)
    def docs_redirect() -> RedirectResponse:
        return RedirectResponse("./", status_code=307)


def _file_endpoint(name: str, media_type: str) -> Callable[[], FileResponse]:
    def endpoint() -> FileResponse:
        return _file_route(name, media_type)

    endpoint.__name__ = f"ui_{name.replace('.', '_')}"
    return endpoint
