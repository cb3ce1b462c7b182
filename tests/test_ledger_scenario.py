"""Scenario (issue 25) on real processes: a `cellmfg serve` answers 300 NMC predictions for a batch, the QC lab posts
the measured densities as CSV, the live-MAPE gauge at /metrics crosses 1.5x the test-MAPE band when the batch
drifted (+6 % density, as a new binder lot gives) and `promtool test rules` fires the alert on the recorded
series; without the drift the gauge stays under the threshold and the alert stays quiet.

The service here serves the fake bundle (testkit.fakes), whose nets know nothing of the generator's physics. So
the measurements are made relative to the served model: measured = predicted x (the generator's measured density /
its noise-free density for the same recipe, datagen.electrode_process) x 1.06 when drifted. The model is thereby
exactly as good as the line's scatter allows, and its contract's test MAPE is set to what it scores on undrifted
generated datasets (10 seeds: mean and sd), as a real contract's would be. A +6 % shift on a model with ~2.6 %
test MAPE must alert; the line's own scatter must not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest

from cellmfg.contract import LoadedModel, Metrics, write_bundle
from testkit.processes import PROJECT_ROOT, cellmfg_server, clean_env, wait_for

pytestmark = pytest.mark.integration

N_PREDICTIONS = 300
DRIFT = 1.06
MODEL = "density_nmc_onnx"


def _scatter_ratio(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(feature rows, measured / noise-free density) of one generated NMC dataset."""
    from cellmfg.domain import feature_columns
    from datagen.electrode_process import generate_electrode, process_model

    frame = generate_electrode("nmc", seed)
    ratio = frame["density_g_cm3"].to_numpy() / process_model(frame, "nmc")["density_g_cm3"].to_numpy()
    return frame[feature_columns("electrode")].to_numpy(), ratio


def _bundle(out: Path) -> Path:
    """The fake bundle, the NMC density model's contract carrying the test MAPE the line's scatter allows."""
    from testkit.fakes import fake_models

    mapes = [100.0 * float(np.mean(np.abs(_scatter_ratio(100 + seed)[1] - 1.0))) for seed in range(10)]
    metrics = Metrics(test_mape_pct=mapes[0], test_mape_pct_mean=float(np.mean(mapes)),
                      test_mape_pct_std=float(np.std(mapes, ddof=1)), n_splits=len(mapes))
    models = [LoadedModel(name=m.name, version=m.version, alias=m.alias, onnx_bytes=m.onnx_bytes,
                          contract=m.contract.model_copy(update={"metrics": metrics}))
              if m.name == MODEL else m for m in fake_models()]
    write_bundle(models, out)
    return out


def _description() -> str:
    """The alert's description as deploy/cellmfg-rules.yml writes it (promtool compares every annotation)."""
    import yaml

    rules = yaml.safe_load((PROJECT_ROOT / "deploy" / "cellmfg-rules.yml").read_text())
    return next(str(rule["annotations"]["description"]) for group in rules["groups"] for rule in group["rules"]
                if rule.get("alert") == "CellmfgLiveMapeAboveTestBand")


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{MODEL}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("drifted", [True, False], ids=["drifted", "steady"])
def test_a_drifted_batch_crosses_the_live_mape_alert_and_a_steady_one_stays_quiet(tmp_path: Path,
                                                                                  drifted: bool) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    from cellmfg.domain import feature_columns

    bundle = _bundle(tmp_path / "bundle")
    features, ratio = _scatter_ratio(1)
    picks = np.random.default_rng(0).integers(0, len(ratio), N_PREDICTIONS)
    env = clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), CELLMFG_POLL_SECONDS="0",
                    CELLMFG_LEDGER_DIR=str(tmp_path / "ledger"), CELLMFG_LEDGER_REFRESH_SECONDS="1")
    with cellmfg_server(env, tmp_path / "server.log", bundle=bundle) as server:
        server.wait_ready()
        rows = [{**dict(zip(feature_columns("electrode"), features[i].tolist(), strict=True)),
                 "sample_id": f"batch-7/{n}", "group_id": f"sheet-{i}"} for n, i in enumerate(picks)]
        answer = httpx.post(f"{server.url}/predict/electrode", json={"chemistry": "nmc", "rows": rows,
                                                                     "operator": "line 2"}, timeout=60)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        shift = DRIFT if drifted else 1.0
        measured = [p["density_g_cm3"] * float(ratio[i]) * shift for p, i in zip(predictions, picks, strict=True)]
        body = "prediction_id,density_g_cm3,note\n" + "".join(
            f"{p['prediction_id']},{value!r},QC lab\n" for p, value in zip(predictions, measured, strict=True))
        posted = httpx.post(f"{server.url}/outcomes", content=body, headers={"content-type": "text/csv"},
                            timeout=60)
        assert posted.status_code == 200 and posted.json()["written"] == N_PREDICTIONS, posted.text

        def gauges() -> tuple[float, float, float] | None:
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            values = (_gauge(text, "cellmfg_live_mape_pct"), _gauge(text, "cellmfg_model_test_mape_upper_pct"),
                      _gauge(text, "cellmfg_live_outcomes"))
            return values if values[2] == N_PREDICTIONS and None not in values else None  # type: ignore[return-value]

        live_mape, band, outcomes = wait_for(gauges, timeout=30, what="the live gauges at /metrics")
    threshold = 1.5 * band
    assert (live_mape > threshold) is drifted, (live_mape, threshold)

    # The recorded series through the deployed alert rules: firing after 5 minutes when drifted, else quiet.
    expected = textwrap.indent(textwrap.dedent(f"""\
        - exp_labels: {{severity: warning, model: {MODEL}}}
          exp_annotations:
            summary: "{MODEL}: live MAPE {live_mape:.1f} % is above 1.5x the test MAPE band"
            description: {json.dumps(_description())}
        """), " " * 10) if drifted else " " * 10 + "[]\n"
    series = "".join(f"""      - series: '{name}{{job="cellmfg", instance="127.0.0.1:3000", model="{MODEL}"}}'
        values: '{value!r}x15'
""" for name, value in (("cellmfg_live_mape_pct", live_mape), ("cellmfg_model_test_mape_upper_pct", band),
                        ("cellmfg_live_outcomes", outcomes)))
    tests = tmp_path / "recorded.test.yml"
    tests.write_text(f"""rule_files:
  - {PROJECT_ROOT / "deploy" / "cellmfg-rules.yml"}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{series}    alert_rule_test:
      - eval_time: 10m
        alertname: CellmfgLiveMapeAboveTestBand
        exp_alerts:{"" if drifted else " []"}
{expected if drifted else ""}""")
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr + tests.read_text()
    print(f"drifted={drifted}: live MAPE {live_mape:.2f} %, test band {band:.2f} %, threshold {threshold:.2f} %")
