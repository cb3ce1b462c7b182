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
    x_train = np.asarray(x_train, dtype="float32")
    variance = np.maximum(x_train.var(axis=0), 1e-6)  # a fixed input (coating speed 0.3) has zero variance
    inputs = keras.Input(shape=(x_train.shape[1],), name="features")
    hidden = keras.layers.Normalization(mean=x_train.mean(axis=0), variance=variance, name="scaling")(inputs)
    for index in range(hidden_layers):
        hidden = keras.layers.Dense(hidden_units, activation="relu", name=f"hidden_{index + 1}")(hidden)
    output = keras.layers.Dense(1, name="output",
                                bias_initializer=keras.initializers.Constant(float(np.mean(y_train))))(hidden)
    return keras.Model(inputs, output, name=name)


def build_transfer(base: keras.Model, x_target_train: np.ndarray, y_target_train: np.ndarray, name: str
                   ) -> keras.Model:
    """The paper's transfer: the pretrained net frozen, one added hidden layer of the same width plus its output.

    The adapter reads the frozen net's last hidden representation and its prediction. The target's inputs lie
    far outside the source's (Si share 8–15 wt% vs graphite 91–95.5), so those frozen activations have scales no
    source row produced; a non-trainable standardisation fitted on the target's training rows puts them back on
    a scale the adapter can learn from. Only the adapter's Dense layers are trained.
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
    target_features = np.concatenate(
        [np.asarray(a) for a in body(np.asarray(x_target_train, dtype="float32"))], axis=1)
    scaled = keras.layers.Normalization(
        mean=target_features.mean(axis=0), variance=np.maximum(target_features.var(axis=0), 1e-6),
        name="adapter_scaling")(combined)
    adapter = keras.layers.Dense(hidden_width, activation="relu", name="adapter")(scaled)
    output = keras.layers.Dense(1, name="adapter_output",
                                bias_initializer=keras.initializers.Constant(float(np.mean(y_target_train))))(adapter)
    return keras.Model(inputs, output, name=name)


def unfreeze(model: keras.Model) -> keras.Model:
    """Fine-tuning (comparison only): every weight of a transfer model trainable."""
    for layer in model.layers:
        layer.trainable = True
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                inner.trainable = True
    return model


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
