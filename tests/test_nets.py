"""Model behaviour: frozen weights stay bit-identical, training is deterministic, the adapter learns."""

from __future__ import annotations

import numpy as np
import pytest

from training import nets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _source(rows: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform([91, 22, 0.3, 100, 0.27, 1], [95.5, 42, 0.3, 300, 0.54, 135], (rows, 6))
    y = 0.9 + x[:, 3] / 600 + 0.004 * (135 - x[:, 5])
    return x, y


def _target(rows: int = 30, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform([85, 42, 0.2, 50, 0.27, 20], [97.5, 66, 1.0, 400, 0.54, 206], (rows, 6))
    y = 2.2 + x[:, 3] / 500 + 0.005 * (206 - x[:, 5])
    return x, y


@pytest.fixture(scope="module")
def base() -> object:
    x, y = _source()
    nets.make_deterministic(3)
    model = nets.build_mlp(x, y, 16, 2, "base")
    nets.fit(model, x, y, x[:8], y[:8], epochs=20, batch_size=16, learning_rate=5e-3, seed=3)
    return model


def test_frozen_weights_bit_identical_after_transfer(base: object) -> None:
    x, y = _target()
    before = nets.weights_snapshot(base)
    transfer = nets.build_transfer(base, x, y, "transfer")
    frozen_body = transfer.layers[1]
    body_before = nets.weights_snapshot(frozen_body)
    adapter_before = [np.array(w) for w in transfer.get_layer("adapter").weights]
    nets.fit(transfer, x, y, x[:5], y[:5], epochs=15, batch_size=8, learning_rate=1e-2, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(before, nets.weights_snapshot(base), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(body_before, nets.weights_snapshot(frozen_body), strict=True))
    # ...while the adapter did move: the test would pass vacuously if nothing trained.
    adapter_after = [np.array(w) for w in transfer.get_layer("adapter").weights]
    assert any(not np.array_equal(a, b) for a, b in zip(adapter_before, adapter_after, strict=True))
    trainable = {v.path.split("/")[0] for v in transfer.trainable_variables}
    assert trainable == {"adapter", "adapter_output"}


def test_finetune_moves_the_copied_base_only(base: object) -> None:
    x, y = _target()
    before = nets.weights_snapshot(base)
    model = nets.unfreeze(nets.build_transfer(base, x, y, "finetune"))
    body_before = nets.weights_snapshot(model.layers[1])
    nets.fit(model, x, y, x[:5], y[:5], epochs=5, batch_size=8, learning_rate=1e-2, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(body_before, nets.weights_snapshot(model.layers[1]),
                                                         strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(before, nets.weights_snapshot(base), strict=True))


def test_same_seed_same_numbers() -> None:
    x, y = _source(60)

    def train(seed: int) -> np.ndarray:
        nets.make_deterministic(seed)
        model = nets.build_mlp(x, y, 8, 1, "det")
        history = nets.fit(model, x, y, x[:6], y[:6], epochs=10, batch_size=16, learning_rate=1e-2, seed=seed)
        return np.concatenate([nets.predict(model, x), history.train_loss])

    first, second, other = train(7), train(7), train(8)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_training_reduces_mape_and_model_takes_raw_units() -> None:
    x, y = _source(120)
    nets.make_deterministic(0)
    model = nets.build_mlp(x, y, 16, 2, "learn")
    history = nets.fit(model, x, y, x[:10], y[:10], epochs=60, batch_size=16, learning_rate=5e-3, seed=0)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    # Raw physical units in, sensible densities out: the scaling layer lives inside the model.
    predictions = nets.predict(model, x)
    assert np.all((predictions > 0.5) & (predictions < 3.0))
