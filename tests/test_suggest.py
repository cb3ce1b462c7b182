"""Which experiment next (issue 24, item 3): `service.design.suggest` on served ensembles (testkit.ensembles) and on
single nets, the request schema's 400s, and the endpoints and command line on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from cellmfg.domain import DATASETS, feature_columns
from cellmfg.recipe_search import MIN_SEPARATION
from service.design.search import DesignInfeasibleError
from service.design.suggest import Suggester, SuggestProblem
from service.design.suggest_schemas import MAX_K, ElectrodeSuggestRequest, GdlSuggestRequest, suggest_problem
from service.engine.predict import Predictor
from testkit.ensembles import write_fake_ensemble_bundle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_ensemble_bundle(tmp_path_factory.mktemp("ensembles") / "bundle")


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    from service.commands.offline import offline_predictor, offline_settings

    predictor: Predictor = offline_predictor(offline_settings(bundle))
    return predictor


def _suggest(predictor: Predictor, **fields: Any) -> dict[str, Any]:
    problem = SuggestProblem(kind=fields.pop("kind", "electrode"), dataset=fields.pop("dataset", "nmc"),
                             k=fields.pop("k", 10), **fields)
    return Suggester(predictor).suggest(problem)


def _free_units(dataset: str, settings: list[dict[str, float]], free: list[str]) -> np.ndarray:
    ranges = DATASETS[dataset].ranges
    return np.array([[(s[c] - ranges[c][0]) / (ranges[c][1] - ranges[c][0]) for c in free] for s in settings])


def test_k_distinct_in_bounds_recipes_ranked_by_spread_each_answered_as_predict_does(predictor: Predictor) -> None:
    answer = _suggest(predictor, k=10, fixed={"am_wt_pct": 94.0})
    suggestions = answer["suggestions"]
    assert answer["strategy"] == "spread" and len(suggestions) == 10
    ranges = DATASETS["nmc"].ranges
    # What /predict answers for these settings (the same batch, so the same float32 sums), spread beside interval.
    rows = predictor.predict("electrode", "nmc", [s["settings"] for s in suggestions], interval=True)["predictions"]
    for s, row in zip(suggestions, rows, strict=True):
        assert s["settings"]["am_wt_pct"] == 94.0
        for column, value in s["settings"].items():
            assert ranges[column][0] <= value <= ranges[column][1], (column, value)
        assert s["prediction"]["in_domain"] is True and s["spread"] and s["why"].startswith("ensemble spread")
        assert s["prediction"] == row and row["spread"] == pytest.approx(s["spread"], rel=1e-5)
    scores = [s["score"] for s in suggestions]
    assert scores == sorted(scores, reverse=True)
    free = [c for c in feature_columns("electrode") if c not in ("am_wt_pct", "roll_speed_m_min")
            and ranges[c][1] > ranges[c][0]]
    units = _free_units("nmc", [s["settings"] for s in suggestions], free)
    for i in range(len(units)):
        for j in range(i):
            assert np.max(np.abs(units[i] - units[j])) >= MIN_SEPARATION - 1e-9, (i, j)


def test_the_chosen_recipes_are_where_the_ensemble_disagrees_most(predictor: Predictor) -> None:
    """The first suggestion's relative spread beats that of 95 % of random recipes in the same box."""
    answer = _suggest(predictor, k=3)
    rng = np.random.default_rng(1)
    ranges = DATASETS["nmc"].ranges
    columns = feature_columns("electrode")
    rows = [{c: float(rng.uniform(*ranges[c])) for c in columns} for _ in range(300)]
    random_answer = predictor.predict("electrode", "nmc", rows, interval=True)["predictions"]
    relative = [np.mean([r["spread"][t] / abs(r[t]) for t in r["spread"]]) for r in random_answer]
    assert answer["suggestions"][0]["score"] > np.quantile(relative, 0.95)


def test_a_window_ranks_by_the_chance_of_landing_in_it(predictor: Predictor) -> None:
    middle = predictor.predict("electrode", "nmc", [{c: float(np.mean(DATASETS["nmc"].ranges[c]))
                                                     for c in feature_columns("electrode")}])["predictions"][0]
    wanted = middle["density_g_cm3"]
    answer = _suggest(predictor, k=5, window={"density_g_cm3": (wanted * 0.98, wanted * 1.02)})
    assert answer["strategy"] == "window"
    chances = [s["score"] for s in answer["suggestions"]]
    assert all(0.0 <= c <= 1.0 for c in chances) and chances == sorted(chances, reverse=True)
    best = answer["suggestions"][0]["prediction"]["density_g_cm3"]
    assert wanted * 0.98 <= best <= wanted * 1.02 and chances[0] > 0.5
    assert "chance of landing inside the window" in answer["suggestions"][0]["why"]
    assert set(answer["reachable"]) == {"density_g_cm3"}


def test_a_window_no_recipe_reaches_is_refused_with_the_reachable_range(predictor: Predictor) -> None:
    with pytest.raises(DesignInfeasibleError) as refused:
        _suggest(predictor, window={"mass_loading_mg_cm2": (80.0, 90.0)})
    assert refused.value.status == 422
    assert "window.mass_loading_mg_cm2" in refused.value.message and "reachable" in refused.value.message
    reach = refused.value.reachable["mass_loading_mg_cm2"]
    assert reach["min"] < reach["max"] < 80.0


def test_single_nets_give_space_filling_suggestions_and_say_why(predictor: Predictor) -> None:
    answer = _suggest(predictor, dataset="graphite", k=6)  # graphite's fakes are single nets
    assert answer["strategy"] == "space_filling" and "no ensemble spread" in answer["strategy_reason"]
    assert len({tuple(s["settings"].values()) for s in answer["suggestions"]}) == 6
    assert all(s["score"] is None and s["spread"] is None for s in answer["suggestions"])


def test_gdl_suggestions_and_the_same_request_gives_the_same_recipes(predictor: Predictor) -> None:
    first = _suggest(predictor, kind="gdl", dataset="gdl1000", k=4, fixed={"fiber_diameter_um": 9.0})
    again = _suggest(predictor, kind="gdl", dataset="gdl1000", k=4, fixed={"fiber_diameter_um": 9.0})
    assert [s["settings"] for s in first["suggestions"]] == [s["settings"] for s in again["suggestions"]]
    assert first["strategy"] == "spread" and len(first["suggestions"]) == 4


@pytest.mark.parametrize(("body", "fragments"), [
    ({"chemistry": "nmc", "k": 0}, ["k", "greater than or equal to 1"]),
    ({"chemistry": "nmc", "k": 10**6}, ["k", f"less than or equal to {MAX_K}"]),
    ({"chemistry": "nmc", "fixed": {"solid_content_pct": 160}}, ["fixed.solid_content_pct = 160", "physical"]),
    ({"chemistry": "nmc", "window": {"density_g_cm3": {"low": 3.1, "high": 2.8}}},
     ["window.density_g_cm3", "low 3.1 is not below high 2.8"]),
    ({"chemistry": "nmc", "window": {"porosity": {"low": 0.1, "high": 0.2}}}, ["window.porosity", "unknown target"]),
    ({"chemistry": "nmc", "window": {"density_g_cm3": {"low": -1, "high": 2}}}, ["window.density_g_cm3.low = -1"]),
    ({"chemistry": "nmc", "bounds": {"roll_gap_um": {"min": 90, "max": 20}}}, ["bounds.roll_gap_um", "larger"]),
])
def test_bad_suggestion_input_names_the_field(body: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ValidationError) as error:
        ElectrodeSuggestRequest.model_validate(body)
    text = " ".join(e["msg"] for e in error.value.errors())
    for fragment in fragments:
        assert fragment in text, text


def test_a_valid_request_becomes_the_problem_the_search_takes() -> None:
    request = GdlSuggestRequest.model_validate({"dataset": "gdl1000", "k": 3, "window": {"tortuosity": {
        "low": 1.01, "high": 1.02}}, "bounds": {"compression_factor": {"min": 0.1, "max": 0.3}}})
    problem = suggest_problem("gdl", request.dataset, request.k, request.fixed, request.bounds, request.window,
                              request.explain)
    assert problem.window == {"tortuosity": (1.01, 1.02)} and problem.bounds == {"compression_factor": (0.1, 0.3)}
    assert problem.k == 3 and problem.explain is False


def _cli(*args: str) -> Any:
    import typer
    from typer.testing import CliRunner

    from service.cli import suggest

    app = typer.Typer()
    app.command("suggest")(suggest)
    app.command("unused")(lambda: None)
    return CliRunner().invoke(app, ["suggest", *args])


def test_cli_suggest_gives_the_services_suggestions_and_exit_codes(bundle: Path, predictor: Predictor) -> None:
    import json

    result = _cli("--chemistry", "nmc", "-k", "3", "--fix", "am_wt_pct=94", "--window", "density_g_cm3=1.5:2.5",
                  "--json", "--bundle", str(bundle))
    assert result.exit_code == 0, result.output
    offline = json.loads(result.stdout)
    served = _suggest(predictor, k=3, fixed={"am_wt_pct": 94.0}, window={"density_g_cm3": (1.5, 2.5)})
    assert [s["settings"] for s in offline["suggestions"]] == [s["settings"] for s in served["suggestions"]]
    table = _cli("--chemistry", "nmc", "-k", "2", "--bundle", str(bundle))
    assert table.exit_code == 0, table.output
    assert "strategy: spread" in table.stdout and "#2" in table.stdout and "spread" in table.stdout
    unreachable = _cli("--chemistry", "nmc", "--window", "mass_loading_mg_cm2=80:90", "--bundle", str(bundle))
    assert unreachable.exit_code == 1 and "reachable" in unreachable.stderr
    upside_down = _cli("--chemistry", "nmc", "--window", "density_g_cm3=3:2", "--bundle", str(bundle))
    assert upside_down.exit_code == 2 and "window.density_g_cm3: low 3 is not below high 2" in upside_down.stderr
    no_budget = _cli("--chemistry", "nmc", "-k", "0", "--bundle", str(bundle))
    assert no_budget.exit_code == 2 and "k: Input should be greater than or equal to 1" in no_budget.stderr


# ---------------------------------------------------------------------------------------------------------------
# The endpoints


@pytest.fixture(scope="module")
def client(bundle: Path) -> Any:
    from testkit.fakes import service_client

    with service_client(bundle, ledger=True) as test_client:
        yield test_client


def test_suggest_endpoint_answers_what_the_search_does_with_ids_to_post_measurements_against(
        client: Any, predictor: Predictor) -> None:
    from service.engine import metrics

    counted = metrics.sample(metrics.SUGGESTIONS, dataset="nmc", strategy="spread")
    timed = metrics.sample(metrics.SUGGEST_SECONDS, dataset="nmc")  # sums _count and _sum samples
    body = {"chemistry": "nmc", "k": 5, "fixed": {"am_wt_pct": 94.0}}
    response = client.post("/suggest/electrode", json=body)
    assert response.status_code == 200, response.text
    assert metrics.sample(metrics.SUGGESTIONS, dataset="nmc", strategy="spread") == counted + 1
    assert metrics.sample(metrics.SUGGEST_SECONDS, dataset="nmc") > timed + 1  # one more observation, > 0 s
    answer = response.json()
    offline = _suggest(predictor, k=5, fixed={"am_wt_pct": 94.0})
    assert [s["settings"] for s in answer["suggestions"]] == [s["settings"] for s in offline["suggestions"]]
    ids = [s["prediction_id"] for s in answer["suggestions"]]
    assert len(set(ids)) == 5 and all(ids)
    # A measurement of the first suggestion is accepted against its id: the loop closes on suggested recipes too.
    measured = {"outcomes": [{"prediction_id": ids[0], "values": {"density_g_cm3": 2.1}}]}
    posted = client.post("/outcomes", json=measured)
    assert posted.status_code == 200, posted.text
    gdl = client.post("/suggest/gdl", json={"dataset": "gdl1000", "k": 2})
    assert gdl.status_code == 200 and gdl.json()["strategy"] == "spread"


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/suggest/electrode", {"chemistry": "nmc", "k": 0}, 400, "k: Input should be greater than or equal to 1"),
    ("/suggest/electrode", {"chemistry": "nmc", "k": 10**6}, 400, "k: Input should be less than or equal to 50"),
    ("/suggest/electrode", {"chemistry": "unobtainium"}, 400, "unobtainium"),
    ("/suggest/electrode", {"chemistry": "nmc", "fixed": {"roll_gap_um": -5}}, 400, "fixed.roll_gap_um = -5"),
    ("/suggest/electrode", {"chemistry": "nmc", "window": {"density_g_cm3": {"low": 3, "high": 2}}}, 400,
     "window.density_g_cm3: low 3 is not below high 2"),
    ("/suggest/electrode", {"chemistry": "nmc", "window": {"mass_loading_mg_cm2": {"low": 80, "high": 90}}}, 422,
     "reachable"),
    ("/suggest/gdl", {"dataset": "gdl1000", "bounds": {"thickness_um": {"min": 1, "max": 2}}}, 400,
     "bounds.thickness_um"),
])
def test_bad_suggestion_requests_are_refused_naming_the_field(client: Any, path: str, body: dict[str, Any],
                                                             status: int, fragment: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.text


def test_a_suggestion_request_must_be_json(client: Any) -> None:
    response = client.post("/suggest/electrode", content=b"chemistry,k\nnmc,3\n", headers={"Content-Type": "text/csv"})
    assert response.status_code == 415 and "suggestion request as application/json" in response.text
    assert client.post("/suggest/electrode", content=b"{}" + b" " * 70_000,
                       headers={"Content-Type": "application/json"}).status_code == 413


def test_candidates_the_models_answer_alike_count_once_in_rank_order() -> None:
    """Two recipes that differ only in a parameter the nets ignore get the same answer: one experiment, not two."""
    from service.design.suggest import _distinct_answers

    p = np.array([[1.0, 2.0], [1.5, 2.5], [1.0, 2.0], [3.0, 1.0]])
    spread = np.array([[0.1, 0.2], [0.3, 0.1], [0.1, 0.2], [0.1, 0.2]])
    assert _distinct_answers(np.array([2, 0, 1, 3]), p, spread).tolist() == [2, 1, 3]
    assert _distinct_answers(np.array([3, 1, 0, 2]), p, None).tolist() == [3, 1, 0]
