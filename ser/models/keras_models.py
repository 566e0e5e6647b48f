"""Keras (TensorFlow backend) families: ``cnn1d``, ``cnn2d``, ``lstm``, ``bilstm``, ``gru``, ``clstm``.

All take a sequence input: ``(n, T, D)`` (log-mel, MFCC, filter banks) or the Whisper encoder's
frames of several depths ``(n, T, depths, d_model)`` (float16, as stored); a tabular input
``(n, D)`` is read as a length-D sequence of one value. Every network is

    standardize -> [depth weighting] -> SpecAugment (training only) -> time pooling
    -> [frame projection] -> body -> statistics pooling (mean + std over time, or attentive)
    -> dense -> softmax

* ``standardize``: a ``Normalization`` layer adapted on the training rows ``fit`` receives, so
  standardization is fitted on the training folds only and is saved inside the model (and
  inside the MLflow Keras flavor).
* depth weighting: encoder frames of several depths become one frame sequence through a learned
  softmax-weighted sum of the (standardized) depths.
* ``SpecAugment``: random time and feature masks, active only while training.
* time pooling: frames are averaged until at most ``max_steps`` remain (100 frames/s MFCCs
  become ~25/s, 25/s Whisper frames are left alone), which keeps recurrent layers cheap.
* frame projection: inputs wider than ``proj_above`` values per frame (Whisper: 512) are first
  mapped to ``proj_units`` per frame by a shared dense layer; with ``proj_skip`` the statistics
  of the projected frames also bypass the body to the head (a pooled-frame probe the body adds
  to), which keeps the families from overfitting pretrained frames.
* body: conv blocks (``cnn1d``, ``cnn2d``), recurrent layers (``lstm``, ``bilstm``, ``gru``), or a
  2-D conv front end followed by an LSTM over time (``clstm``).

Training: AdamW with a warm-up + cosine learning-rate decay (``schedule: cosine``; ``constant``
turns it off), label smoothing, balanced class weights as sample weights, and early stopping on
the speaker-disjoint validation loss (best weights restored). Every knob is a param
(``params.yaml`` holds every value; ``ser.params`` checks them). Sized for two CPU cores: a 6-fold cross-validation of a family on
RAVDESS takes 3-5 minutes.
"""

from __future__ import annotations

# opensmile must be loaded before TensorFlow in any process that uses both: the other order
# corrupts the heap at the first eGeMAPS call (malloc(): invalid size).
import opensmile  # noqa: F401  isort: skip

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's native start-up notes bypass TF_CPP_MIN_LOG_LEVEL (absl logs before it is read); they
# tell a user nothing about their recordings. Only these lines are dropped: any other is passed on.
_START_UP_NOISE = ("All log messages before absl::InitializeLog() is called are written to STDERR",
                   "oneDNN custom operations are on")


@contextmanager
def _without_native_notes(noise: tuple[str, ...]):
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to borrow: leave the output as it is
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(note in line for note in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


with _without_native_notes(_START_UP_NOISE):
    import keras  # noqa: E402
    import tensorflow as tf  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ser.params import KerasParams, model_block  # noqa: E402

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


# ---- custom layers (registered so keras.models.load_model rebuilds them) --------------------------
@keras.saving.register_keras_serializable(package="ser")
class SpecAugment(keras.layers.Layer):
    """SpecAugment-style masking of a standardized ``(batch, T, D)`` input, in training only.

    ``time_masks`` spans of up to ``time_width`` frames (a fraction of T when < 1) and
    ``freq_masks`` bands of up to ``freq_width`` features (a fraction of D when < 1) are set to
    0, the training mean after standardization. At inference the layer is the identity.
    """

    def __init__(self, time_masks=2, time_width=0.1, freq_masks=2, freq_width=0.15, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.time_masks, self.time_width = int(time_masks), float(time_width)
        self.freq_masks, self.freq_width = int(freq_masks), float(freq_width)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    @staticmethod
    def _width(width: float, size: int) -> int:
        return int(round(width * size)) if width < 1 else int(width)

    def _keep(self, batch, size, count, width, dtype):
        """(batch, size) 1/0 mask with ``count`` random spans of up to ``width`` zeros."""
        keep = keras.ops.ones((batch, size), dtype=dtype)
        if count <= 0 or width <= 0 or size < 2:
            return keep
        width = min(width, size - 1)
        positions = keras.ops.arange(size, dtype="float32")[None, :]
        for _ in range(count):
            span = keras.random.uniform((batch, 1), 0.0, width + 1.0, seed=self.seed_generator)
            span = keras.ops.floor(span)
            start = keras.ops.floor(keras.random.uniform((batch, 1), 0.0, 1.0, seed=self.seed_generator)
                                    * (size - span + 1.0))
            inside = keras.ops.logical_and(positions >= start, positions < start + span)
            keep = keep * keras.ops.cast(keras.ops.logical_not(inside), dtype)
        return keep

    def call(self, inputs, training=None):
        if not training:
            return inputs
        batch = keras.ops.shape(inputs)[0]
        steps, features = int(inputs.shape[1]), int(inputs.shape[2])
        time_keep = self._keep(batch, steps, self.time_masks, self._width(self.time_width, steps), inputs.dtype)
        freq_keep = self._keep(batch, features, self.freq_masks, self._width(self.freq_width, features), inputs.dtype)
        return inputs * time_keep[:, :, None] * freq_keep[:, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {"time_masks": self.time_masks, "time_width": self.time_width,
                                       "freq_masks": self.freq_masks, "freq_width": self.freq_width,
                                       "seed": self.seed}


@keras.saving.register_keras_serializable(package="ser")
class DepthWeighting(keras.layers.Layer):
    """Standardizes an encoder's frames and takes a learned softmax-weighted sum of its depths,
    ``(batch, T, depths, C) -> (batch, T, C)``, as the SSL benchmarks (SUPERB, EmoBox) combine
    hidden layers; the weights start equal.

    Each (depth, channel) value is standardized with the training frames' statistics
    (:meth:`set_statistics`). Both steps are linear, so they run as one scale per (depth, channel)
    and one offset per channel: a single pass over the frames, which are most of an epoch's
    memory traffic (docs/RESULTS.md).
    """

    def build(self, input_shape):
        depths, channels = int(input_shape[2]), int(input_shape[3])
        self.logits = self.add_weight(name="logits", shape=(depths,), initializer="zeros")
        self.mean = self.add_weight(name="mean", shape=(depths, channels), initializer="zeros", trainable=False)
        self.inverse_std = self.add_weight(name="inverse_std", shape=(depths, channels), initializer="ones",
                                           trainable=False)

    def set_statistics(self, mean: np.ndarray, variance: np.ndarray) -> None:
        """Per (depth, channel) mean and variance of the training frames."""
        std = np.maximum(np.sqrt(np.asarray(variance, dtype=np.float64)), keras.backend.epsilon())
        self.mean.assign(np.asarray(mean, dtype=np.float32))
        self.inverse_std.assign((1.0 / std).astype(np.float32))

    def call(self, inputs):
        scale = keras.ops.softmax(self.logits)[:, None] * self.inverse_std
        weighted = keras.ops.cast(inputs[:, :, 0], "float32") * scale[0]
        for depth in range(1, inputs.shape[2]):
            weighted = weighted + keras.ops.cast(inputs[:, :, depth], "float32") * scale[depth]
        return weighted - keras.ops.sum(scale * self.mean, axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[3])


def frame_statistics(X: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance over clips and time of frames ``(n, T, depths, C)``, per (depth, channel),
    summed in float64 chunk by chunk (float16 sums over thousands of clips would overflow)."""
    total = np.zeros(X.shape[2:], dtype=np.float64)
    squares = np.zeros(X.shape[2:], dtype=np.float64)
    for start in range(0, len(X), chunk):
        block = np.asarray(X[start:start + chunk], dtype=np.float32).reshape(-1, *X.shape[2:])
        total += block.sum(axis=0, dtype=np.float64)
        squares += np.square(block).sum(axis=0, dtype=np.float64)  # exact: a float16's square fits a float32
    count = len(X) * X.shape[1]
    mean = total / count
    return mean, np.maximum(squares / count - np.square(mean), 0.0)


@keras.saving.register_keras_serializable(package="ser")
class StatsPooling(keras.layers.Layer):
    """Mean and standard deviation over time: ``(batch, T, C) -> (batch, 2C)``.

    With ``attention=True`` the statistics are weighted by a learned softmax over time
    (attentive statistics pooling): a frame scores ``v . tanh(W x_t + b)``.
    """

    def __init__(self, attention=False, attention_units=64, **kwargs):
        super().__init__(**kwargs)
        self.attention, self.attention_units = bool(attention), int(attention_units)

    def build(self, input_shape):
        if self.attention:
            channels = int(input_shape[-1])
            self.w = self.add_weight(name="w", shape=(channels, self.attention_units), initializer="glorot_uniform")
            self.b = self.add_weight(name="b", shape=(self.attention_units,), initializer="zeros")
            self.v = self.add_weight(name="v", shape=(self.attention_units, 1), initializer="glorot_uniform")

    def call(self, inputs):
        if self.attention:
            scores = keras.ops.matmul(keras.ops.tanh(keras.ops.matmul(inputs, self.w) + self.b), self.v)
            weights = keras.ops.softmax(scores, axis=1)
            mean = keras.ops.sum(weights * inputs, axis=1)
            variance = keras.ops.sum(weights * keras.ops.square(inputs), axis=1) - keras.ops.square(mean)
        else:
            mean = keras.ops.mean(inputs, axis=1)
            variance = keras.ops.var(inputs, axis=1)
        return keras.ops.concatenate([mean, keras.ops.sqrt(keras.ops.maximum(variance, 0.0) + 1e-5)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])

    def get_config(self):
        return super().get_config() | {"attention": self.attention, "attention_units": self.attention_units}


# ---- building blocks ------------------------------------------------------------------------------
def _layer_widths(units: int | list[int]) -> list[int]:
    """One recurrent layer's width (``clstm``'s ``units``) or one per layer (the others')."""
    return units if isinstance(units, list) else [units]


def _as_sequence(inputs, input_shape: tuple[int, ...]):
    if len(input_shape) == 1:
        return keras.layers.Reshape((input_shape[0], 1))(inputs)
    return inputs


def _time_pool(x, max_steps: int):
    """Average consecutive frames so that at most ``max_steps`` remain (0 = keep all)."""
    steps = int(x.shape[1])
    if max_steps and steps > max_steps:
        return keras.layers.AveragePooling1D(math.ceil(steps / max_steps), padding="same", name="time_pool")(x)
    return x


def _project(x, units: int, above: int, dropout: float):
    """Shared per-frame dense projection of wide frames (more than ``above`` values); returns
    the frames and whether they were projected."""
    if units and int(x.shape[-1]) > above:
        x = keras.layers.Dense(units, use_bias=False, name="frame_projection")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.Dropout(dropout)(x)
        return x, True
    return x, False


def _conv1d_blocks(x, filters, kernel_size, dropout):
    for count in filters:
        x = keras.layers.Conv1D(count, kernel_size, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.Activation("relu")(x)
        if x.shape[1] >= 4:
            x = keras.layers.MaxPooling1D(2)(x)
        x = keras.layers.SpatialDropout1D(dropout)(x)
    return x


def _conv2d_blocks(x, filters, kernel_size, dropout):
    """Conv2D-BN-ReLU blocks over a (time, feature, channels) image; each block halves the
    feature and time axes (while they are long enough)."""
    for count in filters:
        x = keras.layers.Conv2D(count, kernel_size, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.Activation("relu")(x)
        pool = (2 if x.shape[1] >= 4 else 1, 2 if x.shape[2] >= 2 else 1)
        if pool != (1, 1):
            x = keras.layers.MaxPooling2D(pool)(x)
        x = keras.layers.SpatialDropout2D(dropout)(x)
    return x


def _recurrent_stack(x, model_type, units, dropout):
    """Recurrent layers returning every step (the pooling after them reads all of them:
    clips are zero-padded at the end, so a last hidden state would be read after padding).
    ``units``: one layer's width (``clstm``) or one per layer."""
    layer = RECURRENT["gru" if model_type == "gru" else "lstm"]
    for count in _layer_widths(units):
        recurrent = layer(count, return_sequences=True)
        x = keras.layers.Bidirectional(recurrent)(x) if model_type == "bilstm" else recurrent(x)
        x = keras.layers.Dropout(dropout)(x)
    return x


def _pool(x, params: KerasParams):
    pooling = params.pooling
    if pooling == "mean":
        return keras.layers.GlobalAveragePooling1D()(x)
    if pooling not in ("stats", "attention"):
        raise ValueError(f"unknown pooling '{pooling}'; use stats, attention or mean")
    return StatsPooling(attention=pooling == "attention", attention_units=params.attention_units,
                        name="stats_pooling")(x)


def input_dtype(input_shape: tuple[int, ...]) -> str:
    """Encoder frames of several depths (T, depths, C) are fed as the float16 they are stored in:
    half the memory of a float32 copy, which for five corpora is gigabytes."""
    return "float16" if len(input_shape) == 3 else "float32"


def build_network(model_type: str, params: KerasParams | dict[str, Any], input_shape: tuple[int, ...],
                  n_classes: int, seed: int | None = None) -> keras.Model:
    """The network of ``model_type``; ``params`` is its block ``model.<type>``."""
    params = model_block(model_type, params)
    dropout = params.dropout
    inputs = keras.Input(shape=input_shape, name="features", dtype=input_dtype(input_shape))
    if len(input_shape) == 3:  # (T, depths, C): every value standardized, then the depths weighed
        x = DepthWeighting(name="depth_weighting")(inputs)
    else:
        x = keras.layers.Normalization(axis=-1, name="standardize")(inputs)
        x = _as_sequence(x, input_shape)
    if params.time_masks > 0 or params.freq_masks > 0:
        x = SpecAugment(params.time_masks, params.time_width, params.freq_masks, params.freq_width,
                        seed=seed, name="spec_augment")(x)
    x = _time_pool(x, params.max_steps)
    x, projected = _project(x, params.proj_units, params.proj_above, dropout)
    # Pretrained frames (Whisper) are already good features: a shortcut carries the statistics of
    # the projected frames past the body, so the body only has to add to a pooled-frame probe.
    shortcut = StatsPooling(name="projection_stats")(x) if projected and params.proj_skip else None
    if model_type == "cnn1d":
        x = _conv1d_blocks(x, params.filters, params.kernel_size, dropout)
    elif model_type in ("cnn2d", "clstm"):
        x = keras.layers.Reshape((*x.shape[1:], 1))(x)
        x = _conv2d_blocks(x, params.filters, params.kernel_size, dropout)
        if params.freq_reduce == "mean":  # average the feature axis away
            x = keras.layers.AveragePooling2D((1, x.shape[2]))(x)
        x = keras.layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)
        if model_type == "clstm":
            x = _recurrent_stack(x, "lstm", params.units, dropout)
    elif model_type in ("lstm", "bilstm", "gru"):
        x = _recurrent_stack(x, model_type, params.units, dropout)
    else:
        raise ValueError(f"'{model_type}' is not a Keras model type")
    x = _pool(x, params)
    if shortcut is not None:
        x = keras.layers.Concatenate()([x, shortcut])
    x = keras.layers.Dense(params.dense_units, use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=model_type)


def _constant(array: np.ndarray) -> tf.Tensor:
    """``tf.constant(array)``; float16 goes in as its int16 bits (TensorFlow converts float16
    arrays element by element, several times slower) and is reinterpreted, not converted."""
    if array.dtype == np.float16:
        return tf.bitcast(tf.constant(np.ascontiguousarray(array).view(np.int16)), tf.float16)
    return tf.constant(array)


class KerasEstimator:
    """A Keras family's network; ``params`` is its block ``model.<type>`` (the schema class or
    the mapping, kept typed as ``self.params``)."""

    def __init__(self, model_type: str, params: KerasParams | dict[str, Any], input_shape: tuple[int, ...],
                 n_classes: int, seed: int):
        self.model_type = model_type
        self.params = model_block(model_type, params)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = n_classes
        self.seed = seed
        make_deterministic(seed)
        self.model = build_network(model_type, self.params, self.input_shape, n_classes, seed)

    @property
    def flavor_model(self) -> keras.Model:
        """The object to log with the MLflow Keras/TensorFlow flavor (normalization included)."""
        return self.model

    def _check(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=input_dtype(self.input_shape))
        if X.shape[1:] != self.input_shape:
            raise ValueError(f"{self.model_type}: expected input (n, {', '.join(map(str, self.input_shape))}), got {X.shape}")
        return X

    def _one_hot(self, y) -> np.ndarray:
        return np.eye(self.n_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]

    def _batches(self, X: np.ndarray, *columns: np.ndarray, batch_size: int, shuffle: bool = False) -> tf.data.Dataset:
        """Batches gathered from one in-memory copy of ``X`` in its own dtype. (Keras' array adapter
        would first cast a float16 input to float32 in full: gigabytes and ~15 s per fit on the
        five corpora's encoder frames.) Shuffled with the estimator's seed, anew every epoch."""
        tensors = tuple(_constant(a) for a in (X, *columns))
        order = tf.data.Dataset.range(len(X))
        if shuffle:
            order = order.shuffle(len(X), seed=self.seed, reshuffle_each_iteration=True)
        if len(tensors) == 1:  # inputs alone (predict)
            return order.batch(batch_size).map(lambda rows: tf.gather(tensors[0], rows)).prefetch(1)
        return order.batch(batch_size).map(lambda rows: tuple(tf.gather(t, rows) for t in tensors)).prefetch(1)

    def _standardize_with(self, X: np.ndarray) -> None:
        """The input standardization's statistics, from the training rows."""
        if len(self.input_shape) == 3:
            self.model.get_layer("depth_weighting").set_statistics(*frame_statistics(X))
        else:
            self.model.get_layer("standardize").adapt(
                tf.data.Dataset.from_tensor_slices(X).batch(256).map(lambda batch: tf.cast(batch, tf.float32)))

    def fit(self, X, y, X_val=None, y_val=None, sample_weight: np.ndarray | None = None) -> dict[str, list]:
        make_deterministic(self.seed)
        p = self.params
        X = self._check(X)
        y = np.asarray(y, dtype=np.int64)
        self._standardize_with(X)
        epochs = p.epochs
        batch_size = p.batch_size
        steps = max(1, math.ceil(len(X) / batch_size))
        learning_rate = p.learning_rate
        if p.schedule == "cosine":
            warmup = min(p.warmup_epochs * steps, max(0, epochs * steps - 1))
            learning_rate = keras.optimizers.schedules.CosineDecay(
                learning_rate / 10, decay_steps=max(1, epochs * steps - warmup), alpha=p.min_lr_ratio,
                warmup_target=learning_rate if warmup else None, warmup_steps=warmup)
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=p.weight_decay, clipnorm=p.clipnorm)
        self.model.compile(optimizer=optimizer,
                           loss=keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing),
                           metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        weights = (np.ones(len(y), dtype=np.float32) if sample_weight is None
                   else np.asarray(sample_weight, dtype=np.float32))
        callbacks: list[keras.callbacks.Callback] = [EpochProgress(epochs, f"{self.model_type} epochs")]
        validation = None
        if X_val is not None and y_val is not None and len(y_val) > 0:
            validation = (self._check(X_val), self._one_hot(y_val))
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=p.patience,
                                                           restore_best_weights=True))
        if validation is not None:
            validation = self._batches(*validation, batch_size=256)
        result = self.model.fit(self._batches(X, self._one_hot(y), weights, batch_size=batch_size, shuffle=True),
                                epochs=epochs, validation_data=validation, shuffle=False, verbose=0,
                                callbacks=callbacks)
        history = {key: [float(v) for v in values] for key, values in result.history.items()}
        history["epoch"] = list(range(len(history.get("loss", []))))
        return history

    def predict_proba(self, X) -> np.ndarray:
        return np.asarray(self.model.predict(self._batches(self._check(X), batch_size=256), verbose=0),
                          dtype=np.float64)

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / "model.keras")
        meta = {"model_type": self.model_type, "params": self.params.as_dict(), "input_shape": list(self.input_shape),
                "n_classes": self.n_classes, "seed": self.seed}
        (folder / "estimator.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "KerasEstimator":
        folder = Path(folder)
        meta = json.loads((folder / "estimator.json").read_text(encoding="utf-8"))
        estimator = cls.__new__(cls)
        estimator.model_type = meta["model_type"]
        estimator.params = model_block(meta["model_type"], meta["params"], str(folder / "estimator.json"))
        estimator.input_shape = tuple(meta["input_shape"])
        estimator.n_classes = meta["n_classes"]
        estimator.seed = meta["seed"]
        estimator.model = keras.models.load_model(folder / "model.keras", compile=False)
        return estimator


def build(model_type: str, params: KerasParams | dict[str, Any], input_shape: tuple[int, ...], n_classes: int,
          seed: int, feature_names=None) -> KerasEstimator:  # feature_names: only tables have any
    return KerasEstimator(model_type, params, input_shape, n_classes, seed)


def load(folder: str | os.PathLike) -> KerasEstimator:
    return KerasEstimator.load(folder)
