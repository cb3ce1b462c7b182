"""Keras nets: the pretrained/scratch MLP, the frozen-base adapter transfer, and a fast deterministic fit loop.

`keras.Model.fit` spends ~80 ms per epoch on bookkeeping for these tiny sets (20 s a net); the whole run of ~200
nets would not fit the 5-minute budget. `fit` below runs every epoch inside one `tf.function` (~0.5 s a net)
while keeping per-epoch train and validation losses for the loss curves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

MAPE_EPSILON = 1e-7


@dataclass
class History:
    train_loss: np.ndarray  # MAPE % on the training rows, per epoch
    validation_loss: np.ndarray  # MAPE % on the validation rows, per epoch


def make_deterministic(seed: int) -> None:
    """Same seed, same numbers: seeded Python/NumPy/TF RNGs and deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_mlp(x_train: np.ndarray, y_train: np.ndarray, hidden_units: int, hidden_layers: int,
              name: str) -> keras.Model:
    """Normalisation (fitted on `x_train`, so the model takes raw units) → ReLU layers → linear output.

    The output bias starts at the training mean: with a relative loss (MAPE), starting near the right scale
    avoids a long first phase spent only learning the offset.
    """
    x_train = np.asarray(x_train, dtype="float64")
    variance = np.maximum(x_train.var(axis=0), 1e-6)  # a fixed input (coating speed 0.3) has zero variance
    inputs = keras.Input(shape=(x_train.shape[1],), name="features")
    hidden = standardize(inputs, x_train.mean(axis=0), variance, "scaling")
    for index in range(hidden_layers):
        hidden = keras.layers.Dense(hidden_units, activation="relu", name=f"hidden_{index + 1}")(hidden)
    output = keras.layers.Dense(1, name="output",
                                bias_initializer=keras.initializers.Constant(float(np.mean(y_train))))(hidden)
    return keras.Model(inputs, output, name=name)


def build_transfer(base: keras.Model, x_target_train: np.ndarray, y_target_train: np.ndarray, name: str
                   ) -> keras.Model:
    """The paper's transfer: the pretrained net frozen, one added hidden layer of the same width plus its output.

    The adapter reads the frozen net's last hidden representation and its prediction; its output layer also
    sees that prediction directly, initialised so that training starts from the pretrained net's own answer
    (plus the mean offset on the target). Where the source already transfers well (GDL200 → GDL1000) the
    adapter only learns a small correction; where it extrapolates wildly (graphite → NMC) it can drop it.
    The target's inputs can lie far outside the source's (Si share 8–15 wt% vs graphite 91–95.5), giving
    frozen activations of scales no source row produced; a non-trainable standardisation fitted on the
    target's training rows brings them back to a learnable scale.
    Only the adapter's two Dense layers are trained.
    """
    # A copy, so freezing (and fine-tuning's unfreezing) never touches the caller's pretrained net.
    frozen = keras.models.clone_model(base)
    frozen.set_weights(base.get_weights())
    frozen.trainable = False
    last_hidden = frozen.get_layer(index=len(frozen.layers) - 2).output
    body = keras.Model(frozen.inputs[0], [last_hidden, frozen.outputs[0]], name=f"{base.name}_frozen")
    body.trainable = False
    hidden_width = int(last_hidden.shape[-1])

    inputs = keras.Input(shape=(frozen.inputs[0].shape[-1],), name="features")
    frozen_hidden, frozen_prediction = body(inputs)
    combined = keras.layers.Concatenate(name="frozen_features")([frozen_hidden, frozen_prediction])
    hidden_train, prediction_train = (np.asarray(a, dtype=float) for a in
                                      body(np.asarray(x_target_train, dtype="float32")))
    target_features = np.concatenate([hidden_train, prediction_train], axis=1)
    scaled = standardize(combined, target_features.mean(axis=0), _variance_with_floor(target_features),
                         "adapter_scaling")
    adapter = keras.layers.Dense(hidden_width, activation="relu", name="adapter")(scaled)
    # The output reads the adapter and, as a skip, the frozen prediction itself, starting with weight 1 on the
    # latter and 0 on the adapter: training starts at the pretrained answer and may keep, rescale or drop it.
    head = keras.layers.Concatenate(name="adapter_head")([adapter, frozen_prediction])
    offset = float(np.mean(np.asarray(y_target_train).reshape(-1) - prediction_train.reshape(-1)))
    output_layer = keras.layers.Dense(1, name="adapter_output")
    output = output_layer(head)
    output_layer.set_weights([np.vstack([np.zeros((hidden_width, 1)), np.ones((1, 1))]).astype("float32"),
                              np.array([offset], dtype="float32")])
    return keras.Model(inputs, output, name=name)


def standardize(inputs: keras.KerasTensor, mean: np.ndarray, variance: np.ndarray, name: str) -> keras.KerasTensor:
    """(x - mean) / std as a frozen Dense layer with a diagonal kernel.

    Keras' Normalization layer holds its statistics as captured constants, which tf2onnx turns into extra graph
    inputs the ONNX model cannot run without; Dense weights are variables and export as initializers.
    """
    scale = 1.0 / np.sqrt(np.asarray(variance, dtype="float64"))
    layer = keras.layers.Dense(len(scale), trainable=False, name=name)
    output = layer(inputs)
    layer.set_weights([np.diag(scale).astype("float32"), (-np.asarray(mean) * scale).astype("float32")])
    return output


def _variance_with_floor(features: np.ndarray) -> np.ndarray:
    """Per-column variance, floored at 1% of the typical column's: a unit that barely varies on the training
    rows would otherwise be divided by ~0 and blow up on the first test row where it moves."""
    variance = features.var(axis=0)
    moving = variance[variance > 0]
    floor = 0.01 * float(np.median(moving)) if moving.size else 1.0
    return np.maximum(variance, max(floor, 1e-12))


def unfreeze(model: keras.Model) -> keras.Model:
    """Fine-tuning (comparison only): every weight of a transfer model trainable."""
    for layer in model.layers:
        layer.trainable = not _is_scaling(layer)
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                inner.trainable = not _is_scaling(inner)
    return model


def _is_scaling(layer: keras.layers.Layer) -> bool:
    # Input standardisation stays fixed even when fine-tuning: it is data statistics, not a learned weight.
    return layer.name.endswith("scaling")


def _mape(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    return 100.0 * tf.reduce_mean(tf.abs((y_true - y_pred) / tf.maximum(tf.abs(y_true), MAPE_EPSILON)))


def fit(model: keras.Model, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        epochs: int, batch_size: int, learning_rate: float, seed: int) -> History:
    """Adam on MAPE, shuffled mini-batches, all epochs in one graph; deterministic for a given seed."""
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    trainable = model.trainable_variables
    optimizer.build(trainable)
    xt = tf.constant(np.asarray(x_train, dtype="float32"))
    yt = tf.constant(np.asarray(y_train, dtype="float32").reshape(-1, 1))
    # An empty validation part (tiny user sets) falls back to the training rows, so curves stay defined.
    xv = tf.constant(np.asarray(x_val if len(x_val) else x_train, dtype="float32"))
    yv = tf.constant(np.asarray(y_val if len(y_val) else y_train, dtype="float32").reshape(-1, 1))
    rows = int(xt.shape[0])
    batches = -(-rows // batch_size)

    @tf.function
    def run() -> tuple[tf.Tensor, tf.Tensor]:
        train_curve = tf.TensorArray(tf.float32, size=epochs)
        validation_curve = tf.TensorArray(tf.float32, size=epochs)
        for epoch in tf.range(epochs):
            order = tf.argsort(tf.random.stateless_uniform([rows], seed=tf.stack([seed, epoch])))
            for batch in tf.range(batches):
                index = order[batch * batch_size: tf.minimum((batch + 1) * batch_size, rows)]
                with tf.GradientTape() as tape:
                    loss = _mape(tf.gather(yt, index), model(tf.gather(xt, index), training=True))
                gradients = tape.gradient(loss, trainable)
                optimizer.apply_gradients(zip(gradients, trainable, strict=True))
            train_curve = train_curve.write(epoch, _mape(yt, model(xt, training=False)))
            validation_curve = validation_curve.write(epoch, _mape(yv, model(xv, training=False)))
        return train_curve.stack(), validation_curve.stack()

    train_loss, validation_loss = run()
    return History(np.asarray(train_loss, dtype=float), np.asarray(validation_loss, dtype=float))


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Predictions as a flat float64 array (one call, no Keras progress output)."""
    return np.asarray(model(np.asarray(x, dtype="float32"), training=False), dtype=float).reshape(-1)


def weights_snapshot(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.weights]
