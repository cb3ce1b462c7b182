"""The page's routes in the service (in-process, fast tier): /ui serves exactly the page's files, answers them
without a token when the API needs one, loads nothing from elsewhere, and /docs leads to the API docs.
The page's behaviour in a real browser is tests/test_ui_browser.py (integration tier)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from service.ui import UI_DIR, UI_FILES
from service.web.open_paths import UI_PATHS
from service.web.security import SecurityMiddleware, SecuritySettings
from testkit.fakes import service_client, write_fake_bundle

TOKEN = "ui-routes-token-0123456789"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service with fake models behind the security middleware with a token and the default open paths."""
    bundle = write_fake_bundle(tmp_path_factory.mktemp("bundle"))
    settings = SecuritySettings.from_env({"CELLMFG_API_TOKEN": TOKEN})
    with service_client(bundle, wrap=lambda app: SecurityMiddleware(app, settings)) as test_client:
        yield test_client


def test_the_page_is_served_without_a_token_and_the_api_still_needs_one(client: TestClient) -> None:
    moved = client.get("/ui", follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["location"] == "ui/"  # relative: kept behind a path prefix
    for path, name in (("/ui/", "index.html"), *((f"/ui/{n}", n) for n in UI_FILES)):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == UI_FILES[name]
        assert response.content == (UI_DIR / name).read_bytes()
        assert response.headers["cache-control"] == "no-cache"
    assert set(UI_PATHS) == {"/ui", "/ui/", *(f"/ui/{n}" for n in UI_FILES)}
    # Only the page's files: not its Python module, nor anything else in the folder.
    for path in ("/ui/__init__.py", "/ui/../service.py", "/ui/missing.js"):
        assert client.get(path).status_code in (401, 404), path
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_docs_leads_to_the_api_docs(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # Open, like the docs themselves: a browser following the page's "API docs" link sends no token (issue 22).
    assert client.get("/docs", follow_redirects=False).status_code == 307
    moved = client.get("/docs", headers=auth, follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["location"] == "./"
    assert client.get("/docs", headers=auth).url.path == "/"  # followed: the Swagger page
    docs = client.get("/", headers=auth)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/docs.json", headers=auth).json()
    assert not [path for path in spec["paths"] if path.startswith(("/ui", "/docs"))]


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Lab networks are often offline: no CDN, no web font, no external script (the SVG namespace is a name)."""
    for name in UI_FILES:
        text = (UI_DIR / name).read_text(encoding="utf-8")
        urls = set(re.findall(r"""(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s"'<>)]*""", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in text and "url(" not in text.replace("new URL(", ""), name
