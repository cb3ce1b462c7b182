"""Keras nets: the pretrained/scratch MLP, the two frozen-base adapters, and a batched trainer for many nets at once.

Training. One evaluation needs hundreds of tiny nets (every candidate configuration × inner validation fold ×
outer split). `keras.Model.fit` costs ~20 s a net on these sets and even a one-`tf.function` loop per net ~0.7 s,
most of it graph tracing. `train_stack` trains K independent nets in one graph: every weight carries a leading
model axis, each net draws its own shuffled mini-batches from its own training rows, and Adam runs per net (its
update is elementwise, with a per-net learning rate and step count), so each net follows exactly the path it would
follow alone. Nets of different widths share the graph through unit masks. A trained net is then turned into an
ordinary Keras model (`mlp_model`, `transfer_model`) for logging, SHAP and ONNX export.

Scaling. Every net standardises its inputs by the fixed physical (centre, width) of `cellmfg.domain`, never by a
dataset's variance. A feature constant on a net's training rows gets weight 0 in the frozen scaling layer: the data
says nothing about its effect, so the net ignores it rather than extrapolating through untrained weights.

Adapters. `paper`: the frozen net's last hidden layer → Dense(width, ReLU) → Dense(1), as the paper describes.
`residual` (ours): the same adapter, plus a trainable skip from the frozen net's prediction into the output,
starting at weight 1 with the target's mean offset, so training starts from the pretrained answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from cellmfg.contract import ONNX_PREDICTION_NAME as PREDICTION_OUTPUT
from cellmfg.contract import ONNX_SPREAD_NAME as SPREAD_OUTPUT

MAPE_EPSILON = 1e-7
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7  # Keras' Adam defaults
Adapter = Literal["paper", "residual"]
ADAPTERS: tuple[Adapter, ...] = ("paper", "residual")


def single_threaded() -> None:
    """One TensorFlow thread per op: these nets' ops are so small that handing them between threads costs more
    than it saves (measured: half the CPU time and half the wall time on 2 cores). Only effective before the first
    TensorFlow op of the process, so entry points call it first; later calls change nothing."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised its thread pools (e.g. inside a test session)
        pass


def make_deterministic(seed: int) -> None:
    """Same seed, same numbers: seeded Python/NumPy/TF RNGs and deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def constant_columns(x: np.ndarray) -> np.ndarray:
    """Boolean per column: the column takes a single value on these rows."""
    x = np.asarray(x, dtype=float)
    return np.asarray(np.ptp(x, axis=0) == 0.0) if len(x) else np.zeros(x.shape[1], dtype=bool)


def scale_inputs(x: np.ndarray, centre: np.ndarray, width: np.ndarray) -> np.ndarray:
    """z = (x - centre) / width with the fixed physical scale."""
    return (np.asarray(x, dtype=float) - np.asarray(centre, dtype=float)) / np.asarray(width, dtype=float)


# -------------------------------------------------------------------------------------------------------------
# The batched trainer


@dataclass(frozen=True)
class StackSpec:
    """K nets of one shape: ReLU layers of up to `max_width` units on `inputs`, one linear output.

    inputs: [N, d] already scaled; y: [N]; train/validation masks: [K, N]; input_mask: [K, d] (0 drops a column
    for that net); widths, learning_rates, output_bias: [K]; skip: [N] frozen predictions fed to the output
    through a trainable weight where `skip_on` is true (the residual adapter), else None.
    """

    inputs: np.ndarray
    y: np.ndarray
    train_mask: np.ndarray
    validation_mask: np.ndarray
    input_mask: np.ndarray
    widths: np.ndarray
    learning_rates: np.ndarray
    output_bias: np.ndarray
    hidden_layers: int
    epochs: int
    batch_size: int
    seed: int
    skip: np.ndarray | None = None
    skip_on: np.ndarray | None = None

    @property
    def models(self) -> int:
        return int(self.train_mask.shape[0])


@dataclass(frozen=True)
class TrainedStack:
    """Weights with a leading model axis, per-epoch MAPE curves and final predictions on every input row."""

    kernels: list[np.ndarray]  # per layer [K, fan_in, fan_out]
    biases: list[np.ndarray]  # per layer [K, fan_out]
    skip_weight: np.ndarray  # [K]; 0 where the net has no skip
    widths: np.ndarray
    train_loss: np.ndarray  # [K, epochs], MAPE % on each net's training rows
    validation_loss: np.ndarray  # [K, epochs], NaN where a net has no validation rows
    predictions: np.ndarray  # [K, N]

    def layer_weights(self, model: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Net `model`'s (kernel, bias) per layer, cut to its own width."""
        width = int(self.widths[model])
        out = []
        for index, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            rows = kernel.shape[1] if index == 0 else width
            cols = 1 if index == len(self.kernels) - 1 else width
            out.append((kernel[model, :rows, :cols].copy(), bias[model, :cols].copy()))
        return out


def _glorot(seed: int, layer: int, fan_in: np.ndarray, fan_out: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Keras' default Dense init (Glorot uniform) with each net's own fan-in/out and its own random stream, so a
    net starts the same whatever else shares its stack."""
    limits = np.sqrt(6.0 / (fan_in + fan_out))
    draws = [np.random.default_rng([seed, model, layer]).uniform(-limit, limit, shape)
             for model, limit in enumerate(limits)]
    return np.asarray(draws, dtype="float32")


def train_stack(spec: StackSpec) -> TrainedStack:
    """Train K nets at once: Adam on MAPE, shuffled mini-batches, all epochs in one graph; deterministic."""
    # Each call builds a fresh graph on purpose (shapes differ per stack); TF's retracing notice is noise here.
    tf.get_logger().setLevel("ERROR")
    models, rows = spec.train_mask.shape
    features = spec.inputs.shape[1]
    max_width = int(spec.widths.max())
    widths = spec.widths.astype(float)
    unit_mask = (np.arange(max_width)[None, :] < spec.widths[:, None]).astype("float32")

    shapes = [(features, max_width)] + [(max_width, max_width)] * (spec.hidden_layers - 1) + [(max_width, 1)]
    fans = [(np.full(models, float(features)), widths)] + [(widths, widths)] * (spec.hidden_layers - 1) + \
        [(widths, np.ones(models))]
    kernels = [tf.Variable(_glorot(spec.seed, layer, fi, fo, shape))
               for layer, ((fi, fo), shape) in enumerate(zip(fans, shapes, strict=True))]
    biases = [tf.Variable(np.zeros((models, max_width), "float32")) for _ in range(spec.hidden_layers)]
    biases.append(tf.Variable(np.asarray(spec.output_bias, "float32").reshape(models, 1)))
    skip_on = np.zeros(models, "float32") if spec.skip_on is None else spec.skip_on.astype("float32")
    skip_weight = tf.Variable(skip_on.copy())  # starts at 1 where on: the pretrained answer passes through
    variables = [*kernels, *biases, skip_weight]
    firsts = [tf.Variable(tf.zeros_like(v)) for v in variables]
    seconds = [tf.Variable(tf.zeros_like(v)) for v in variables]
    steps = tf.Variable(tf.zeros([models], tf.float32))

    x = tf.constant(np.asarray(spec.inputs, "float32"))
    y = tf.constant(np.asarray(spec.y, "float32"))
    skip_input = tf.constant(np.zeros(rows, "float32") if spec.skip is None else np.asarray(spec.skip, "float32"))
    input_mask = tf.constant(spec.input_mask.astype("float32"))
    units = tf.constant(unit_mask)
    skip_grad_mask = tf.constant(skip_on)
    learning_rates = tf.constant(spec.learning_rates.astype("float32"))
    train_mask = tf.constant(spec.train_mask.astype("float32"))
    validation_mask = tf.constant(spec.validation_mask.astype("float32"))
    counts = spec.train_mask.sum(axis=1)
    batches = int(-(-counts.max() // spec.batch_size))
    width_of_batch = int(-(-counts.max() // batches))
    row_counts = tf.constant(counts.astype("int32"))
    inverse_y = 1.0 / tf.maximum(tf.abs(y), MAPE_EPSILON)

    def forward(index: tf.Tensor) -> tf.Tensor:
        """Predictions [K, B] of every net on its own rows `index` [K, B]."""
        hidden = tf.gather(x, index) * input_mask[:, None, :]
        for layer in range(spec.hidden_layers):
            hidden = tf.nn.relu(tf.matmul(hidden, kernels[layer]) + biases[layer][:, None, :]) * units[:, None, :]
        output = tf.matmul(hidden, kernels[-1])[:, :, 0] + biases[-1]
        return output + skip_weight[:, None] * tf.gather(skip_input, index)

    def masked_mape(prediction: tf.Tensor, index: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        errors = tf.abs(tf.gather(y, index) - prediction) * tf.gather(inverse_y, index)
        return 100.0 * tf.reduce_sum(errors * weight, axis=1) / tf.maximum(tf.reduce_sum(weight, axis=1), 1.0)

    all_rows = tf.tile(tf.range(rows)[None, :], [models, 1])

    @tf.function
    def run() -> tuple[tf.Tensor, tf.Tensor]:
        train_curve = tf.TensorArray(tf.float32, size=spec.epochs)
        validation_curve = tf.TensorArray(tf.float32, size=spec.epochs)
        for epoch in tf.range(spec.epochs):
            keys = tf.random.stateless_uniform([models, rows], seed=tf.stack([spec.seed, epoch]))
            order = tf.argsort(keys + 2.0 * (1.0 - train_mask), axis=1)  # each net's training rows first
            for batch in tf.range(batches):
                # Strided batches (positions b, b + batches, …): every net spreads its own rows over the same
                # number of batches, so nets with slightly different row counts all step together.
                position = batch + batches * tf.range(width_of_batch)
                index = tf.gather(order, tf.minimum(position, rows - 1), axis=1)
                weight = tf.cast(position[None, :] < row_counts[:, None], tf.float32)
                active = tf.cast(tf.reduce_sum(weight, axis=1) > 0, tf.float32)  # nets with rows in this batch
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(masked_mape(forward(index), index, weight))
                gradients = tape.gradient(loss, variables)
                gradients[-1] = gradients[-1] * skip_grad_mask
                steps.assign_add(active)
                correction = learning_rates * tf.sqrt(1.0 - ADAM_BETA_2 ** tf.maximum(steps, 1.0)) / \
                    (1.0 - ADAM_BETA_1 ** tf.maximum(steps, 1.0)) * active
                for variable, gradient, first, second in zip(variables, gradients, firsts, seconds, strict=True):
                    # A net without rows in this batch gets no step (its moments just decay once).
                    first.assign(ADAM_BETA_1 * first + (1.0 - ADAM_BETA_1) * gradient)
                    second.assign(ADAM_BETA_2 * second + (1.0 - ADAM_BETA_2) * tf.square(gradient))
                    scale = tf.reshape(correction, [models] + [1] * (len(variable.shape) - 1))
                    variable.assign_sub(scale * first / (tf.sqrt(second) + ADAM_EPSILON))
            prediction = forward(all_rows)
            train_curve = train_curve.write(epoch, masked_mape(prediction, all_rows, train_mask))
            validation_curve = validation_curve.write(epoch, masked_mape(prediction, all_rows, validation_mask))
        return train_curve.stack(), validation_curve.stack()

    train_loss, validation_loss = run()
    predictions = np.asarray(forward(all_rows), dtype=float)
    validation = np.asarray(validation_loss, dtype=float).T
    validation[spec.validation_mask.sum(axis=1) == 0] = np.nan
    return TrainedStack([np.asarray(k.numpy()) for k in kernels], [np.asarray(b.numpy()) for b in biases],
                        np.asarray(skip_weight.numpy(), dtype=float), spec.widths.copy(),
                        np.asarray(train_loss, dtype=float).T, validation, predictions)


# -------------------------------------------------------------------------------------------------------------
# Keras models from trained weights (for MLflow, SHAP and ONNX export)


def standardize(inputs: keras.KerasTensor, centre: np.ndarray, width: np.ndarray, mask: np.ndarray, name: str
                ) -> keras.KerasTensor:
    """(x - centre) / width, times 0 for ignored columns, as a frozen Dense layer with a diagonal kernel.

    Keras' Normalization layer holds its statistics as captured constants, which tf2onnx turns into extra graph
    inputs the ONNX model cannot run without; Dense weights are variables and export as initializers.
    """
    factor = np.asarray(mask, dtype=float) / np.asarray(width, dtype=float)
    layer = keras.layers.Dense(len(factor), trainable=False, name=name)
    output = layer(inputs)
    bias = -np.asarray(centre, dtype=float) * factor
    layer.set_weights([np.diag(factor).astype("float32"), bias.astype("float32")])
    return output


def mlp_model(centre: np.ndarray, width: np.ndarray, input_mask: np.ndarray,
              layers: list[tuple[np.ndarray, np.ndarray]], name: str) -> keras.Model:
    """Raw physical units in: frozen scaling → ReLU layers → linear output, with the given weights."""
    inputs = keras.Input(shape=(len(centre),), name="features")
    hidden = standardize(inputs, centre, width, input_mask, "scaling")
    for index, (kernel, bias) in enumerate(layers[:-1]):
        dense = keras.layers.Dense(kernel.shape[1], activation="relu", name=f"hidden_{index + 1}")
        hidden = dense(hidden)
        dense.set_weights([kernel.astype("float32"), bias.astype("float32")])
    output_layer = keras.layers.Dense(1, name="output")
    output = output_layer(hidden)
    output_layer.set_weights([layers[-1][0].astype("float32"), layers[-1][1].astype("float32")])
    return keras.Model(inputs, output, name=name)


def frozen_body(base: keras.Model) -> keras.Model:
    """The pretrained net as [last hidden layer, prediction], frozen (a copy: the caller's net is never touched)."""
    frozen = keras.models.clone_model(base)
    frozen.set_weights(base.get_weights())
    frozen.trainable = False
    last_hidden = frozen.get_layer(index=len(frozen.layers) - 2).output
    body = keras.Model(frozen.inputs[0], [last_hidden, frozen.outputs[0]], name=f"{base.name}_frozen")
    body.trainable = False
    return body


def frozen_features(base: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frozen net's last hidden activations [N, h] and its prediction [N] on raw inputs."""
    hidden, prediction = frozen_body(base)(np.asarray(x, dtype="float32"))
    return np.asarray(hidden, dtype=float), np.asarray(prediction, dtype=float).reshape(-1)


def transfer_model(base: keras.Model, adapter: Adapter, layers: list[tuple[np.ndarray, np.ndarray]],
                   skip_weight: float, name: str) -> keras.Model:
    """The frozen pretrained net plus a trained adapter: Dense(width, ReLU) → Dense(1) (+ skip for `residual`)."""
    body = frozen_body(base)
    inputs = keras.Input(shape=(base.inputs[0].shape[-1],), name="features")
    frozen_hidden, frozen_prediction = body(inputs)
    (kernel, bias), (out_kernel, out_bias) = layers
    dense = keras.layers.Dense(kernel.shape[1], activation="relu", name="adapter")
    hidden = dense(frozen_hidden)
    dense.set_weights([kernel.astype("float32"), bias.astype("float32")])
    output_layer = keras.layers.Dense(1, name="adapter_output")
    if adapter == "residual":
        output = output_layer(keras.layers.Concatenate(name="adapter_head")([hidden, frozen_prediction]))
        output_layer.set_weights([np.vstack([out_kernel, [[skip_weight]]]).astype("float32"),
                                  out_bias.astype("float32")])
    else:
        output = output_layer(hidden)
        output_layer.set_weights([out_kernel.astype("float32"), out_bias.astype("float32")])
    return keras.Model(inputs, output, name=name)


def transfer_ensemble_model(base: keras.Model, adapter: Adapter, members: list[list[tuple[np.ndarray, np.ndarray]]],
                            skip_weights: list[float], name: str) -> keras.Model:
    """K adapters of one design and width on ONE frozen base, as one graph: the base runs once, the K heads run as
    one fused layer pair, and the model answers {"prediction": mean of the heads, "spread": their standard
    deviation} ([batch, 1] each). Built from stock layers only (and keras.ops.sqrt), so MLflow loads it and tf2onnx
    exports it without this module.

    Fused heads: every adapter reads the same frozen hidden layer, so their first kernels concatenate into one
    Dense(K·width); their output kernels form a block-diagonal Dense(K) (plus, for `residual`, one row of skip
    weights read from the frozen prediction). Each head's output is exactly `transfer_model`'s for that member.
    """
    count = len(members)
    if count < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {count}")
    body = frozen_body(base)
    inputs = keras.Input(shape=(base.inputs[0].shape[-1],), name="features")
    frozen_hidden, frozen_prediction = body(inputs)
    width = members[0][0][0].shape[1]
    if any(m[0][0].shape[1] != width for m in members):
        raise ValueError("ensemble members must share one adapter width")
    dense = keras.layers.Dense(count * width, activation="relu", name="adapter")
    hidden = dense(frozen_hidden)
    dense.set_weights([np.hstack([m[0][0] for m in members]).astype("float32"),
                       np.concatenate([m[0][1] for m in members]).astype("float32")])
    kernel = np.zeros((count * width + (1 if adapter == "residual" else 0), count), dtype="float32")
    for k, member in enumerate(members):
        kernel[k * width:(k + 1) * width, k] = member[1][0][:, 0]
    if adapter == "residual":
        kernel[-1, :] = np.asarray(skip_weights, dtype="float32")
        hidden = keras.layers.Concatenate(name="adapter_head")([hidden, frozen_prediction])
    heads_layer = keras.layers.Dense(count, name="adapter_heads")
    heads = heads_layer(hidden)
    heads_layer.set_weights([kernel, np.concatenate([m[1][1] for m in members]).astype("float32")])
    return keras.Model(inputs, ensemble_outputs(heads, count), name=name)


def ensemble_outputs(heads: keras.KerasTensor, count: int) -> dict[str, keras.KerasTensor]:
    """{"prediction": mean, "spread": sample standard deviation} of [batch, K] heads, as frozen linear layers."""
    mean_layer = keras.layers.Dense(1, use_bias=False, trainable=False, name=PREDICTION_OUTPUT)
    mean = mean_layer(heads)
    mean_layer.set_weights([np.full((count, 1), 1.0 / count, dtype="float32")])
    centre_layer = keras.layers.Dense(count, use_bias=False, trainable=False, name="ensemble_deviation")
    deviation = centre_layer(heads)
    centre_layer.set_weights([(np.eye(count) - 1.0 / count).astype("float32")])
    squared = keras.layers.Multiply(name="ensemble_squared")([deviation, deviation])
    variance_layer = keras.layers.Dense(1, use_bias=False, trainable=False, name="ensemble_variance")
    variance = variance_layer(squared)
    variance_layer.set_weights([np.full((count, 1), 1.0 / (count - 1), dtype="float32")])
    return {PREDICTION_OUTPUT: mean, SPREAD_OUTPUT: keras.ops.sqrt(variance)}


def ensemble_spread(member_predictions: np.ndarray) -> np.ndarray:
    """[K, N] member predictions -> [N] sample standard deviation (the graph's spread output); 0 for one member."""
    members = np.asarray(member_predictions, dtype=float)
    if len(members) < 2:
        return np.zeros(members.shape[1:])
    return np.asarray(np.std(members, axis=0, ddof=1))


def _prediction_of(output: object) -> object:
    """The prediction of a single net or an ensemble (whose output is a dict with the spread beside it)."""
    return output[PREDICTION_OUTPUT] if isinstance(output, dict) else output


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Predictions as a flat float64 array (one call, no Keras progress output)."""
    return np.asarray(_prediction_of(model(np.asarray(x, dtype="float32"), training=False)),
                      dtype=float).reshape(-1)


def predict_with_spread(model: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(prediction, spread) as flat float64 arrays; spread None for a single net."""
    output = model(np.asarray(x, dtype="float32"), training=False)
    if not isinstance(output, dict):
        return np.asarray(output, dtype=float).reshape(-1), None
    return (np.asarray(output[PREDICTION_OUTPUT], dtype=float).reshape(-1),
            np.asarray(output[SPREAD_OUTPUT], dtype=float).reshape(-1))


def compiled_predictor(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """`predict` traced once for any batch size: SHAP calls the net a hundred times, ~0.1 s each in eager mode."""
    signature = [tf.TensorSpec([None, int(model.inputs[0].shape[-1])], tf.float32)]
    graph = tf.function(lambda x: _prediction_of(model(x, training=False)), input_signature=signature)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(graph(tf.constant(np.asarray(x, dtype="float32"))), dtype=float).reshape(-1)

    return run


def weights_snapshot(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.weights]
