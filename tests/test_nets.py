"""Nets: the batched trainer trains each net as if alone, Keras models reproduce it, frozen weights stay frozen,
fixed physical scaling, and a feature constant in the source cannot move a zero-shot answer."""

from __future__ import annotations

import numpy as np
import pytest

from cellmfg.domain import feature_scaling
from training import nets

pytestmark = [pytest.mark.trains, pytest.mark.filterwarnings("ignore::UserWarning")]
CENTRE, WIDTH = (np.asarray(v) for v in feature_scaling("electrode"))


def _source(rows: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform([91, 22, 0.3, 100, 0.27, 1], [95.5, 42, 0.3, 300, 0.54, 135], (rows, 6))  # coating speed fixed
    y = 0.9 + x[:, 3] / 600 + 0.004 * (135 - x[:, 5])
    return x, y


def _target(rows: int = 30, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform([85, 42, 0.2, 50, 0.27, 20], [97.5, 66, 1.0, 400, 0.54, 206], (rows, 6))
    y = 2.2 + x[:, 3] / 500 + 0.005 * (206 - x[:, 5]) + 0.3 * x[:, 2]
    return x, y


def _spec(inputs: np.ndarray, y: np.ndarray, train: list[np.ndarray], widths: list[int], rates: list[float],
          epochs: int = 20, seed: int = 3, skip: np.ndarray | None = None, skip_on: list[bool] | None = None,
          hidden_layers: int = 2, mask_constant: bool = True) -> nets.StackSpec:
    count, rows = len(train), len(y)
    train_mask = np.zeros((count, rows), dtype=bool)
    for index, part in enumerate(train):
        train_mask[index, part] = True
    input_mask = np.asarray([~nets.constant_columns(inputs[part]) if mask_constant else np.ones(inputs.shape[1], bool)
                             for part in train], dtype=float)
    return nets.StackSpec(inputs, y, train_mask, ~train_mask, input_mask, np.asarray(widths), np.asarray(rates),
                          np.asarray([y[part].mean() for part in train]), hidden_layers, epochs, 16, seed, skip,
                          None if skip_on is None else np.asarray(skip_on))


@pytest.fixture(scope="module")
def base() -> object:
    """A source net trained alone, as a Keras model with fixed scaling (coating speed ignored: constant)."""
    x, y = _source()
    nets.make_deterministic(3)
    z = nets.scale_inputs(x, CENTRE, WIDTH)
    trained = nets.train_stack(_spec(z, y, [np.arange(60)], [16], [5e-3], epochs=40))
    mask = ~nets.constant_columns(x[:60])
    return nets.mlp_model(CENTRE, WIDTH, mask.astype(float), trained.layer_weights(0), "base")


def test_stacked_net_trains_as_if_alone() -> None:
    x, y = _source(60)
    z = nets.scale_inputs(x, CENTRE, WIDTH)
    part = np.arange(40)
    alone = nets.train_stack(_spec(z, y, [part], [16], [5e-3]))
    noisy = y.copy()
    noisy[40:] *= 3.0  # the second net's rows only
    together = nets.train_stack(_spec(z, noisy, [part, np.arange(20, 60)], [16, 8], [5e-3, 1e-2]))
    assert np.allclose(alone.predictions[0], together.predictions[0], rtol=1e-5, atol=1e-6)
    assert np.allclose(alone.train_loss[0], together.train_loss[0], rtol=1e-5)
    assert not np.allclose(together.predictions[0], together.predictions[1], rtol=1e-3)


def test_keras_models_reproduce_the_trained_stack(base: object) -> None:
    x, y = _source(50, seed=5)
    z = nets.scale_inputs(x, CENTRE, WIDTH)
    trained = nets.train_stack(_spec(z, y, [np.arange(30), np.arange(10, 50)], [8, 16], [5e-3, 5e-3]))
    for index in range(2):
        mask = ~nets.constant_columns(x[[np.arange(30), np.arange(10, 50)][index]])
        model = nets.mlp_model(CENTRE, WIDTH, mask.astype(float), trained.layer_weights(index), "m")
        assert np.allclose(nets.predict(model, x), trained.predictions[index], rtol=1e-5, atol=1e-6)
    xt, yt = _target()
    hidden, zero_shot = nets.frozen_features(base, xt)  # type: ignore[arg-type]
    adapters = nets.train_stack(_spec(hidden, yt, [np.arange(20)] * 2, [8, 8], [1e-2, 1e-2], skip=zero_shot,
                                      skip_on=[False, True], hidden_layers=1, mask_constant=False))
    for index, design in enumerate(nets.ADAPTERS):
        model = nets.transfer_model(base, design, adapters.layer_weights(index),  # type: ignore[arg-type]
                                    float(adapters.skip_weight[index]), design)
        assert np.allclose(nets.predict(model, xt), adapters.predictions[index], rtol=1e-5, atol=1e-5)


def test_frozen_weights_bit_identical_and_only_the_adapter_trains(base: object) -> None:
    x, y = _target()
    before = nets.weights_snapshot(base)  # type: ignore[arg-type]
    hidden, zero_shot = nets.frozen_features(base, x)  # type: ignore[arg-type]
    trained = nets.train_stack(_spec(hidden, y, [np.arange(25)], [8], [1e-2], skip=zero_shot, skip_on=[True],
                                     hidden_layers=1, mask_constant=False))
    model = nets.transfer_model(base, "residual", trained.layer_weights(0), float(trained.skip_weight[0]), "t")
    assert all(np.array_equal(a, b) for a, b in zip(before, nets.weights_snapshot(base), strict=True))  # type: ignore[arg-type]
    assert {v.path.split("/")[0] for v in model.trainable_variables} == {"adapter", "adapter_output"}
    body = model.layers[1]
    assert all(np.array_equal(a, b) for a, b in zip(before, nets.weights_snapshot(body), strict=True))
    # ...and training did move the skip and the adapter: the test would pass vacuously if nothing trained.
    assert trained.skip_weight[0] != 1.0
    assert trained.train_loss[0, -1] < trained.train_loss[0, 0]


def test_same_seed_same_numbers() -> None:
    x, y = _source(60)
    z = nets.scale_inputs(x, CENTRE, WIDTH)

    def train(seed: int) -> np.ndarray:
        nets.make_deterministic(seed)
        trained = nets.train_stack(_spec(z, y, [np.arange(50)], [8], [1e-2], epochs=10, seed=seed))
        return np.concatenate([trained.predictions[0], trained.train_loss[0]])

    first, second, other = train(7), train(7), train(8)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_fixed_physical_scaling_inside_the_model(base: object) -> None:
    scaling = base.get_layer("scaling").get_weights()  # type: ignore[attr-defined]
    diagonal = np.diag(scaling[0])
    constant = ~nets.constant_columns(_source()[0][:60])
    assert np.allclose(diagonal[constant], 1.0 / WIDTH[constant])
    assert np.all(diagonal[~constant] == 0.0)  # coating speed: constant in the source, so ignored
    # Raw physical units in, sensible densities out.
    predictions = nets.predict(base, _source(40, seed=9)[0])  # type: ignore[arg-type]
    assert np.all((predictions > 0.5) & (predictions < 3.0))


def test_feature_constant_in_source_gives_bounded_zero_shot(base: object) -> None:
    """Coating speed is 0.3 m/min on every source row; a target that varies it (0.2–1.0, even 50) must get the
    same zero-shot answer as at 0.3, not one extrapolated through weights that never saw it move."""
    x, _ = _target(40)
    at_source_value = x.copy()
    at_source_value[:, 2] = 0.3
    reference = nets.predict(base, at_source_value)  # type: ignore[arg-type]
    for speed in (0.2, 1.0, 50.0):
        varied = x.copy()
        varied[:, 2] = speed
        assert np.array_equal(nets.predict(base, varied), reference)  # type: ignore[arg-type]
    assert np.all(np.isfinite(reference)) and np.all(np.abs(reference) < 10.0)
