"""GET /models' live block as the page's "Live accuracy" view reads it (in-process service, fast tier): the MAPE
since the served version's promotion (as the ledger saw it) with its bootstrap interval, and the bounded error
series the page draws per model. The drawing itself is checked in tests/test_ui_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.formats.schemas import GDL_EXAMPLE_INPUT
from service.ledger.live import DEFAULT_ROLLING_WINDOW
from testkit.fakes import service_client

MODEL = "tortuosity_gdl1000_onnx"


@pytest.fixture(scope="module")
def client(bundle: Path) -> Iterator[Any]:
    with service_client(bundle, ledger=True) as test_client:
        yield test_client


def _measure(client: Any, factors: list[float]) -> None:
    """Predict one GDL row per factor and post each measured at `factor` × its prediction."""
    answer = client.post("/predict/gdl", json={**GDL_EXAMPLE_INPUT, "rows": GDL_EXAMPLE_INPUT["rows"][:1] * len(
        factors)})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    posted = client.post("/outcomes", json={"outcomes": [
        {"prediction_id": row["prediction_id"], "values": {"tortuosity": row["tortuosity"] * factor}}
        for row, factor in zip(rows, factors, strict=True)]})
    assert posted.status_code == 200, posted.text


def _live(client: Any) -> dict[str, Any]:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    return dict(models[MODEL]["live"])


def test_the_live_block_has_the_mape_since_promotion_and_an_error_series(client: Any) -> None:
    before = datetime.now(UTC)
    assert _live(client)["mape_since_promotion"] is None  # the served version has answered nothing yet
    # Measured 10 % above the prediction, then 25 % above: errors 100/11 % and 20 %.
    _measure(client, [1.1] * 3 + [1.25] * 2)
    live = _live(client)
    since = live["mape_since_promotion"]
    assert since is not None and since["n"] == 5
    assert since["mape_pct"] == pytest.approx((3 * 100 / 11 + 2 * 20) / 5)
    assert since["interval_pct"][0] <= since["mape_pct"] <= since["interval_pct"][1]
    assert before <= datetime.fromisoformat(since["since"]) <= datetime.now(UTC)
    series = live["error_series"]
    assert series["window"] == DEFAULT_ROLLING_WINDOW
    assert series["ape_pct"] == pytest.approx([100 / 11] * 3 + [20.0] * 2, rel=1e-3)
    assert series["rolling_mape_pct"][-1] == pytest.approx(since["mape_pct"], rel=1e-3)
    assert len(series["predicted_at"]) == 5
    assert all(before.timestamp() - 1 <= t <= datetime.now(UTC).timestamp() for t in series["predicted_at"])


def test_the_error_series_is_bounded_to_the_last_200_outcomes(client: Any) -> None:
    for _ in range(3):
        _measure(client, [1.2] * 80)
    live = _live(client)
    assert live["n_outcomes"] >= 240
    series = live["error_series"]
    assert len(series["ape_pct"]) == len(series["predicted_at"]) == len(series["rolling_mape_pct"]) == 200
    assert series["ape_pct"][-1] == pytest.approx(100 * 0.2 / 1.2, rel=1e-3)
