"""The page for people at the coater, served by the service itself at /ui/.

The page is static (index.html, app.js, app.css beside this file; no build step, nothing loaded from elsewhere,
since lab networks are often offline) and talks to the same HTTP API as every other client: GET /models once when
it opens, then one POST per user action. It holds no data, so its files may be answered without a token
(`service.web.open_paths` lists `UI_PATHS`); every API call it makes carries the token the user
entered.

The API docs (Swagger UI, from BentoML's own copy of its assets under /static_content: no CDN) are served from
`docs.html` here rather than BentoML's index page, which embeds Google Tag Manager: an offline lab server's docs
should not call out. They describe the API and hold no data either, so they are open too (`DOCS_PATHS`): a browser
cannot send a bearer token when following the page's "API docs" link. Trying a call from them needs the token
(Swagger's Authorize button).

Both pages are sent with a Content-Security-Policy (scripts, styles and calls from this server only; no framing),
X-Frame-Options and X-Content-Type-Options: nosniff (`PAGE_HEADERS`, `DOCS_HEADERS`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.responses import FileResponse, RedirectResponse

# The files and paths served here, listed with every path open without a token.
from service.web.open_paths import UI_FILES, UI_PATH

if TYPE_CHECKING:  # service.service imports this module to define the service: no need to load FastAPI
    from fastapi import FastAPI

UI_DIR = Path(__file__).resolve().parent

DOCS_PAGE = "docs.html"

_COMMON_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# The page builds everything with DOM calls (no inline script or style), and talks only to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    **_COMMON_HEADERS}
# Swagger UI sets inline styles and shows data: images; nothing else is loosened.
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    **_COMMON_HEADERS}


def _file_route(name: str, media_type: str) -> FileResponse:
    # no-cache: the browser asks again on every load (about 50 kB in all), so an upgraded service's page is never
    # shown stale from its cache.
    return FileResponse(UI_DIR / name, media_type=media_type, headers={"Cache-Control": "no-cache", **PAGE_HEADERS})


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


_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class DocsPage:
    """ASGI middleware answering GET / with `docs.html` instead of BentoML's index page (which cannot be replaced
    by a route: BentoML's own route for / comes first)."""

    def __init__(self, app: Callable[[_Scope, _Receive, _Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/" and scope.get("method") in ("GET", "HEAD"):
            page = FileResponse(UI_DIR / DOCS_PAGE, media_type="text/html; charset=utf-8",
                                headers={"Cache-Control": "no-cache", **DOCS_HEADERS})
            await page(scope, receive, send)
            return
        await self.app(scope, receive, send)
