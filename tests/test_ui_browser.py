"""The page at /ui in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a real
`bentoml serve` of the fake models: what the page shows must be what the API answers.

- Choose NMC, enter the example recipe, predict: every number on the page (prediction, interval, SHAP base value
  and contributions, model version and test MAPE) equals the API's JSON for the same request; one API call.
- A lab's own chemistry (lfp) is offered beside the paper's, and a lab's own model with a target and a feature of
  its own is offered as a single model, answered by POST /predict/{name}, with the same checks of the numbers.
- An out-of-range value is flagged beside the field before anything is sent, and the answer names it.
- "What if": one parameter changed, the prediction moves by what the API says, one call, no page load.
- Batch: a CSV file uploaded and sent as it is (text/csv, Accept: text/csv) in one call, out-of-domain rows
  highlighted, the table sorts, the service's scored CSV downloads with the API's numbers and the extra column kept.
- With a token on the server: the page asks for it, says so clearly when it is wrong, works once it is right, and
  keeps it for the tab only.
- The page loads only its own files (nothing from elsewhere), every control has a label, the layout fits a tablet.
- The design tab (on a tablet): a reachable two-target NMC design with solid content fixed shows exactly the API's
  recipes in its order (settings, predictions, intervals, training-range flag), the fixed value as given and the
  reachable ranges, in one call; a selected recipe's SHAP waterfalls equal the API's; "use this recipe" fills the
  prediction form, whose Predict then answers the recipe's numbers. An impossible target shows the API's 422
  message, reachable range and closest recipe; a refused tolerance (400) is named beside its field.

Screenshots go to the pytest temporary folder `ui-screenshots*` of the session (printed at the end of each test),
or to CELLMFG_UI_SCREENSHOTS when set. First paint is measured and written there as `timings.json`, not asserted
(speed goals live in scripts/bench*). Playwright never downloads a browser here: it launches /usr/bin/chromium
(or CELLMFG_CHROMIUM), which scripts/integration_deps.sh installs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from cellmfg.contract import write_bundle
from service.formats.schemas import EXAMPLE_INPUT, GDL_EXAMPLE_INPUT
from testkit.fakes import custom_model, fake_models, lfp_models
from testkit.processes import ServerProcess, cellmfg_server, clean_env, start_local_server, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")]

TOKEN = "ui-test-token-0123456789abcdef"
FEATURES = list(EXAMPLE_INPUT["rows"][0])
RECIPE: dict[str, float] = dict(EXAMPLE_INPUT["rows"][0])  # NMC, inside the training range of every feature
TARGETS = ("density_g_cm3", "mass_loading_mg_cm2")
TABLET = {"width": 820, "height": 1180}  # a 10.9" tablet held upright, in CSS pixels


def _chromium() -> str:
    path = os.environ.get("CELLMFG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Debian's chromium is not installed (scripts/integration_deps.sh installs it as root)")
    return path


def _shown(value: float) -> float:
    """What the page shows for `value`: four significant digits; floating-point residue below 1e-10 (the SHAP value
    of a feature a net ignores) as 0."""
    return 0.0 if abs(value) < 1e-10 else float(f"{value:.4g}")


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: one server without and one with a token, one browser


# A lab's own model with a target and a feature of its own: served by name only, at POST /predict/{name}.
OWN_RANGES = {"am_wt_pct": (88.0, 95.0), "calender_temperature_c": (20.0, 90.0)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's eight fakes, a lab's own chemistry (lfp) and a lab's own single model (porosity_lfp_onnx)."""
    folder = tmp_path_factory.mktemp("ui-bundle")
    porosity = custom_model("porosity", "lfp", OWN_RANGES, units={"calender_temperature_c": "°C"}, level=0.35)
    write_bundle([*fake_models(), *lfp_models(), porosity], folder)
    return folder


def _explanations_answer(url: str, headers: dict[str, str]) -> bool:
    body = {"chemistry": "nmc", "rows": [RECIPE], "explain": True}
    return httpx.post(f"{url}/predict/electrode", json=body, headers=headers, timeout=30).status_code == 200


def _serve(folder: Path, bundle: Path, token: str = "") -> Iterator[ServerProcess]:
    server, _ = start_local_server(folder, bundle, token=token)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Explanations may still be warming up after /readyz; the page would show that as an error.
        wait_for(lambda: _explanations_answer(server.url, headers), 240, "explanations", interval=1.0,
                 on_timeout=server.log_tail)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory.mktemp("ui-server"), bundle)


@pytest.fixture(scope="module")
def token_server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory.mktemp("ui-token-server"), bundle, token=TOKEN)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("CELLMFG_UI_SCREENSHOTS")
    if chosen:
        folder = Path(chosen)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("ui-screenshots")


class Page:
    """A browser tab on the service, recording every request it makes beyond the page's own files."""

    def __init__(self, browser: Any, server: ServerProcess, viewport: dict[str, int] | None = None) -> None:
        self.server = server
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 1000},
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.api_calls: list[tuple[str, str]] = []
        self.foreign: list[str] = []
        self.console_errors: list[str] = []
        self.in_flight = 0
        self.page.on("request", self._request)
        self.page.on("requestfinished", self._done)
        self.page.on("requestfailed", self._done)
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    def _request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob"):
            return
        if f"{parts.scheme}://{parts.netloc}" != self.server.url:
            self.foreign.append(request.url)
        elif not parts.path.startswith("/ui"):
            self.api_calls.append((request.method, parts.path))
            self.in_flight += 1

    def _done(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if f"{parts.scheme}://{parts.netloc}" == self.server.url and not parts.path.startswith("/ui"):
            self.in_flight -= 1

    def open(self) -> None:
        self.page.goto(f"{self.server.url}/ui")  # without the slash, as people type it
        assert self.page.url == f"{self.server.url}/ui/"

    def calls_during(self, action: Any, settle_ms: int = 300) -> list[tuple[str, str]]:
        """The API calls `action` made: its own waits, then until no call is in flight and none starts for
        `settle_ms` (a late second call would show up here)."""
        before = len(self.api_calls)
        action()
        while True:
            seen = len(self.api_calls)
            self.page.wait_for_timeout(settle_ms)
            if self.in_flight == 0 and len(self.api_calls) == seen:
                return self.api_calls[before:]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any, server: ServerProcess) -> Iterator[Page]:
    page = Page(browser, server)
    yield page
    assert not page.foreign, f"the page loaded something from elsewhere: {page.foreign}"
    assert not page.console_errors, f"errors in the browser console: {page.console_errors}"
    page.close()


def _api(server: ServerProcess, body: dict[str, Any], token: str = "") -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{server.url}/predict/electrode", json=body, headers=headers, timeout=60)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def _models(server: ServerProcess, token: str = "") -> dict[str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{server.url}/models", headers=headers, timeout=30).raise_for_status().json()
    return {m["name"]: m for m in answer["models"]}


def _choose_nmc(tab: Page) -> None:
    tab.page.wait_for_selector("#pick:not([hidden])")
    calls = tab.calls_during(lambda: (tab.page.select_option("#family", "electrode"),
                                      tab.page.select_option("#dataset", "nmc")))
    assert calls == [], "choosing a dataset must not call the API: /models already said what is served"


def _fill(tab: Page, recipe: dict[str, float]) -> None:
    for name, value in recipe.items():
        tab.page.fill(f"#f-{name}", repr(value))


def _number(tab: Page, selector: str) -> tuple[float, float]:
    """(exact value the page holds, number it shows) of one element."""
    node = tab.page.locator(selector)
    return float(node.get_attribute("data-value") or "nan"), float(node.inner_text())


def _check_answer(tab: Page, scope: str, answer: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
    """Every number of the single-recipe answer under `scope` equals the API's `answer`."""
    prediction = answer["predictions"][0]
    for column in TARGETS:
        card = f"{scope} [data-target='{column}']"
        exact, shown = _number(tab, f"{card} .prediction")
        assert exact == prediction[column] and shown == _shown(prediction[column])
        low, high = prediction["interval"][column]
        assert _number(tab, f"{card} .interval-low") == (low, _shown(low))
        assert _number(tab, f"{card} .interval-high") == (high, _shown(high))
        ref = answer["models"]["density" if column.startswith("density") else "mass_loading"]
        text = tab.page.inner_text(f"{card} .model-ref")
        mape = models[ref["name"]]["test_mape_pct"]
        assert f"{ref['name']} v{ref['version']} @{ref['alias']}" in text and f"test MAPE {_shown(mape):g} %" in text
        explanation = prediction.get("explanation")
        if explanation:
            figure = tab.page.locator(f"{card} svg.waterfall")
            assert float(figure.get_attribute("data-base") or "nan") == explanation[column]["base_value"]
            assert float(figure.get_attribute("data-prediction") or "nan") == prediction[column]
            bars = {bar.get_attribute("data-feature"): float(bar.get_attribute("data-contribution") or "nan")
                    for bar in figure.locator("rect.bar").all()}
            assert bars == explanation[column]["contributions"]


# ---------------------------------------------------------------------------------------------------------------
# Tests


def test_nmc_example_recipe_shows_the_api_numbers(tab: Page, server: ServerProcess, shots: Path) -> None:
    calls = tab.calls_during(lambda: (tab.open(), tab.page.wait_for_selector(".status.ok")))
    assert calls == [("GET", "/models")], f"opening the page makes exactly one API call, got {calls}"
    # Milliseconds from navigation: first paint, and the page ready to use (GET /models answered and shown).
    paint = tab.page.evaluate("""() => ({
        ...Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, Math.round(e.startTime)])),
        'dom-content-loaded': Math.round(performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd),
        'models-shown': Math.round(performance.getEntriesByName('cellmfg:models-shown')[0].startTime)})""")
    _choose_nmc(tab)
    _fill(tab, RECIPE)
    # Keyboard only: Enter in a field submits the recipe.
    calls = tab.calls_during(lambda: (tab.page.focus(f"#f-{FEATURES[-1]}"), tab.page.keyboard.press("Enter"),
                                      tab.page.wait_for_selector("#result-body .target")))
    assert calls == [("POST", "/predict/electrode")]

    body = {"chemistry": "nmc", "rows": [RECIPE], "explain": True, "interval": True}
    answer = _api(server, body)
    models = _models(server)
    _check_answer(tab, "#result-body", answer, models)
    assert answer["predictions"][0]["in_domain"]
    assert tab.page.get_attribute("#result-body .verdict", "data-in-domain") == "true"
    info = tab.page.inner_text("#model-info")
    for ref in answer["models"].values():
        assert ref["name"] in info
    tab.page.screenshot(path=str(shots / "1-nmc-prediction.png"), full_page=True)
    (shots / "timings.json").write_text(json.dumps({"paint_ms": paint}, indent=2))
    print(f"\nscreenshots: {shots}; first paint: {paint}")


def test_a_labs_own_chemistry_and_single_model_are_offered(tab: Page, server: ServerProcess, shots: Path) -> None:
    tab.open()
    tab.page.wait_for_selector("#pick:not([hidden])")
    served = _models(server)
    listed = httpx.get(f"{server.url}/models", timeout=30).json()["datasets"]["electrode"]
    datasets = tab.page.eval_on_selector_all("#dataset option", "options => options.map(o => o.value)")
    assert datasets == listed and "lfp" in datasets  # the electrode datasets, as /models lists them
    families = tab.page.eval_on_selector_all("#family option", "options => options.map(o => o.value)")
    assert families == ["electrode", "gdl", "model"]

    calls = tab.calls_during(lambda: (tab.page.select_option("#family", "model"),
                                      tab.page.select_option("#dataset", "porosity_lfp_onnx")))
    assert calls == []
    assert tab.page.is_hidden("#views"), "a single model has no design endpoint: no design tab"
    labels = tab.page.eval_on_selector_all("#fields label", "labels => labels.map(l => l.textContent)")
    assert labels == ["am_wt_pct [wt%]", "calender_temperature_c [°C]"]
    recipe = {"am_wt_pct": 90.0, "calender_temperature_c": 95.0}  # 95 °C: outside the trained 20-90 °C
    _fill(tab, recipe)
    assert tab.page.locator(".feature.outside").count() == 1
    calls = tab.calls_during(lambda: (tab.page.click("#predict"), tab.page.wait_for_selector("#result-body .target")))
    assert calls == [("POST", "/predict/porosity_lfp_onnx")]
    body = {"rows": [recipe], "explain": True, "interval": True}
    answer = httpx.post(f"{server.url}/predict/porosity_lfp_onnx", json=body, timeout=60).raise_for_status().json()
    prediction = answer["predictions"][0]
    card = "#result-body [data-target='porosity']"
    assert _number(tab, f"{card} .prediction") == (prediction["porosity"], _shown(prediction["porosity"]))
    bars = {bar.get_attribute("data-feature"): float(bar.get_attribute("data-contribution") or "nan")
            for bar in tab.page.locator(f"{card} rect.bar").all()}
    assert bars == prediction["explanation"]["porosity"]["contributions"]
    assert [o["feature"] for o in prediction["out_of_domain"]] == ["calender_temperature_c"]
    assert tab.page.get_attribute("#result-body .verdict", "data-in-domain") == "false"
    assert f"test MAPE {_shown(served['porosity_lfp_onnx']['test_mape_pct']):g} %" in tab.page.inner_text(card)
    tab.page.screenshot(path=str(shots / "7-own-model.png"), full_page=True)


def test_a_gdl_prediction_shows_the_api_numbers(tab: Page, server: ServerProcess) -> None:
    tab.open()
    tab.page.wait_for_selector("#pick:not([hidden])")
    tab.page.select_option("#family", "gdl")
    tab.page.select_option("#dataset", "gdl1000")
    recipe = dict(GDL_EXAMPLE_INPUT["rows"][0])
    _fill(tab, recipe)
    calls = tab.calls_during(lambda: (tab.page.click("#predict"), tab.page.wait_for_selector("#result-body .target")))
    assert calls == [("POST", "/predict/gdl")]
    body = {"dataset": "gdl1000", "rows": [recipe], "explain": True, "interval": True}
    answer = httpx.post(f"{server.url}/predict/gdl", json=body, timeout=60).raise_for_status().json()
    prediction = answer["predictions"][0]
    card = "#result-body [data-target='tortuosity']"
    assert _number(tab, f"{card} .prediction") == (prediction["tortuosity"], _shown(prediction["tortuosity"]))
    low, high = prediction["interval"]["tortuosity"]
    assert _number(tab, f"{card} .interval-low") == (low, _shown(low))
    assert _number(tab, f"{card} .interval-high") == (high, _shown(high))
    figure = tab.page.locator(f"{card} svg.waterfall")
    assert float(figure.get_attribute("data-base") or "nan") == prediction["explanation"]["tortuosity"]["base_value"]


def test_what_if_moves_the_prediction_without_a_reload(tab: Page, server: ServerProcess, shots: Path) -> None:
    tab.open()
    _choose_nmc(tab)
    _fill(tab, RECIPE)
    tab.calls_during(lambda: (tab.page.click("#predict"), tab.page.wait_for_selector("#result-body .target")))
    tab.page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page were reloaded

    tab.page.select_option("#whatif-feature", "roll_gap_um")
    changed = {**RECIPE, "roll_gap_um": 150.0}
    calls = tab.calls_during(lambda: (tab.page.fill("#whatif-value", "150"), tab.page.press("#whatif-value", "Tab"),
                                      tab.page.wait_for_selector("#whatif-body .target")))
    assert calls == [("POST", "/predict/electrode")]
    assert tab.page.evaluate("() => window.__sameDocument") is True

    before = _api(server, {"chemistry": "nmc", "rows": [RECIPE], "interval": True})
    after = _api(server, {"chemistry": "nmc", "rows": [changed], "interval": True})
    _check_answer(tab, "#whatif-body", after, _models(server))
    for column in TARGETS:
        delta = float(tab.page.get_attribute(f"#whatif-body [data-target='{column}'] .delta", "data-value") or "nan")
        assert delta == after["predictions"][0][column] - before["predictions"][0][column]
        assert delta != 0.0
    # The recipe form itself is unchanged until the user keeps the new value.
    assert float(tab.page.input_value("#f-roll_gap_um")) == RECIPE["roll_gap_um"]
    tab.page.click("#whatif-keep")
    assert float(tab.page.input_value("#f-roll_gap_um")) == 150.0
    tab.page.screenshot(path=str(shots / "2-what-if.png"), full_page=True)


def test_an_out_of_range_value_is_flagged_and_named(tab: Page, server: ServerProcess, shots: Path) -> None:
    tab.open()
    _choose_nmc(tab)
    calls = tab.calls_during(lambda: _fill(tab, {**RECIPE, "roll_gap_um": 250.0}))
    assert calls == [], "the field is checked in the page, before anything is sent"
    field = tab.page.locator(".feature[data-feature='roll_gap_um']")
    assert "outside" in (field.get_attribute("class") or "")
    assert "Outside the training range" in tab.page.inner_text("#w-roll_gap_um")
    assert tab.page.get_attribute("#f-roll_gap_um", "aria-invalid") == "true"
    assert tab.page.get_attribute("#f-roll_gap_um", "aria-describedby") == "r-roll_gap_um w-roll_gap_um"
    # The other fields stay unmarked.
    assert tab.page.locator(".feature.outside").count() == 1

    tab.calls_during(lambda: (tab.page.click("#predict"), tab.page.wait_for_selector("#result-body .target")))
    answer = _api(server, {"chemistry": "nmc", "rows": [{**RECIPE, "roll_gap_um": 250.0}], "explain": True,
                           "interval": True})
    prediction = answer["predictions"][0]
    assert not prediction["in_domain"]
    verdict = tab.page.locator("#result-body .verdict")
    assert verdict.get_attribute("data-in-domain") == "false"
    named = [node.get_attribute("data-feature") for node in verdict.locator("li").all()]
    assert named == [o["feature"] for o in prediction["out_of_domain"]] == ["roll_gap_um"]
    _check_answer(tab, "#result-body", answer, _models(server))
    tab.page.screenshot(path=str(shots / "3-out-of-range.png"), full_page=True)

    # A physically impossible value is refused in the page, naming the allowed range; nothing is sent.
    calls = tab.calls_during(lambda: (tab.page.fill("#f-am_wt_pct", "120"), tab.page.click("#predict")))
    assert calls == []
    assert "Not physically possible: allowed 0 – 100 wt%" in tab.page.inner_text("#w-am_wt_pct")
    assert tab.page.evaluate("() => document.activeElement.id") == "f-am_wt_pct"
    tab.page.screenshot(path=str(shots / "3b-impossible-value.png"), full_page=True)


def test_a_csv_batch_is_scored_sorted_and_downloaded(tab: Page, server: ServerProcess, shots: Path,
                                                     tmp_path: Path) -> None:
    rows = [
        {**RECIPE, "comma_gap_um": 150.0},
        {**RECIPE, "roll_gap_um": 250.0},  # outside the training range
        {**RECIPE, "am_wt_pct": 90.0},
        {**RECIPE, "solid_content_pct": 50.0, "roll_gap_um": 60.0},
    ]
    source = tmp_path / "coater-run.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", *FEATURES])
        for i, row in enumerate(rows):
            writer.writerow([f"S-{i + 1}", *(row[name] for name in FEATURES)])

    tab.open()
    _choose_nmc(tab)
    calls = tab.calls_during(lambda: tab.page.set_input_files("#batch-file", str(source)))
    assert calls == []
    tab.page.wait_for_function("() => document.getElementById('batch-text').value.includes('S-4')")
    requests: list[Any] = []
    tab.page.on("request", lambda r: requests.append(r) if "/predict/" in r.url else None)
    calls = tab.calls_during(lambda: (tab.page.click("#batch-score"),
                                      tab.page.wait_for_selector("#batch-download:not([hidden])")))
    assert calls == [("POST", "/predict/electrode")]
    # The file went to the service as CSV (its cells come back exactly as written, below), scored as CSV.
    (sent,) = requests
    assert sent.headers["content-type"] == "text/csv" and sent.headers["accept"] == "text/csv"
    assert dict(parse_qsl(urlsplit(sent.url).query)) == {"chemistry": "nmc", "interval": "true"}

    answer = _api(server, {"chemistry": "nmc", "rows": rows, "interval": True})
    table = tab.page.locator("#batch-table tbody tr")
    assert table.count() == len(rows)
    highlighted = [int(r.get_attribute("data-row") or -1) for r in tab.page.locator("#batch-table tr.ood").all()]
    assert highlighted == [i for i, p in enumerate(answer["predictions"]) if not p["in_domain"]] == [1]

    # Sort by density: the rows appear in the API's density order, then reversed.
    headers = tab.page.locator("#batch-table thead button")
    names = [h.inner_text() for h in headers.all()]
    density = headers.nth(names.index("density_g_cm3_predicted"))
    densities = [p["density_g_cm3"] for p in answer["predictions"]]
    ascending = sorted(range(len(rows)), key=lambda i: densities[i])
    calls = tab.calls_during(density.click)
    assert calls == [], "sorting happens in the page"
    order = [int(r.get_attribute("data-row") or -1) for r in table.all()]
    assert order == ascending
    column = names.index("density_g_cm3_predicted") + 1
    assert tab.page.get_attribute(f"#batch-table th:nth-child({column})", "aria-sort") == "ascending"
    tab.page.keyboard.press("Enter")  # the focused header button, from the keyboard: descending
    order = [int(r.get_attribute("data-row") or -1) for r in table.all()]
    assert order == ascending[::-1]
    tab.page.screenshot(path=str(shots / "4-batch.png"), full_page=True)

    with tab.page.expect_download() as download_info:
        tab.page.click("#batch-download")
    download = download_info.value
    assert download.suggested_filename == "coater-run-scored.csv"
    saved = tmp_path / "scored.csv"
    download.save_as(str(saved))
    scored = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [r["sample_id"] for r in scored] == ["S-1", "S-2", "S-3", "S-4"]
    for row, prediction, sent_row in zip(scored, answer["predictions"], rows, strict=True):
        for name in FEATURES:
            assert row[name] == str(sent_row[name])  # the cell as the file had it
        for column in TARGETS:
            assert float(row[f"{column}_predicted"]) == prediction[column]
            assert (float(row[f"{column}_low"]), float(row[f"{column}_high"])) == tuple(prediction["interval"][column])
        assert row["in_domain"] == str(prediction["in_domain"]).lower()
        assert row["out_of_domain"] == ";".join(o["feature"] for o in prediction["out_of_domain"])


def test_a_token_is_asked_once_and_a_wrong_one_is_named(browser: Any, token_server: ServerProcess,
                                                        shots: Path) -> None:
    tab = Page(browser, token_server)
    try:
        calls = tab.calls_during(lambda: (tab.open(), tab.page.wait_for_selector("#auth:not([hidden])")))
        assert calls == [("GET", "/models")]  # answered 401: the page then asks for the token
        assert tab.page.evaluate("() => document.activeElement.id") == "token"

        tab.page.fill("#token", "not-the-token-of-this-server")
        calls = tab.calls_during(lambda: (tab.page.press("#token", "Enter"),
                                          tab.page.wait_for_selector("#token-error:not(:empty)")))
        assert calls == [("GET", "/models")]
        message = tab.page.inner_text("#token-error")
        assert "not accepted" in message, message
        assert tab.page.is_hidden("#pick")
        assert tab.page.evaluate("() => sessionStorage.getItem('cellmfg.apiToken')") is None
        tab.page.screenshot(path=str(shots / "5-wrong-token.png"), full_page=True)

        tab.page.fill("#token", TOKEN)
        calls = tab.calls_during(lambda: (tab.page.click("#token-form button[type=submit]"),
                                          tab.page.wait_for_selector("#auth[hidden]", state="attached")))
        assert calls == [("GET", "/models")]
        _choose_nmc(tab)
        _fill(tab, RECIPE)
        calls = tab.calls_during(lambda: (tab.page.click("#predict"),
                                          tab.page.wait_for_selector("#result-body .target")))
        assert calls == [("POST", "/predict/electrode")]
        answer = _api(token_server, {"chemistry": "nmc", "rows": [RECIPE], "explain": True, "interval": True},
                      token=TOKEN)
        _check_answer(tab, "#result-body", answer, _models(token_server, token=TOKEN))

        # Kept for this tab: a reload needs no token; another tab asks again.
        assert tab.page.evaluate("() => sessionStorage.getItem('cellmfg.apiToken')") == TOKEN
        tab.page.reload()
        tab.page.wait_for_selector(".status.ok")
        assert tab.page.is_hidden("#auth")
        other = tab.context.new_page()
        other.goto(f"{token_server.url}/ui/")
        other.wait_for_selector("#auth:not([hidden])")
        other.close()
        assert not tab.foreign and not [e for e in tab.console_errors if "401" not in e]
    finally:
        tab.close()


def test_every_control_is_labelled_and_the_page_fits_a_tablet(browser: Any, server: ServerProcess,
                                                              shots: Path) -> None:
    tab = Page(browser, server, viewport=TABLET)
    try:
        tab.open()
        _choose_nmc(tab)
        _fill(tab, RECIPE)
        tab.calls_during(lambda: (tab.page.click("#predict"), tab.page.wait_for_selector("#result-body .target")))
        # A pasted batch: its wide table scrolls in its own box, the page stays as wide as the screen.
        header = ",".join(["sample_id", *FEATURES])
        lines = [",".join([f"T-{i}", *(str(RECIPE[name]) for name in FEATURES)]) for i in range(3)]
        tab.page.fill("#batch-text", "\n".join([header, *lines]) + "\n")
        calls = tab.calls_during(lambda: (tab.page.click("#batch-score"),
                                          tab.page.wait_for_selector("#batch-download:not([hidden])")))
        assert calls == [("POST", "/predict/electrode")]
        assert tab.page.locator("#batch-table tbody tr").count() == 3
        overflow = tab.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a tablet screen"

        unlabelled = tab.page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button, a')]
            .filter(e => e.offsetParent !== null)
            .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim()))
            .map(e => e.outerHTML.slice(0, 80))""")
        assert unlabelled == []
        # Tab order reaches every visible control: model, recipe, what if, batch and the table's sort buttons.
        tab.page.focus("#family")
        reached: set[str] = set()
        sort_buttons = 0
        for _ in range(80):
            tab.page.keyboard.press("Tab")
            focused = tab.page.evaluate("() => [document.activeElement.id, document.activeElement.className]")
            reached.add(focused[0])
            sort_buttons += focused[1] == "sort"
        expected = {"dataset", *(f"f-{name}" for name in FEATURES), "predict", "reset", "whatif-feature",
                    "whatif-slider", "whatif-value", "whatif-keep", "batch-file", "batch-text", "batch-score",
                    "batch-download"}
        assert expected <= reached, f"not reached with Tab: {expected - reached}"
        assert sort_buttons >= tab.page.locator("#batch-table thead button").count()
        tab.page.screenshot(path=str(shots / "6-tablet.png"), full_page=True)
        assert not tab.foreign and not tab.console_errors
    finally:
        tab.close()


# ---------------------------------------------------------------------------------------------------------------
# The design tab: wanted values in, the API's ranked recipes out

DESIGN_TARGETS = {"mass_loading_mg_cm2": {"value": 14.0, "tolerance_pct": 3.0},
                  "density_g_cm3": {"value": 2.1, "tolerance_pct": 3.0}}  # reachable with the fake NMC models
DESIGN_FIXED = {"solid_content_pct": 60.0}


def _design_api(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/design/electrode", json=body, timeout=60)


def _open_design(tab: Page) -> None:
    tab.open()
    _choose_nmc(tab)
    calls = tab.calls_during(lambda: tab.page.click("#tab-design"))
    assert calls == [], "switching to the design tab needs no API call"
    assert tab.page.get_attribute("#tab-design", "aria-selected") == "true"
    assert tab.page.is_hidden("#view-predict") and tab.page.is_visible("#design-form")


def _fill_design(tab: Page, targets: dict[str, dict[str, float]], fixed: dict[str, float]) -> None:
    for column, goal in targets.items():
        tab.page.fill(f"#dt-{column}", repr(goal["value"]))
        tab.page.fill(f"#dtol-{column}", repr(goal["tolerance_pct"]))
    for name, value in fixed.items():
        tab.page.check(f"#dfix-{name}")
        tab.page.fill(f"#dfv-{name}", repr(value))


def _sent_bodies(tab: Page) -> list[Any]:
    bodies: list[Any] = []
    tab.page.on("request", lambda r: bodies.append(r.post_data_json) if "/design/" in r.url else None)
    return bodies


def _forget_refusal(tab: Page, status: int) -> None:
    """Chromium logs every 4xx answer to the console; the one the test asked for is expected, any other is not."""
    expected = f"the server responded with a status of {status}"
    refusals = [e for e in tab.console_errors if expected in e]
    assert len(refusals) == 1, tab.console_errors
    tab.console_errors.remove(refusals[0])


def _recipe_rows(tab: Page, scope: str, recipes: list[dict[str, Any]], free: list[str]) -> None:
    """The recipe table under `scope` holds exactly `recipes`, in their order: settings of the free parameters,
    each target's prediction and 90 % interval, whether it lies in the training range."""
    rows = tab.page.locator(f"{scope} table.recipes tbody tr")
    assert rows.count() == len(recipes)
    headers = [h.get_attribute("data-feature") for h in rows.nth(0).locator("td[data-feature]").all()]
    assert headers == free, "one column per free parameter, in the API's order"
    for i, recipe in enumerate(recipes):
        row = rows.nth(i)
        if "rank" in recipe:
            assert row.get_attribute("data-rank") == str(recipe["rank"])
        for name in free:
            cell = row.locator(f"td[data-feature='{name}']")
            assert float(cell.get_attribute("data-value") or "nan") == recipe["settings"][name]
            assert float(cell.inner_text()) == _shown(recipe["settings"][name])
        prediction = recipe["prediction"]
        for column in TARGETS:
            cell = f"{scope} table.recipes tbody tr:nth-child({i + 1}) td[data-target='{column}']"
            assert _number(tab, f"{cell} .prediction") == (prediction[column], _shown(prediction[column]))
            low, high = prediction["interval"][column]
            assert _number(tab, f"{cell} .interval-low") == (low, _shown(low))
            assert _number(tab, f"{cell} .interval-high") == (high, _shown(high))
        flag = row.locator("td.in-range").get_attribute("data-in-range")
        assert flag == str(prediction["in_domain"]).lower()


def test_a_design_shows_the_api_recipes_and_fills_the_form(browser: Any, server: ServerProcess,
                                                           shots: Path) -> None:
    tab = Page(browser, server, viewport=TABLET)  # designed at the coater, on a tablet
    try:
        _open_design(tab)
        # Keyboard: the arrow keys move between the tabs, as in any tab list.
        tab.page.focus("#tab-design")
        tab.page.keyboard.press("ArrowLeft")
        assert tab.page.get_attribute("#tab-predict", "aria-selected") == "true"
        assert tab.page.evaluate("() => document.activeElement.id") == "tab-predict"
        tab.page.keyboard.press("ArrowRight")
        assert tab.page.get_attribute("#tab-design", "aria-selected") == "true"

        _fill_design(tab, DESIGN_TARGETS, DESIGN_FIXED)
        assert tab.page.is_disabled("#dfv-am_wt_pct"), "a parameter left unticked is searched, not sent"
        sent = _sent_bodies(tab)
        calls = tab.calls_during(lambda: (tab.page.click("#design-run"),
                                          tab.page.wait_for_selector("#design-body table.recipes")))
        assert calls == [("POST", "/design/electrode")]
        request = {"chemistry": "nmc", "targets": DESIGN_TARGETS, "fixed": DESIGN_FIXED, "explain": True, "k": 5}
        assert sent == [request]

        answer = _design_api(server, request).raise_for_status().json()
        recipes = answer["recipes"]
        assert len(recipes) >= 2, "the fake NMC models reach this design several ways"
        free = list(answer["search"]["free"])
        assert "solid_content_pct" not in free
        _recipe_rows(tab, "#design-body", recipes, free)
        # The fixed value is shown as given, and every recipe keeps it.
        fixed = tab.page.locator("#design-body .design-fixed-list li[data-feature='solid_content_pct']")
        assert float(fixed.get_attribute("data-value") or "nan") == 60.0
        assert "solid_content_pct = 60 %" in fixed.inner_text()
        assert {r["settings"]["solid_content_pct"] for r in recipes} == {60.0}
        # The reachable range of each target under the fixed parameters.
        for column in TARGETS:
            row = f"#design-body table.reachable tr[data-target='{column}']"
            reach = answer["reachable"][column]
            assert _number(tab, f"{row} .reach-min") == (reach["min"], _shown(reach["min"]))
            assert _number(tab, f"{row} .reach-max") == (reach["max"], _shown(reach["max"]))

        # Selecting the second recipe shows its SHAP waterfalls with the page's renderer; no API call.
        chosen = recipes[1]
        calls = tab.calls_during(lambda: (tab.page.click("#design-body tr[data-rank='2'] button.pick"),
                                          tab.page.wait_for_selector("#design-detail svg.waterfall")))
        assert calls == []
        assert tab.page.get_attribute("#design-body tr[data-rank='2'] button.pick", "aria-pressed") == "true"
        scoped = {"models": answer["models"], "predictions": [chosen["prediction"]]}
        _check_answer(tab, "#design-detail", scoped, _models(server))

        overflow = tab.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the design tab is {overflow} px wider than a tablet screen"
        unlabelled = tab.page.evaluate("""() => [...document.querySelectorAll('input, select, button')]
            .filter(e => e.offsetParent !== null)
            .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim()))
            .map(e => e.outerHTML.slice(0, 80))""")
        assert unlabelled == []
        tab.page.screenshot(path=str(shots / "8-design.png"), full_page=True)

        # "Use this recipe": its settings in the prediction form, the predict tab shown; Predict answers its numbers.
        calls = tab.calls_during(lambda: tab.page.click("#design-use"))
        assert calls == []
        assert tab.page.get_attribute("#tab-predict", "aria-selected") == "true"
        assert tab.page.is_visible("#recipe-form")
        for name in FEATURES:
            assert float(tab.page.input_value(f"#f-{name}")) == chosen["settings"][name]
        calls = tab.calls_during(lambda: (tab.page.click("#predict"),
                                          tab.page.wait_for_selector("#result-body .target")))
        assert calls == [("POST", "/predict/electrode")]
        for column in TARGETS:
            exact, _ = _number(tab, f"#result-body [data-target='{column}'] .prediction")
            assert exact == chosen["prediction"][column]
        assert not tab.foreign and not tab.console_errors
    finally:
        tab.close()


def test_an_impossible_design_shows_the_reachable_range(tab: Page, server: ServerProcess, shots: Path) -> None:
    _open_design(tab)
    targets = {"mass_loading_mg_cm2": {"value": 200.0, "tolerance_pct": 3.0}}
    _fill_design(tab, targets, DESIGN_FIXED)
    calls = tab.calls_during(lambda: (tab.page.click("#design-run"),
                                      tab.page.wait_for_selector("#design-body .design-infeasible")))
    assert calls == [("POST", "/design/electrode")]
    _forget_refusal(tab, 422)
    response = _design_api(server, {"chemistry": "nmc", "targets": targets, "fixed": DESIGN_FIXED, "k": 5})
    assert response.status_code == 422
    answer = response.json()
    assert tab.page.inner_text("#design-body .design-infeasible") == answer["error"]
    reach = answer["reachable"]["mass_loading_mg_cm2"]
    row = "#design-body table.reachable tr[data-target='mass_loading_mg_cm2']"
    assert _number(tab, f"{row} .reach-min") == (reach["min"], _shown(reach["min"]))
    assert _number(tab, f"{row} .reach-max") == (reach["max"], _shown(reach["max"]))
    assert reach["max"] < 200.0
    free = [name for name in FEATURES if name not in DESIGN_FIXED]
    _recipe_rows(tab, "#design-body", [answer["closest"]], free)
    tab.page.screenshot(path=str(shots / "9-design-impossible.png"), full_page=True)


def test_a_bad_design_value_is_named_beside_its_field(tab: Page, server: ServerProcess) -> None:
    _open_design(tab)
    # Nothing wanted: said in the page, nothing sent.
    calls = tab.calls_during(lambda: tab.page.click("#design-run"))
    assert calls == []
    assert "at least one target" in tab.page.inner_text("#de-dt-density_g_cm3")

    targets = {"mass_loading_mg_cm2": {"value": 14.0, "tolerance_pct": 0.0}}
    _fill_design(tab, targets, {})
    calls = tab.calls_during(lambda: (tab.page.click("#design-run"),
                                      tab.page.wait_for_selector("#design-body .error")))
    assert calls == [("POST", "/design/electrode")]
    _forget_refusal(tab, 400)
    response = _design_api(server, {"chemistry": "nmc", "targets": targets, "k": 5, "explain": True})
    assert response.status_code == 400
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["targets", "mass_loading_mg_cm2", "tolerance_pct"]
    assert tab.page.inner_text("#de-dtol-mass_loading_mg_cm2") == problem["msg"]
    assert tab.page.get_attribute("#dtol-mass_loading_mg_cm2", "aria-invalid") == "true"
    assert tab.page.evaluate("() => document.activeElement.id") == "dtol-mass_loading_mg_cm2"
    assert tab.page.get_attribute("#dt-density_g_cm3", "aria-invalid") is None, "the earlier mark is cleared"


def test_a_measurement_is_recorded_for_a_predicted_recipe_and_shown_as_live_accuracy(
        tab: Page, server: ServerProcess, shots: Path) -> None:
    """Issue 25: "Record measurement" under a prediction posts the lab's values with the row's prediction_id (one
    call), and the "Live accuracy" view then shows the model's outcomes and MAPE as GET /models says."""
    tab.open()
    _choose_nmc(tab)
    _fill(tab, RECIPE)
    tab.page.click("#predict")
    tab.page.wait_for_selector("#record-form")
    prediction_id = tab.page.inner_text("#prediction-id")
    shown = float(tab.page.get_attribute("#result-body [data-target='density_g_cm3'] .prediction", "data-value")
                  or "nan")
    tab.page.fill("#measured-density_g_cm3", repr(shown * 1.1))
    calls = tab.calls_during(lambda: (tab.page.click("#record"),
                                      tab.page.wait_for_selector("#record-status:text-is('Recorded.')")))
    assert calls[0] == ("POST", "/outcomes") and calls[1:] == [("GET", "/models")], calls
    live = _models(server)["density_nmc_onnx"]["live"]
    assert live["n_outcomes"] >= 1
    row = tab.page.locator("#live-body tr[data-model='density_nmc_onnx']")
    assert row.locator("td").nth(2).inner_text() == str(live["n_outcomes"])
    # Its error over time: one dot per outcome of the API's series, the rolling MAPE and the contract's test band.
    since = live["mape_since_promotion"]
    assert row.locator("td").nth(8).inner_text().startswith(f"{_shown(since['mape_pct']):g} %")
    chart = tab.page.locator("#live-body figure[data-model='density_nmc_onnx'] svg.live-chart")
    series = live["error_series"]
    assert chart.locator("circle.ape").count() == len(series["ape_pct"]) == min(live["n_outcomes"], 200)
    assert float(chart.get_attribute("data-rolling") or "nan") == series["rolling_mape_pct"][-1]
    assert float((chart.get_attribute("data-band") or "nan,nan").split(",")[1]) == live["test_mape_upper_pct"]
    exported = httpx.get(f"{server.url}/outcomes", params={"model": "density_nmc_onnx"}, timeout=30).text
    assert prediction_id in exported and repr(shown * 1.1) in exported
    tab.page.screenshot(path=str(shots / "9-record-measurement.png"), full_page=True)


def test_a_model_promoted_after_the_page_opened_appears_when_the_tab_regains_focus(
        browser: Any, tmp_path: Path) -> None:
    """The page re-reads the catalogue on focus (and every minute): a chemistry promoted while the page is open is
    offered without a reload, and nothing else on the page changes."""
    folder = tmp_path / "bundle"
    write_bundle(fake_models(), folder)
    server = cellmfg_server(clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), CELLMFG_POLL_SECONDS="1"),
                            tmp_path / "server.log", bundle=folder).start()
    try:
        server.wait_ready(timeout=240)
        page = Page(browser, server)
        page.open()
        page.page.wait_for_selector("#pick:not([hidden])")
        assert "lfp" not in page.page.eval_on_selector_all("#dataset option", "o => o.map(x => x.value)")
        page.page.evaluate("window.__sameDocument = true")
        write_bundle([*fake_models(), *lfp_models()], folder)  # the lab promotes its own chemistry
        wait_for(lambda: "lfp" in httpx.get(f"{server.url}/models", timeout=10).json()["datasets"]["electrode"],
                 timeout=60, what="the service to serve lfp", on_timeout=server.log_tail)
        calls = page.calls_during(lambda: page.page.evaluate("window.dispatchEvent(new Event('focus'))"))
        assert calls == [("GET", "/models")]
        datasets = page.page.eval_on_selector_all("#dataset option", "o => o.map(x => x.value)")
        assert "lfp" in datasets
        assert page.page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        assert not page.console_errors, page.console_errors
        page.close()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------
# The plan tab: which experiments next (POST /suggest/electrode)


def test_the_plan_tab_shows_the_api_suggestions(tab: Page, server: ServerProcess) -> None:
    tab.open()
    _choose_nmc(tab)
    calls = tab.calls_during(lambda: tab.page.click("#tab-plan"))
    assert calls == [], "switching to the plan tab needs no API call"
    assert tab.page.is_hidden("#view-predict") and tab.page.is_visible("#plan-form")
    tab.page.fill("#plan-k", "3")
    tab.page.check("#pfix-am_wt_pct")
    tab.page.fill("#pfv-am_wt_pct", "94")
    tab.page.click("#plan-run")
    tab.page.wait_for_selector("#plan-body table.plan-table tbody tr")
    body = {"chemistry": "nmc", "k": 3, "fixed": {"am_wt_pct": 94.0}, "window": {}}
    answer = httpx.post(f"{server.url}/suggest/electrode", json=body, timeout=60).raise_for_status().json()
    rows = tab.page.locator("#plan-body table.plan-table tbody tr")
    assert rows.count() == len(answer["suggestions"]) == 3
    free = list(answer["search"]["free"])
    for i, suggestion in enumerate(answer["suggestions"]):
        cells = rows.nth(i).locator("td")
        assert float(cells.nth(0).inner_text()) == _shown(suggestion["settings"][free[0]])
    assert answer["strategy_reason"] in tab.page.inner_text("#plan-body")
    # A window upside down is refused by the service and the field is marked.
    tab.page.fill("#pwl-density_g_cm3", "3")
    tab.page.fill("#pwh-density_g_cm3", "2")
    tab.page.click("#plan-run")
    tab.page.wait_for_selector("#pwl-density_g_cm3[aria-invalid=true]")
    assert "low 3 is not below high 2" in tab.page.inner_text("#de-pwl-density_g_cm3")
    _forget_refusal(tab, 400)


# ---------------------------------------------------------------------------------------------------------------
# Champion and challenger: "Promote challenger" (POST /models/{name}/challenge/promote), only with the token


def test_the_challenger_is_promoted_from_the_page_with_the_token_and_an_override_needs_a_reason(
        browser: Any, tmp_path: Path, shots: Path) -> None:
    """A server following an SQLite MLflow registry (fake NMC champions v1, a density challenger v2) with a token:
    the panel's "Promote challenger" is enabled once the page holds the token, promotes a challenger the lab's
    measurements show better (the registry's aliases move), and for one they do not it shows the gate's refusal
    and promotes only with a typed reason, recorded on the version. ~20 s (its own server)."""
    import numpy as np
    from mlflow import MlflowClient

    from cellmfg.domain import TASKS, feature_columns
    from testkit.fakes import fake_model, in_range_rows, served_prediction
    from testkit.registry import register_model, sqlite_tracking_uri

    nmc = [t for t in TASKS if t.dataset == "nmc"]
    density = next(t for t in nmc if t.target.task == "density")
    uri = sqlite_tracking_uri(tmp_path)
    for task in nmc:
        register_model(uri, fake_model(task), "champion", tmp_path / "artifacts")
    better = fake_model(density, "2", alias="challenger", salt=7)
    register_model(uri, better, "challenger", tmp_path / "artifacts")
    env = clean_env(MLFLOW_TRACKING_URI=uri, BENTOML_HOME=str(tmp_path / "bentoml"), CELLMFG_POLL_SECONDS="1",
                    CELLMFG_LEDGER_DIR=str(tmp_path / "ledger"), CELLMFG_API_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def measure(seed: int, truth: Any) -> None:
        """40 NMC recipes (two punches a sheet) answered, and measured as `truth` predicts them."""
        rows = [{**{c: float(v) for c, v in zip(feature_columns("electrode"), x, strict=True)},
                 "group_id": f"sheet-{seed}-{i // 2}"} for i, x in enumerate(in_range_rows("nmc", 40, seed=seed))]
        answer = httpx.post(f"{served.url}/predict/electrode", json={"chemistry": "nmc", "rows": rows},
                            headers=auth, timeout=60).raise_for_status().json()
        x = np.array([[row[c] for c in feature_columns("electrode")] for row in rows])
        outcomes = [{"prediction_id": p["prediction_id"], "values": {"density_g_cm3": float(v)}}
                    for p, v in zip(answer["predictions"], served_prediction(truth, x), strict=True)]
        httpx.post(f"{served.url}/outcomes", json={"outcomes": outcomes}, headers=auth,
                   timeout=60).raise_for_status()

    def aliases() -> dict[str, str]:
        return {a: str(v) for a, v in registry.get_registered_model("density_nmc_onnx").aliases.items()}

    served = cellmfg_server(env, tmp_path / "server.log", port=3902).start()
    tab: Page | None = None
    try:
        served.wait_ready(timeout=240)
        measure(1, better)
        tab = Page(browser, served)
        tab.open()
        tab.page.wait_for_selector("#auth:not([hidden])")
        tab.page.fill("#token", TOKEN)
        tab.page.click("#token-form button[type=submit]")
        tab.page.wait_for_selector("#auth[hidden]", state="attached")
        _choose_nmc(tab)
        tab.page.click("#challenger-compare")
        button = tab.page.locator("#challenger-body button.challenger-promote[data-model='density_nmc_onnx']")
        button.wait_for()
        assert button.is_enabled(), "the page holds the token: promotion is offered"
        calls = tab.calls_during(lambda: (button.click(), tab.page.wait_for_selector("#challenger-outcome p")))
        assert calls[0] == ("POST", "/models/density_nmc_onnx/challenge/promote"), calls
        said = tab.page.inner_text("#challenger-outcome")
        assert "v2 is champion (previous v1; the challenger is better" in said, said
        assert aliases() == {"champion": "2", "previous": "1"}
        assert registry.get_model_version("density_nmc_onnx", "2").tags["promoted_by"] == "live_comparison"

        # A challenger the lab's measurements show worse: refused with the gate's reason, then an override.
        register_model(uri, fake_model(density, "3", alias="challenger", salt=9), "challenger",
                       tmp_path / "artifacts")
        wait_for(lambda: httpx.get(f"{served.url}/models/density_nmc/challenge", headers=auth,
                                   timeout=10).json().get("challenger", {}).get("version") == "3"
                 and _champion_version(served, auth) == "2", 60, "challenger v3 beside champion v2")
        measure(2, better)  # the line measures what the champion (v2) predicts
        tab.page.click("#challenger-compare")
        button = tab.page.locator("#challenger-body button.challenger-promote[data-model='density_nmc_onnx']")
        tab.page.wait_for_selector("#challenger-body tr[data-model='density_nmc_onnx'] td:text-is('v3')")
        button.click()
        tab.page.wait_for_selector("#override-reason")
        assert "density_nmc_onnx v3 not promoted: the challenger is worse" in tab.page.inner_text("#challenger-outcome")
        assert tab.page.is_disabled("#override-submit"), "an override needs a reason first"
        tab.page.fill("#override-reason", "binder lot 7 is the new normal")
        tab.page.click("#override-submit")
        tab.page.wait_for_selector("#challenger-outcome p.promoted")
        assert "override: binder lot 7 is the new normal" in tab.page.inner_text("#challenger-outcome")
        assert aliases() == {"champion": "3", "previous": "2"}
        tags = registry.get_model_version("density_nmc_onnx", "3").tags
        assert tags["promotion_override_reason"] == "binder lot 7 is the new normal"
        tab.page.screenshot(path=str(shots / "12-challenger-promoted.png"), full_page=True)
        # The browser logs every refused request: the 401 that asks for the token, the 404 of a model without a
        # challenger (the panel asks each model of the dataset), the gate's 409. Nothing else.
        expected = ("status of 401", "status of 404", "status of 409")
        assert not tab.foreign and not [e for e in tab.console_errors if not any(x in e for x in expected)]
    finally:
        if tab is not None:
            tab.close()
        served.stop()


def _champion_version(server: ServerProcess, headers: dict[str, str]) -> str | None:
    models = httpx.get(f"{server.url}/models", headers=headers, timeout=10).json()["models"]
    return next((str(m["version"]) for m in models if m["name"] == "density_nmc_onnx"), None)
