"""Keras (TensorFlow backend) families: ``cnn1d``, ``cnn2d``, ``lstm``, ``bilstm``, ``gru``, ``clstm``.

All take a sequence input ``(n, T, D)`` (log-mel, MFCC or filter-bank frames); a tabular input
``(n, D)`` is read as a length-D sequence of one value. The first layer is a ``Normalization``
adapted on the training rows ``fit`` receives, so standardization is fitted on the training
folds only and is saved inside the model (and inside the MLflow Keras flavor).

Sized for two CPU cores: few filters/units, recurrent families first average-pool the time
axis (``time_pool``), and training stops early on the speaker-disjoint validation split.
"""

from __future__ import annotations

# opensmile must be loaded before TensorFlow in any process that uses both: the other order
# corrupts the heap at the first eGeMAPS call (malloc(): invalid size).
import opensmile  # noqa: F401  isort: skip

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

RECURRENT = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
# Keras' default 0.99 needs hundreds of steps before the inference-time statistics are usable;
# with ~20 batches per epoch the validation loss then rises while training improves, and early
# stopping keeps a model that predicts one class.
BN_MOMENTUM = 0.9


def make_deterministic(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # already enabled once the runtime is initialized; that is what we want
        pass


class EpochProgress(keras.callbacks.Callback):
    """One tqdm bar per fit, one tick per epoch, with the latest losses."""

    def __init__(self, epochs: int, desc: str):
        super().__init__()
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy")})
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


def _pool_size(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(2 if size >= 2 else 1 for size in shape)


def _as_sequence(inputs, input_shape: tuple[int, ...]):
    if len(input_shape) == 1:
        return keras.layers.Reshape((input_shape[0], 1))(inputs)
    return inputs


def _time_pool(x, pool: int):
    if pool and pool > 1 and x.shape[1] >= 2 * pool:
        return keras.layers.AveragePooling1D(pool)(x)
    return x


def _conv1d_blocks(x, filters, kernel_size, dropout):
    for count in filters:
        x = keras.layers.Conv1D(int(count), int(kernel_size), padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.Activation("relu")(x)
        if x.shape[1] >= 2:
            x = keras.layers.MaxPooling1D(2)(x)
        x = keras.layers.Dropout(dropout)(x)
    return x


def _conv2d_blocks(x, filters, kernel_size, dropout):
    for count in filters:
        x = keras.layers.Conv2D(int(count), int(kernel_size), padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D(_pool_size(tuple(x.shape[1:3])))(x)
        x = keras.layers.Dropout(dropout)(x)
    return x


def _recurrent_stack(x, model_type, units, dropout):
    """Recurrent layers, then the mean of the last layer's outputs over time.

    Clips are zero-padded at the end to a fixed length, so a last hidden state would be read
    after up to a second of padding; the mean over all steps keeps what was heard.
    """
    units = [int(u) for u in (units if isinstance(units, (list, tuple)) else [units])]
    layer = RECURRENT["gru" if model_type == "gru" else "lstm"]
    for count in units:
        recurrent = layer(count, return_sequences=True)
        x = keras.layers.Bidirectional(recurrent)(x) if model_type == "bilstm" else recurrent(x)
        x = keras.layers.Dropout(dropout)(x)
    return keras.layers.GlobalAveragePooling1D()(x)


def build_network(model_type: str, params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> keras.Model:
    dropout = float(params.get("dropout", 0.3))
    inputs = keras.Input(shape=input_shape, name="features")
    x = keras.layers.Normalization(axis=-1, name="standardize")(inputs)
    x = _as_sequence(x, input_shape)
    if model_type == "cnn1d":
        x = _conv1d_blocks(x, params.get("filters", [64, 128, 128]), params.get("kernel_size", 5), dropout)
        x = keras.layers.GlobalAveragePooling1D()(x)
    elif model_type == "cnn2d":
        x = keras.layers.Reshape((*x.shape[1:], 1))(x)
        x = _conv2d_blocks(x, params.get("filters", [32, 64, 128]), params.get("kernel_size", 3), dropout)
        x = keras.layers.GlobalAveragePooling2D()(x)
    elif model_type in ("lstm", "bilstm", "gru"):
        x = _time_pool(x, int(params.get("time_pool", 3)))
        x = _recurrent_stack(x, model_type, params.get("units", [128, 64]), dropout)
    elif model_type == "clstm":
        # CNN over the (time x frequency) image, then an LSTM over the pooled time axis.
        x = keras.layers.Reshape((*x.shape[1:], 1))(x)
        x = _conv2d_blocks(x, params.get("filters", [32, 64]), params.get("kernel_size", 3), dropout)
        x = keras.layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)
        x = _recurrent_stack(x, "lstm", params.get("units", 64), dropout)
    else:
        raise ValueError(f"'{model_type}' is not a Keras model type")
    x = keras.layers.Dense(int(params.get("dense_units", 64)), activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=model_type)


class KerasEstimator:
    def __init__(self, model_type: str, params: dict[str, Any], input_shape: tuple[int, ...],
                 n_classes: int, seed: int):
        self.model_type = model_type
        self.params = dict(params)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = n_classes
        self.seed = seed
        make_deterministic(seed)
        self.model = build_network(model_type, self.params, self.input_shape, n_classes)

    @property
    def flavor_model(self) -> keras.Model:
        """The object to log with the MLflow Keras/TensorFlow flavor (normalization included)."""
        return self.model

    def _check(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.shape[1:] != self.input_shape:
            raise ValueError(f"{self.model_type}: expected input (n, {', '.join(map(str, self.input_shape))}), got {X.shape}")
        return X

    def fit(self, X, y, X_val=None, y_val=None, class_weight: dict[int, float] | None = None) -> dict[str, list]:
        make_deterministic(self.seed)
        X = self._check(X)
        y = np.asarray(y, dtype=np.int64)
        self.model.get_layer("standardize").adapt(X)
        self.model.compile(optimizer=keras.optimizers.Adam(float(self.params.get("learning_rate", 1e-3))),
                           loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        epochs = int(self.params.get("epochs", 60))
        callbacks: list[keras.callbacks.Callback] = [EpochProgress(epochs, f"{self.model_type} epochs")]
        validation = None
        if X_val is not None and y_val is not None and len(y_val) > 0:
            validation = (self._check(X_val), np.asarray(y_val, dtype=np.int64))
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(self.params.get("patience", 8)),
                                                           restore_best_weights=True))
        result = self.model.fit(X, y, validation_data=validation, epochs=epochs,
                                batch_size=int(self.params.get("batch_size", 64)),
                                class_weight={int(k): float(v) for k, v in class_weight.items()} if class_weight else None,
                                shuffle=True, verbose=0, callbacks=callbacks)
        history = {key: [float(v) for v in values] for key, values in result.history.items()}
        history["epoch"] = list(range(len(history.get("loss", []))))
        return history

    def predict_proba(self, X) -> np.ndarray:
        return np.asarray(self.model.predict(self._check(X), batch_size=256, verbose=0), dtype=np.float64)

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / "model.keras")
        meta = {"model_type": self.model_type, "params": self.params, "input_shape": list(self.input_shape),
                "n_classes": self.n_classes, "seed": self.seed}
        (folder / "estimator.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "KerasEstimator":
        folder = Path(folder)
        meta = json.loads((folder / "estimator.json").read_text(encoding="utf-8"))
        estimator = cls.__new__(cls)
        estimator.model_type = meta["model_type"]
        estimator.params = meta["params"]
        estimator.input_shape = tuple(meta["input_shape"])
        estimator.n_classes = meta["n_classes"]
        estimator.seed = meta["seed"]
        estimator.model = keras.models.load_model(folder / "model.keras", compile=False)
        return estimator


def build(model_type: str, params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int,
          seed: int) -> KerasEstimator:
    return KerasEstimator(model_type, params, input_shape, n_classes, seed)


def load(folder: str | os.PathLike) -> KerasEstimator:
    return KerasEstimator.load(folder)
