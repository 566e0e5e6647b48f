"""Shared by the prediction, serving, web and report tests: the mirror, real clips, a small model.

Clips come from the ``real_mirror`` fixture (tests/conftest.py), which fails when the corpora
are missing. The small model is a real ModelBundle of the shipped model type on its default input (the
logistic regression on the pooled encoder) trained on a few dozen real RAVDESS clips, so these
tests exercise the code and the encoder a trained pipeline model does without depending on the
full pipeline having run. It is trained once per test session.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                    "07": "disgust", "08": "surprised"}
TRAIN_ACTORS = (1, 2, 3, 4)
_TRAINED: dict[str, Path] = {}


def ravdess_clip(mirror: Path, actor: int, emotion: str = "05", intensity: str = "02", statement: str = "01",
                 repetition: str = "01") -> Path:
    if emotion == "01":
        intensity = "01"  # neutral has no strong intensity
    path = mirror / "ravdess" / f"Actor_{actor:02d}" / f"03-01-{emotion}-{intensity}-{statement}-{repetition}-{actor:02d}.flac"
    assert path.is_file(), f"missing RAVDESS clip {path}"
    return path


def project_params() -> dict:
    from tests.params_support import params

    return params()


def fit_bundle(mirror: Path, folder: Path, actors, emotions: dict[str, str], model_type: str,
               feature_input: str, model_params: dict) -> Path:
    """A ModelBundle of ``model_type`` on ``feature_input``, fitted on the RAVDESS clips (strong,
    statement 1) of ``actors`` x ``emotions`` (code -> name) and saved to ``folder``. Its inputs
    come from ``inputs_from_signals``: the features a served clip will get, by the same code."""
    from ser.audio import load_audio
    from ser.features.compute import table_columns
    from ser.features.store import TABLE_SETS
    from ser.models import MODELS
    from ser.models.bundle import ModelBundle

    params = project_params()
    classes = list(emotions.values())
    clips, labels = [], []
    for actor in actors:
        for code, emotion in emotions.items():
            clips.append(load_audio(ravdess_clip(mirror, actor, code), params["audio"]))
            labels.append(classes.index(emotion))
    bundle = ModelBundle(model_type=model_type, classes=classes, feature_input=feature_input,
                         audio=params["audio"], features=params["features"], estimator=None)
    inputs = bundle.inputs_from_signals(clips)
    if feature_input in TABLE_SETS:  # named columns, as the features stage writes them
        bundle.feature_names = table_columns(feature_input, params["features"], inputs.shape[1])
    bundle.estimator = MODELS[model_type](model_params, inputs.shape[1:], len(classes), 0,
                                          feature_names=bundle.feature_names or None)
    bundle.estimator.fit(inputs, np.asarray(labels))
    return bundle.save(folder)


def train_small_bundle(mirror: Path, folder: Path) -> Path:
    """The model the pipeline ships (params.yaml's ``model.type`` on its default input: the
    encoder), fitted on 32 real RAVDESS clips (4 actors x 8 emotions, strong, statement 1)."""
    key = str(folder)
    if key in _TRAINED and (folder / "bundle.json").is_file():
        return folder
    from ser.models import resolve_feature_input

    model = project_params()["model"]
    model_type = model["type"]
    feature_input = resolve_feature_input(model_type, model["features"], model[model_type])
    fit_bundle(mirror, folder, TRAIN_ACTORS, RAVDESS_EMOTIONS, model_type, feature_input, model[model_type])
    _TRAINED[key] = folder
    return folder


def shared_bundle_dir(tmp_path_factory) -> Path:
    """One folder per test session, whichever test module asks first."""
    return tmp_path_factory.getbasetemp() / "serve_small_bundle"


def wav_bytes(y: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(y, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def long_recording(mirror: Path, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """Real speech of about ``seconds``: RAVDESS clips of an unseen actor, back to back."""
    from ser.audio import decode, resample, to_mono

    pieces, total = [], 0
    codes = list(RAVDESS_EMOTIONS)
    index = 0
    while total < seconds * sample_rate:
        samples, rate = decode(ravdess_clip(mirror, 10, codes[index % len(codes)], repetition=f"0{1 + index // 8 % 2}"))
        piece = resample(to_mono(samples), rate, sample_rate)
        pieces.append(piece)
        total += piece.size
        index += 1
    return np.concatenate(pieces)[: int(seconds * sample_rate)]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2", **extra})
    return env


@contextmanager
def ser_serve(*args: str, log_path: Path, env: dict[str, str] | None = None,
              timeout_s: float = 180.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``ser serve ARGS`` on a free loopback port for the ``with`` block: yields its base URL and
    process, and stops it and its workers when the block ends, failed or not."""
    from tests.local_server import ServerError, free_port, stop_process_group, wait_until_answering

    port = free_port()
    with log_path.open("wb") as log:
        server = subprocess.Popen([PYTHON, "-m", "ser", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=REPO, env=env or subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_answering(f"{base}/health", server, timeout_s)
            except ServerError as exc:
                raise AssertionError(f"{exc}; its log:\n{log_path.read_text()[-3000:]}") from None
            yield base, server
        finally:
            stop_process_group(server)


def wait_for_health(base: str, condition: Callable[[dict], bool], timeout_s: float = 60.0) -> dict:
    """Poll ``/health`` until ``condition(report)`` holds; returns that report."""
    deadline = time.monotonic() + timeout_s
    report: dict = {}
    while time.monotonic() < deadline:
        report = requests.get(f"{base}/health", timeout=10).json()
        if condition(report):
            return report
        time.sleep(0.05)
    raise AssertionError(f"/health never met the condition in {timeout_s} s; last: {report}")


def post_clip(base: str, name: str, data: bytes, timeout_s: float = 120.0, **params: str) -> requests.Response:
    return requests.post(f"{base}/api/predict", files={"file": (name, data, "application/octet-stream")},
                         params={"visuals": "false", **params}, timeout=timeout_s)
