"""Readiness and hot reload in-process: the service swaps models while requests keep being answered."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from cellmfg.contract import write_bundle
from service.formats.schemas import EXAMPLE_INPUT, GDL_EXAMPLE_INPUT
from testkit.fakes import example_rows, fake_models, in_process_app, onnx_predict, write_fake_bundle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")


def _client(bundle: Path, monkeypatch: pytest.MonkeyPatch, poll_seconds: float = 0.0) -> TestClient:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CELLMFG_BUNDLE", str(bundle))
    monkeypatch.setenv("CELLMFG_POLL_SECONDS", str(poll_seconds))
    return TestClient(in_process_app())


def test_not_ready_until_every_required_model_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The catalogue serves what the bundle offers; CELLMFG_REQUIRED_MODELS names models that must be among them.
    write_bundle([m for m in fake_models() if m.name != "density_si_gra_onnx"], tmp_path)
    monkeypatch.setenv("CELLMFG_REQUIRED_MODELS", "density_si_gra_onnx")
    with _client(tmp_path, monkeypatch) as client:
        assert client.get("/readyz").status_code == 503
        assert client.get("/livez").status_code == 200
        assert "density_si_gra_onnx" in client.get("/models").json()["missing"]
        response = client.post("/predict/electrode", json={"chemistry": "si_gra",
                                                           "rows": example_rows("electrode", "si_gra", 1)})
        assert response.status_code == 503 and "density_si_gra_onnx" in response.text
        assert client.post("/predict/electrode", json=EXAMPLE_INPUT).status_code == 200


def test_hot_reload_swaps_versions_while_requests_keep_succeeding(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_bundle(tmp_path)
    poll = 0.5
    with _client(tmp_path, monkeypatch, poll_seconds=poll) as client:
        statuses: list[int] = []
        versions: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                response = client.post("/predict/gdl", json=GDL_EXAMPLE_INPUT)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["models"]["tortuosity"]["version"])

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(0.3)
            write_fake_bundle(tmp_path, version="2", salt=1)
            moved = time.monotonic()
            while time.monotonic() - moved < poll + 5 and (not versions or versions[-1] != "2"):
                time.sleep(0.05)
            switched_after = time.monotonic() - moved
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join()
        assert versions and versions[-1] == "2", "the new version was never served"
        assert switched_after < poll + 2.0, f"switch took {switched_after:.1f} s with a {poll} s poll"
        assert set(statuses) == {200}, "requests failed during the swap"
        assert versions == sorted(versions), "once swapped, the old version must not answer again"
        new_model = next(m for m in fake_models(version="2", salt=1) if m.name == "tortuosity_gdl1000_onnx")
        answer = client.post("/predict/gdl", json=GDL_EXAMPLE_INPUT).json()
        x = np.array([list(GDL_EXAMPLE_INPUT["rows"][0].values())])
        assert answer["predictions"][0]["tortuosity"] == onnx_predict(new_model, x)[0]
