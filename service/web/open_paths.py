"""The paths answered without a token by default: the probes, the metrics, the page's files and the API docs.

One list, in the web room, so a security review reads in one place what is open (`CELLMFG_OPEN_PATHS` replaces
it). The page (`service.ui`) serves exactly these files and paths; the security middleware
(`service.web.security`) matches open paths exactly.
"""

from __future__ import annotations

# Kubernetes probes and Prometheus need no secret.
PROBE_PATHS: tuple[str, ...] = ("/livez", "/readyz", "/metrics")

UI_PATH = "/ui"
# Exactly these files of the page are served (not its module, nor its byte code): name -> media type.
UI_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",  # the API docs' Swagger UI settings (docs.html)
}
# Every path the page is answered at.
UI_PATHS: tuple[str, ...] = (UI_PATH, f"{UI_PATH}/", *(f"{UI_PATH}/{name}" for name in UI_FILES))

# BentoML's Swagger UI assets that the API docs page loads (bentoml/_internal/server/static_content).
DOCS_ASSETS = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
               "favicon-light-32x32.png", "favicon-dark-32x32.png")
DOCS_PATHS: tuple[str, ...] = ("/", "/docs", "/docs.json", *(f"/static_content/{name}" for name in DOCS_ASSETS))

# The page's files and the API docs hold no data, and a browser cannot send a token for them.
DEFAULT_OPEN_PATHS: tuple[str, ...] = (*PROBE_PATHS, *UI_PATHS, *DOCS_PATHS)
