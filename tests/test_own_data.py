"""A lab's own data end to end, with real training (quick preset), a real MLflow registry and a real server: every
command of the README's "Your own data" block, in order.

Setup (what `scripts/main.sh` does before the walk-through): train the paper's eight nets, promote them, start the
service on the registry with a 1 s poll. Then the block runs with its URLs pointed at this server and `--preset quick`
added to the training commands (the default preset trains for minutes). Checked on the way: the fourth chemistry is
answered within one poll of its promotion, exactly as onnxruntime answers on an exported bundle; after `retire` a
request for it is a 400 naming the served datasets; the eight original models answer identically throughout.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from lab_data import lfp_frame, lfp_recipes

from cellmfg.contract import LoadedModel, load_bundle
from cellmfg.domain import DATASETS, TASKS, feature_columns
from testkit.fakes import example_rows, served_prediction
from testkit.processes import PROJECT_ROOT, ServerProcess, cellmfg_server, clean_env, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

POLL_SECONDS = 1.0
CLI = str(PROJECT_ROOT / ".venv" / "bin" / "cellmfg")
README_URL = "http://127.0.0.1:3000"


def walkthrough_commands() -> list[str]:
    """The shell commands of the README's "Your own data" block (continuation lines joined, comments dropped)."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the section has a bash block"
    commands, pending = [], ""
    for line in block.group(1).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    return commands


def test_the_example_files_are_what_the_generator_writes() -> None:
    examples = PROJECT_ROOT / "docs" / "examples"
    assert (examples / "lfp.csv").read_text() == lfp_frame().to_csv(index=False)
    assert (examples / "lfp_recipes.csv").read_text() == lfp_recipes().to_csv(index=False)


def test_the_walkthrough_block_is_the_expected_sequence() -> None:
    steps = [re.sub(r"\s+", " ", c)[:60] for c in walkthrough_commands()]
    kinds = ["data validate", "train transfer", "train transfer", "registry promote", "registry promote", "curl -s",
             "curl -s -X POST", "cellmfg predict", "registry retire"]
    assert len(steps) == len(kinds), steps
    for step, kind in zip(steps, kinds, strict=True):
        assert kind in step, (step, kind)


def _run(command: list[str] | str, env: dict[str, str], cwd: Path,
         timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    shell = isinstance(command, str)  # a README line runs as the reader's shell would run it
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, shell=shell,
                          executable="/bin/bash" if shell else None)


def _ok(result: subprocess.CompletedProcess[str], what: str) -> str:
    assert result.returncode == 0, (f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-5000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("own-data")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = clean_env(MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true", TF_CPP_MIN_LOG_LEVEL="3")
    work = folder / "lab"
    (work / "docs").mkdir(parents=True)
    shutil.copytree(PROJECT_ROOT / "docs" / "examples", work / "docs" / "examples")
    (work / ".venv").symlink_to(PROJECT_ROOT / ".venv")  # the README's commands run .venv/bin/cellmfg
    _ok(_run([CLI, "train", "all", "--preset", "quick", "--no-docs"], env, work), "train all")
    promoted = _run([CLI, "registry", "promote", "--all", "--json"], env, work)
    report = json.loads(promoted.stdout.strip().splitlines()[-1])
    assert not report["failed"], report["failed"]
    _ok(_run([CLI, "registry", "export-bundle", "--out", str(folder / "before")], env, work), "export-bundle")
    home = folder / "bentoml"
    server = cellmfg_server({**env, "CELLMFG_POLL_SECONDS": str(POLL_SECONDS), "BENTOML_HOME": str(home)},
                           folder / "server.log")
    with server:
        server.wait_ready(timeout=240)
        yield {"env": env, "work": work, "folder": folder, "server": server}


def _originals(url: str) -> dict[str, list[float]]:
    answers = {}
    for dataset, spec in DATASETS.items():
        field = "chemistry" if spec.kind == "electrode" else "dataset"
        response = httpx.post(f"{url}/predict/{spec.kind}", timeout=60,
                              json={field: dataset, "rows": example_rows(spec.kind, dataset, 20, seed=4)})
        assert response.status_code == 200, response.text
        for task, ref in response.json()["models"].items():
            column = next(t.target.column for t in TASKS if t.target.task == task)
            answers[ref["name"]] = [row[column] for row in response.json()["predictions"]]
    return answers


def _onnx(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    return served_prediction(model, x.astype(np.float32))


def _assert_lfp_refused(url: str, server: ServerProcess) -> None:
    """Retired: a 4xx naming what is served."""
    gone = httpx.post(f"{url}/predict/electrode", timeout=30,
                      json={"chemistry": "lfp", "rows": example_rows("electrode", "nmc", 1)})
    described = httpx.get(f"{url}/models", timeout=30).json()
    assert gone.status_code == 400, (gone.text[:500], described["datasets"], described["missing"],
                                     server.log_tail(3000))
    assert "'lfp'" in gone.text and "graphite, si_gra, nmc" in gone.text, gone.text


def _datasets(url: str) -> dict[str, list[str]]:
    return dict(httpx.get(f"{url}/models", timeout=30).json()["datasets"])


@pytest.mark.integration
@pytest.mark.trains
@pytest.mark.timeout(3600)
def test_a_labs_own_chemistry_from_csv_to_served_and_retired(stack: dict[str, Any]) -> None:
    env, work, folder, server = stack["env"], stack["work"], stack["folder"], stack["server"]
    url = server.url
    before = {m.name: m for m in load_bundle(folder / "before")}
    assert len(before) == 8
    originals = _originals(url)
    for task in TASKS:  # what the service answers is what onnxruntime answers on the exported bundle
        name = f"{task.model_name}_onnx"
        x = np.array([list(r.values()) for r in example_rows(DATASETS[task.dataset].kind, task.dataset, 20, seed=4)])
        assert originals[name] == _onnx(before[name], x).tolist(), name
    assert "lfp" not in _datasets(url)["electrode"]

    commands = walkthrough_commands()
    outputs: list[str] = []
    errors: list[str] = []
    for command in commands:
        runnable = command.replace(README_URL, url)
        if "train transfer" in runnable:
            runnable += " --preset quick"
        if "curl -s http" in runnable and "/models" in runnable:
            # The service polls every POLL_SECONDS: the promoted chemistry must be served within one poll (plus
            # the time to fetch and verify two models on a busy machine).
            promoted_at = time.monotonic()
            wait_for(lambda: "lfp" in _datasets(url)["electrode"], timeout=POLL_SECONDS + 20,
                     what="lfp to be served after its promotion", on_timeout=server.log_tail)
            served_after = time.monotonic() - promoted_at
            print(f"\nlfp served {served_after:.1f} s after its promotion (poll every {POLL_SECONDS:g} s)")
            assert served_after < POLL_SECONDS + 20
            assert _originals(url) == originals, "the original models answer as before"
        result = _run(runnable, env, work)
        outputs.append(_ok(result, runnable))
        errors.append(result.stderr)
        if "registry retire" in runnable:
            wait_for(lambda: "lfp" not in _datasets(url)["electrode"], timeout=POLL_SECONDS + 20,
                     what="lfp to leave after retire", on_timeout=server.log_tail)
            _assert_lfp_refused(url, server)

    assert "64 valid electrode rows" in outputs[0]
    # Training and promotion say where the lab's models answer: the chemistry named after the file, lfp.
    for step, model in ((1, "density_lfp"), (2, "mass_loading_lfp"), (3, "density_lfp"), (4, "mass_loading_lfp")):
        assert (f"chemistry lfp (electrode): answers at POST /predict/electrode (chemistry=lfp) and POST /predict/"
                f"{model}_onnx") in outputs[step], outputs[step][-2000:]
    # MLflow's per-model registration notices stay off the console (they show with --verbose).
    assert not [out for out in outputs + errors if "Successfully registered" in out or "Created version" in out]
    assert "lfp" in outputs[5] and "graphite" in outputs[5]

    # Both references resolved to the graphite nets' registered versions, recorded as the transfers' base.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("density_graphite", "champion")
    transfer = max(client.search_model_versions("name='density_lfp'"), key=lambda v: int(v.version))
    assert (transfer.tags["base_model_name"], transfer.tags["base_model_version"]) == (
        "density_graphite", str(champion.version))
    latest = max(int(v.version) for v in client.search_model_versions("name='mass_loading_graphite'"))
    mass_transfer = max(client.search_model_versions("name='mass_loading_lfp'"), key=lambda v: int(v.version))
    assert mass_transfer.tags["base_model_version"] == str(latest)

    # The CSV answer over HTTP is onnxruntime's on the promoted models (exported after the fact, same versions).
    scored = list(csv.DictReader(io.StringIO(outputs[6])))
    recipes = lfp_recipes()
    assert [r["recipe"] for r in scored] == recipes["recipe"].tolist()
    assert scored[-1]["in_domain"] == "false" and "roll_gap_um" in scored[-1]["out_of_domain"]
    x = recipes[feature_columns("electrode")].to_numpy(dtype=np.float64)
    promoted = _run([CLI, "registry", "export-bundle", "--alias", "previous", "--out", str(folder / "after")], env,
                    work)
    _ok(promoted, "export-bundle of the retired versions")
    after = {m.name: m for m in load_bundle(folder / "after")}
    for name, column in (("density_lfp_onnx", "density_g_cm3"), ("mass_loading_lfp_onnx", "mass_loading_mg_cm2")):
        assert [float(r[f"{column}_predicted"]) for r in scored] == _onnx(after[name], x).tolist(), name
    offline = list(csv.DictReader((work / "lfp_scored.csv").open()))
    assert [r["density_g_cm3_predicted"] for r in offline] == [r["density_g_cm3_predicted"] for r in scored]
    assert "density_g_cm3_shap_roll_gap_um" in offline[0]

    # Still retired (nothing above moved an alias); the originals answer as they did at the start.
    _assert_lfp_refused(url, server)
    assert _originals(url) == originals
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
