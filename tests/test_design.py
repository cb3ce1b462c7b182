"""Recipe design (POST /design/electrode, /design/gdl, `cellmfg design`) in-process on the fake ONNX models.

Every recipe the service returns is sent back through POST /predict and must meet its targets there; the reachable
range is checked against an independent random sample of the same box through onnxruntime directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from cellmfg.domain import DATASETS, feature_columns
from cellmfg.recipe_search import MIN_SEPARATION
from service.design.schemas import (
    ELECTRODE_DESIGN_EXAMPLE,
    GDL_DESIGN_EXAMPLE,
    ElectrodeDesignResponse,
    GdlDesignResponse,
    InfeasibleDesign,
)
from service.engine import metrics
from testkit.fakes import fake_models, onnx_predict

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

NMC = DATASETS["nmc"]
ELECTRODE_COLUMNS = feature_columns("electrode")
# The fake NMC nets (testkit/fakes.py) reach about 12.4-16.1 mg/cm² and 1.8-2.4 g/cm³ over the NMC box;
# with this slurry, both targets at once are met by many recipes.
SLURRY = {"am_wt_pct": 94.0, "solid_content_pct": 60.0}
TWO_TARGETS = {"mass_loading_mg_cm2": {"value": 14.0, "tolerance_pct": 3.0},
               "density_g_cm3": {"value": 2.1, "tolerance_pct": 3.0}}


def _design(client: TestClient, body: dict[str, Any], kind: str = "electrode") -> Any:
    response = client.post(f"/design/{kind}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _predict(client: TestClient, kind: str, dataset: str, rows: list[dict[str, float]], explain: bool) -> Any:
    field = "chemistry" if kind == "electrode" else "dataset"
    response = client.post(f"/predict/{kind}", json={field: dataset, "rows": rows, "interval": True,
                                                     "explain": explain})
    assert response.status_code == 200, response.text
    return response.json()


def _check_recipes_through_predict(client: TestClient, kind: str, dataset: str, body: dict[str, Any],
                                   answer: dict[str, Any], in_domain: bool = True) -> None:
    """The must-show checks: each recipe, sent to /predict, meets every target within its tolerance, keeps every
    fixed parameter exactly, and (default bounds) is in domain; and the design's row is /predict's row."""
    recipes = answer["recipes"]
    assert recipes, answer
    assert len(recipes) <= body.get("k", 5)
    assert [r["rank"] for r in recipes] == list(range(1, len(recipes) + 1))
    rows = [r["settings"] for r in recipes]
    predicted = _predict(client, kind, dataset, rows, explain=body.get("explain", True))
    assert predicted["models"] == answer["models"]
    for recipe, row in zip(recipes, predicted["predictions"], strict=True):
        assert recipe["prediction"] == row  # the same shape and numbers as /predict, explanation included
        for column, goal in body["targets"].items():
            tolerance = abs(goal["value"]) * goal.get("tolerance_pct", 5.0) / 100
            assert abs(row[column] - goal["value"]) <= tolerance, (column, row[column], goal)
        for name, value in body.get("fixed", {}).items():
            assert recipe["settings"][name] == value  # exactly, not rounded
        assert row["in_domain"] is in_domain, row
        assert recipe["distance"] <= 1.0
    distances = [r["distance"] for r in recipes]
    assert distances == sorted(distances) or max(distances) - min(distances) <= 0.1 + 1e-9


def test_two_target_nmc_design_meets_the_targets_through_predict(client: TestClient) -> None:
    body = {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "k": 5, "explain": True}
    answer = _design(client, body)
    _check_recipes_through_predict(client, "electrode", "nmc", body, answer)
    assert len(answer["recipes"]) == 5
    recipe = answer["recipes"][0]
    explanation = recipe["prediction"]["explanation"]["density_g_cm3"]
    total = explanation["base_value"] + sum(explanation["contributions"].values())
    assert abs(total - recipe["prediction"]["density_g_cm3"]) <= 1e-4 * recipe["prediction"]["density_g_cm3"]
    search = answer["search"]
    assert search["fixed"] == SLURRY
    assert search["within_training_range"] is True and search["fixed_outside_training_range"] == []
    assert set(search["free"]) == set(ELECTRODE_COLUMNS) - set(SLURRY)
    for name, (low, high) in search["free"].items():
        assert (low, high) == NMC.ranges[name]
    assert answer["targets"]["mass_loading_mg_cm2"] == {"value": 14.0, "tolerance_pct": 3.0, "unit": "mg/cm²",
                                                        "low": pytest.approx(13.58), "high": pytest.approx(14.42)}


def test_recipes_are_diverse_and_roll_speed_stays_discrete(client: TestClient) -> None:
    answer = _design(client, {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "k": 8,
                              "explain": False})
    free = [name for name in answer["search"]["free"] if name not in answer["search"]["discrete"]]
    spans = np.array([answer["search"]["free"][name][1] - answer["search"]["free"][name][0] for name in free])
    points = np.array([[r["settings"][name] for name in free] for r in answer["recipes"]]) / spans
    for i in range(len(points)):
        for j in range(i):
            assert np.max(np.abs(points[i] - points[j])) >= MIN_SEPARATION - 1e-9, (i, j)
    assert answer["search"]["discrete"] == {"roll_speed_m_min": [0.27, 0.54]}
    assert {r["settings"]["roll_speed_m_min"] for r in answer["recipes"]} <= {0.27, 0.54}


def test_narrower_bounds_and_a_fixed_roll_speed_are_kept(client: TestClient) -> None:
    body = {"chemistry": "nmc", "targets": {"mass_loading_mg_cm2": {"value": 14.0, "tolerance_pct": 4.0}},
            "fixed": {**SLURRY, "roll_speed_m_min": 0.4}, "k": 3, "explain": False,
            "bounds": {"comma_gap_um": {"min": 150.0, "max": 250.0}, "roll_gap_um": {"min": 60.0, "max": 120.0}}}
    answer = _design(client, body)
    _check_recipes_through_predict(client, "electrode", "nmc", body, answer)
    for recipe in answer["recipes"]:
        assert 150.0 <= recipe["settings"]["comma_gap_um"] <= 250.0
        assert 60.0 <= recipe["settings"]["roll_gap_um"] <= 120.0
        assert recipe["settings"]["roll_speed_m_min"] == 0.4  # fixed between the two data settings: kept
    assert answer["search"]["discrete"] == {}


def test_a_parameter_the_data_holds_constant_stays_at_its_value(client: TestClient) -> None:
    body = {"chemistry": "graphite", "targets": {"mass_loading_mg_cm2": {"value": 14.0, "tolerance_pct": 5.0}},
            "k": 3, "explain": False}
    answer = _design(client, body)
    _check_recipes_through_predict(client, "electrode", "graphite", body, answer)
    assert answer["search"]["free"]["coating_speed_m_min"] == [0.3, 0.3] and answer["search"]["fixed"] == {}
    assert {r["settings"]["coating_speed_m_min"] for r in answer["recipes"]} == {0.3}


def test_gdl_design_meets_the_target_through_predict(client: TestClient) -> None:
    body = {"dataset": "gdl1000", "targets": {"tortuosity": {"value": 1.5, "tolerance_pct": 2.0}},
            "fixed": {"fiber_diameter_um": 9.0}, "k": 4, "explain": True}
    answer = _design(client, body, kind="gdl")
    _check_recipes_through_predict(client, "gdl", "gdl1000", body, answer)
    assert set(answer["reachable"]) == {"tortuosity"}


def test_a_fixed_value_outside_the_training_range_is_kept_and_said(client: TestClient) -> None:
    body = {"chemistry": "nmc", "targets": {"mass_loading_mg_cm2": {"value": 14.0, "tolerance_pct": 20.0}},
            "fixed": {"solid_content_pct": 70.0}, "k": 2, "explain": False}
    answer = _design(client, body)
    _check_recipes_through_predict(client, "electrode", "nmc", body, answer, in_domain=False)
    assert answer["search"]["within_training_range"] is False
    assert answer["search"]["fixed_outside_training_range"] == ["solid_content_pct"]
    for recipe in answer["recipes"]:
        assert [p["feature"] for p in recipe["prediction"]["out_of_domain"]] == ["solid_content_pct"]


def test_the_reachable_range_bounds_an_independent_sample_of_the_box(client: TestClient) -> None:
    answer = _design(client, {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "explain": False})
    rng = np.random.default_rng(7)
    x = np.array([[SLURRY.get(c, 0.0) for c in ELECTRODE_COLUMNS]] * 20_000)
    for j, column in enumerate(ELECTRODE_COLUMNS):
        if column not in SLURRY:
            low, high = NMC.ranges[column]
            x[:, j] = rng.choice([low, high], len(x)) if column == "roll_speed_m_min" else rng.uniform(low, high,
                                                                                                         len(x))
    for model in fake_models():
        if model.contract.dataset == "nmc":
            column = model.contract.target.column
            sample = onnx_predict(model, x)
            reach = answer["reachable"][column]
            slack = 1e-3 * (reach["max"] - reach["min"])
            assert reach["min"] - slack <= sample.min() and sample.max() <= reach["max"] + slack, (column, reach)
            # and the ends are reached, not just bounds: within 5 % of the range of what the sample found
            assert sample.min() - reach["min"] <= 0.05 * (reach["max"] - reach["min"])
            assert reach["max"] - sample.max() <= 0.05 * (reach["max"] - reach["min"])


def test_models_without_a_common_training_range_are_searched_over_both(tmp_path: Path) -> None:
    """A zero-shot net trained elsewhere (here: Si-graphite ranges) serving NMC mass loading beside the NMC density
    transfer: no recipe is in domain for both, the answer says so and the search spans both ranges."""
    from cellmfg.contract import write_bundle
    from service.cli import offline_predictor, server_environment
    from service.design.schemas import ElectrodeDesignRequest, design_problem
    from service.design.search import Designer
    from service.engine.config import Settings

    si_gra = DATASETS["si_gra"].ranges
    models = []
    for model in fake_models():
        if model.name == "mass_loading_nmc_onnx":
            features = [f.model_copy(update={"train_min": si_gra[f.name][0], "train_max": si_gra[f.name][1]})
                        for f in model.contract.features]
            model = model.model_copy(update={"contract": model.contract.model_copy(
                update={"features": features, "role": "zero_shot"})})
        models.append(model)
    write_bundle(models, tmp_path)
    designer = Designer(offline_predictor(Settings.from_env(server_environment(bundle=tmp_path))))
    request = ElectrodeDesignRequest.model_validate(
        {"chemistry": "nmc", "targets": {"density_g_cm3": {"value": 2.1, "tolerance_pct": 10.0}},
         "fixed": {"am_wt_pct": 94.0}, "k": 3, "explain": False})
    answer = designer.design(design_problem("electrode", "nmc", request.targets, request.fixed, request.bounds,
                                            request.k, request.explain))
    search = answer["search"]
    assert search["no_common_training_range"] == ["solid_content_pct"]
    assert search["free"]["solid_content_pct"] == (24.0, 66.0)
    assert search["fixed_outside_training_range"] == ["am_wt_pct"] and search["within_training_range"] is False
    assert answer["recipes"]
    for recipe in answer["recipes"]:
        assert recipe["prediction"]["in_domain"] is False
        assert abs(recipe["prediction"]["density_g_cm3"] - 2.1) <= 0.21


def test_the_same_request_gives_the_same_recipes(client: TestClient) -> None:
    body = {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "explain": False}
    first, second = _design(client, body), _design(client, body)
    assert [r["settings"] for r in first["recipes"]] == [r["settings"] for r in second["recipes"]]


def test_an_impossible_target_is_a_422_naming_the_reachable_range(client: TestClient) -> None:
    before = metrics.sample(metrics.DESIGNS_INFEASIBLE, dataset="nmc")
    body = {"chemistry": "nmc", "targets": {"mass_loading_mg_cm2": {"value": 40.0, "tolerance_pct": 3.0}},
            "fixed": SLURRY, "explain": False}
    response = client.post("/design/electrode", json=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    reach = answer["reachable"]["mass_loading_mg_cm2"]
    assert 0 < reach["min"] < reach["max"] < 40.0 * 0.97 and reach["unit"] == "mg/cm²"
    assert "targets.mass_loading_mg_cm2" in answer["error"]
    assert f"reachable {reach['min']:.4g} to {reach['max']:.4g} mg/cm²" in answer["error"]
    assert answer["detail"][0]["loc"] == ["targets", "mass_loading_mg_cm2"]
    closest = answer["closest"]
    assert closest["settings"]["am_wt_pct"] == 94.0 and closest["distance"] > 1.0
    assert closest["prediction"]["mass_loading_mg_cm2"] == pytest.approx(reach["max"], rel=0.02)
    assert metrics.sample(metrics.DESIGNS_INFEASIBLE, dataset="nmc") == before + 1


@pytest.mark.parametrize("value", [5e-324, 1e-300, 1e-12])
def test_an_absurdly_small_wanted_value_is_a_422_not_a_server_error(client: TestClient, value: float) -> None:
    response = client.post("/design/electrode", json={
        "chemistry": "nmc", "targets": {"density_g_cm3": {"value": value, "tolerance_pct": 0.01}}, "explain": False})
    assert response.status_code == 422, response.text
    assert response.json()["reachable"]["density_g_cm3"]["min"] > 0


def test_two_targets_reachable_alone_but_not_together_are_a_422(client: TestClient) -> None:
    # Each value sits at an end of its own reachable range; asking for the highest loading and the lowest density
    # at once is met by no single recipe of these nets (checked: the design says which ranges it found).
    alone = _design(client, {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "explain": False})
    reach = alone["reachable"]
    body = {"chemistry": "nmc", "fixed": SLURRY, "explain": False, "targets": {
        "mass_loading_mg_cm2": {"value": reach["mass_loading_mg_cm2"]["max"], "tolerance_pct": 0.5},
        "density_g_cm3": {"value": reach["density_g_cm3"]["min"], "tolerance_pct": 0.5}}}
    response = client.post("/design/electrode", json=body)
    assert response.status_code == 422, response.text
    assert "not all together" in response.json()["error"]


def test_metrics_count_designs_and_their_time(client: TestClient) -> None:
    designs = metrics.sample(metrics.DESIGNS, dataset="nmc")
    timed = metrics.sample(metrics.DESIGN_SECONDS, dataset="nmc")  # sums _count and _sum samples
    _design(client, {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "explain": False})
    assert metrics.sample(metrics.DESIGNS, dataset="nmc") == designs + 1
    assert metrics.sample(metrics.DESIGN_SECONDS, dataset="nmc") > timed + 1  # one more observation, > 0 s
    # (In-process, BentoML's /metrics needs its multiprocess directory; the exposition format is checked here.)
    text = generate_latest().decode()
    for name in ("cellmfg_designs_total", "cellmfg_designs_infeasible_total", "cellmfg_design_seconds_bucket"):
        assert name in text


def test_answers_match_the_documented_response_models(client: TestClient) -> None:
    electrode = _design(client, {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY})
    ElectrodeDesignResponse.model_validate(electrode)
    gdl = _design(client, {"dataset": "gdl1000", "targets": {"tortuosity": {"value": 1.5}}}, kind="gdl")
    GdlDesignResponse.model_validate(gdl)
    impossible = client.post("/design/electrode", json={
        "chemistry": "nmc", "targets": {"mass_loading_mg_cm2": {"value": 40.0}}, "explain": False})
    InfeasibleDesign.model_validate(impossible.json())


def test_openapi_documents_the_design_endpoints_with_examples(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    electrode = spec["paths"]["/design/electrode"]["post"]
    assert electrode["requestBody"]["content"]["application/json"]["schema"]["example"] == ELECTRODE_DESIGN_EXAMPLE
    gdl = spec["paths"]["/design/gdl"]["post"]
    assert gdl["requestBody"]["content"]["application/json"]["schema"]["example"] == GDL_DESIGN_EXAMPLE
    for operation in (electrode, gdl):
        assert {"200", "400", "422", "503"} <= set(operation["responses"])


def test_the_documented_examples_are_answered(client: TestClient) -> None:
    for kind, example in (("electrode", ELECTRODE_DESIGN_EXAMPLE), ("gdl", GDL_DESIGN_EXAMPLE)):
        response = client.post(f"/design/{kind}", json=example)
        # The fakes are not the trained nets: the example may be out of their reach, but never a 4xx of input.
        assert response.status_code in (200, 422), response.text
        assert set(response.json()["reachable"]) == set(example["targets"])


# ---------------------------------------------------------------------------------------------------------------
# Bad input: 400 naming the field


def _body(**changes: Any) -> dict[str, Any]:
    return {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "explain": False, **changes}


BAD_DESIGNS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown target", _body(targets={"porosity": {"value": 0.3}}),
     ["targets.porosity", "unknown target", "density_g_cm3, mass_loading_mg_cm2"]),
    ("a feature as target", _body(targets={"roll_gap_um": {"value": 80}}), ["targets.roll_gap_um", "a feature"]),
    ("no target", _body(targets={}), ["targets"]),
    ("zero tolerance", _body(targets={"density_g_cm3": {"value": 3.0, "tolerance_pct": 0}}),
     ["targets.density_g_cm3.tolerance_pct", "= 0", "more than 0"]),
    ("negative tolerance", _body(targets={"density_g_cm3": {"value": 3.0, "tolerance_pct": -2}}),
     ["targets.density_g_cm3.tolerance_pct", "= -2"]),
    ("subnormal tolerance", _body(targets={"density_g_cm3": {"value": 3.0, "tolerance_pct": 5e-324}}),
     ["targets.density_g_cm3.tolerance_pct", "from 0.01 to 50"]),
    ("target value not physical", _body(targets={"density_g_cm3": {"value": -1.0}}),
     ["targets.density_g_cm3.value", "-1", "g/cm³"]),
    ("target value a string", _body(targets={"density_g_cm3": {"value": "three"}}),
     ["targets.density_g_cm3.value", "'three'"]),
    ("fixed value above physical bound", _body(fixed={"solid_content_pct": 120.0}),
     ["fixed.solid_content_pct", "120", "[0, 100] %"]),
    ("fixed value below physical bound", _body(fixed={"roll_gap_um": -5.0}),
     ["fixed.roll_gap_um", "-5", "[0, 5000] µm"]),
    ("fixed value a string", _body(fixed={"solid_content_pct": "60"}), ["fixed.solid_content_pct", "'60'"]),
    ("fixed value a boolean", _body(fixed={"am_wt_pct": True}), ["fixed.am_wt_pct", "True"]),
    ("unknown fixed parameter", _body(fixed={"porosity": 0.3}), ["fixed.porosity", "unknown parameter"]),
    ("fixed target", _body(fixed={"density_g_cm3": 3.0}), ["fixed.density_g_cm3", "a target"]),
    ("bound outside the training range", _body(bounds={"comma_gap_um": {"min": 10.0, "max": 300.0}}),
     ["bounds.comma_gap_um", "[10, 300]", "training range [50, 400] µm"]),
    ("bound min above max", _body(bounds={"comma_gap_um": {"min": 300.0, "max": 100.0}}),
     ["bounds.comma_gap_um", "min 300 is larger than max 100"]),
    ("fixed and bounded", _body(bounds={"am_wt_pct": {"min": 90.0, "max": 95.0}}),
     ["bounds.am_wt_pct", "also fixed"]),
    ("roll speed bound without a data setting", _body(bounds={"roll_speed_m_min": {"min": 0.3, "max": 0.5}}),
     ["bounds.roll_speed_m_min", "0.27, 0.54"]),
    ("k zero", _body(k=0), ["k"]),
    ("unknown chemistry", _body(chemistry="lfp"), ["chemistry", "'lfp'"]),
    ("unknown top-level field", _body(rows=[]), ["rows"]),
]


@pytest.mark.parametrize(("case", "body", "fragments"), BAD_DESIGNS, ids=[c[0] for c in BAD_DESIGNS])
def test_bad_design_input_is_a_400_naming_the_field(client: TestClient, case: str, body: dict[str, Any],
                                                    fragments: list[str]) -> None:
    designs = metrics.sample(metrics.DESIGNS, dataset="nmc")
    response = client.post("/design/electrode", json=body)
    assert response.status_code == 400, (case, response.status_code, response.text)
    text = json.dumps(response.json(), ensure_ascii=False)
    for fragment in fragments:
        assert fragment in text, (case, fragment, text)
    assert metrics.sample(metrics.DESIGNS, dataset="nmc") == designs


RAW_BAD_DESIGNS = [
    ("empty body", "", ["targets", "chemistry"]),
    ("not JSON", "{chemistry: nmc", ["Invalid JSON"]),
    ("NaN target", '{"chemistry": "nmc", "targets": {"density_g_cm3": {"value": NaN}}}',
     ["targets.density_g_cm3.value", "finite"]),
    ("overflowing fixed value", '{"chemistry": "nmc", "targets": {"density_g_cm3": {"value": 2.1}}, '
                                '"fixed": {"am_wt_pct": 1e400}}', ["fixed.am_wt_pct", "inf"]),
]


@pytest.mark.parametrize(("case", "body", "fragments"), RAW_BAD_DESIGNS, ids=[c[0] for c in RAW_BAD_DESIGNS])
def test_unparseable_design_bodies_are_a_400(client: TestClient, case: str, body: str, fragments: list[str]) -> None:
    response = client.post("/design/electrode", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, (case, response.text)
    for fragment in fragments:
        assert fragment in response.text, (case, fragment, response.text)


@pytest.mark.parametrize("content_type", ["multipart/form-data", "application/x-www-form-urlencoded", "text/csv"])
def test_a_body_that_is_not_json_is_a_415(client: TestClient, content_type: str) -> None:
    response = client.post("/design/electrode", content=json.dumps(_body()),
                           headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    assert content_type in response.json()["error"] and "application/json" in response.json()["error"]


# ---------------------------------------------------------------------------------------------------------------
# `cellmfg design`: the same search on the bundle, offline


def _cli(*args: str) -> Any:
    """`cellmfg design ARGS` through Typer, as the console command mounts it."""
    import typer

    from service.cli import design

    app = typer.Typer()
    app.command("design")(design)
    app.command("unused")(lambda: None)  # two commands: Typer then dispatches by name, as the real CLI does
    return CliRunner().invoke(app, ["design", *args])


def test_cli_design_gives_the_services_recipes(client: TestClient, bundle: Path) -> None:
    body = {"chemistry": "nmc", "targets": TWO_TARGETS, "fixed": SLURRY, "k": 5, "explain": False}
    served = _design(client, body)
    result = _cli("--chemistry", "nmc", "--target", "mass_loading_mg_cm2=14:3", "--target", "density_g_cm3=2.1:3",
                  "--fix", "am_wt_pct=94", "--fix", "solid_content_pct=60", "--no-explain", "--json",
                  "--bundle", str(bundle))
    assert result.exit_code == 0, result.output
    offline = json.loads(result.stdout)
    assert [r["settings"] for r in offline["recipes"]] == [r["settings"] for r in served["recipes"]]
    assert [r["prediction"] for r in offline["recipes"]] == [r["prediction"] for r in served["recipes"]]

    table = _cli("--chemistry", "nmc", "--target", "mass_loading_mg_cm2=14", "--fix", "solid_content_pct=60",
                 "--bundle", str(bundle), "-k", "2")
    assert table.exit_code == 0, table.output
    assert "reachable" in table.stdout and "roll_gap_um" in table.stdout and "#2" in table.stdout


def test_cli_design_exit_codes(bundle: Path) -> None:
    impossible = _cli("--chemistry", "nmc", "--target", "mass_loading_mg_cm2=40", "--bundle", str(bundle),
                      "--no-explain")
    assert impossible.exit_code == 1
    assert "reachable" in impossible.stderr and "closest recipe" in impossible.stderr
    bad = _cli("--chemistry", "nmc", "--target", "mass_loading_mg_cm2=20:0", "--fix", "solid_content_pct=160",
               "--bundle", str(bundle))
    assert bad.exit_code == 2
    assert "targets.mass_loading_mg_cm2.tolerance_pct" in bad.stderr and "fixed.solid_content_pct" in bad.stderr
    both = _cli("--chemistry", "nmc", "--dataset", "gdl1000", "--target", "tortuosity=1.5", "--bundle", str(bundle))
    assert both.exit_code == 2


@pytest.mark.parametrize("command", ["design", "predict"])
def test_a_given_bundle_wins_over_a_registry_in_the_environment(command: str, bundle: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One model-source rule for the offline commands (service.commands.offline): `--bundle` is what the user asked
    for, so a registry in MLFLOW_TRACKING_URI is not consulted, for `cellmfg design` as for `cellmfg predict`."""
    import service.commands.design
    import service.commands.predict

    module = service.commands.design if command == "design" else service.commands.predict
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://registry.invalid:5000")
    chosen: list[Any] = []
    real_predictor = module.offline_predictor

    def recording_predictor(settings: Any) -> Any:
        chosen.append(settings)
        return real_predictor(settings)

    monkeypatch.setattr(module, "offline_predictor", recording_predictor)
    if command == "design":
        result = _cli("--chemistry", "nmc", "--target", "mass_loading_mg_cm2=14", "--bundle", str(bundle), "-k", "1",
                      "--no-explain")
    else:
        import typer

        from service.cli import predict

        csv = bundle.parent / "rows.csv"
        columns = feature_columns("electrode")
        csv.write_text(",".join(columns) + "\n" + ",".join(str(DATASETS["nmc"].ranges[c][0]) for c in columns) + "\n")
        app = typer.Typer()
        app.command("predict")(predict)
        app.command("unused")(lambda: None)
        result = CliRunner().invoke(app, ["predict", "--chemistry", "nmc", "--csv", str(csv), "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    assert [(s.bundle, s.tracking_uri) for s in chosen] == [(bundle.resolve(), None)]
