"""Augmented copies of the training audio, with provenance, for the ``augment`` stage.

Every ``status == "ok"`` clip gets ``augment.copies`` copies, whatever split it will land in:
the splits are decided later (``ser.training.splits``), and each copy carries its
``source_utterance_id``, ``speaker``, ``emotion``, ``gender`` and ``corpus`` so that the
training code uses only copies whose source is on the training side of a fold. Evaluation
only ever sees original audio.

A copy is: the front-end signal (``ser.audio.load_audio``) -> an ``audiomentations`` chain
(pitch shift, time stretch, time shift, Gaussian noise at an SNR, each with its probability)
-> normalized again like any clip -> ``ser.features.extract``. The random draws are seeded by
(``augment.seed``, utterance_id, copy), so a copy is the same whichever worker makes it and
whatever else is in the run. Outputs use the feature folder layout plus ``index.parquet``.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser.audio import load_audio, normalize
from ser.params import AudioParams, AugmentParams, FeatureParams, params_hash, typed
from ser.runtime import make_executor
from ser.runtime.executor import Executor
from ser.features import store
from ser.features.compute import build_feature_folder, ok_clips, open_cache, resolve_path, staged_folder
from ser.features.extraction import extract
from ser.runtime.ray_executor import ray_options

INDEX_FILE = "index.parquet"
INDEX_COLUMNS = ("utterance_id", "source_utterance_id", "copy", "speaker", "corpus", "emotion", "gender")
PROVENANCE_COLUMNS = ("speaker", "corpus", "emotion", "gender")


def copy_id(source_utterance_id: str, copy: int) -> str:
    return f"{source_utterance_id}__aug{copy}"


def copy_seed(seed: int, utterance_id: str, copy: int) -> int:
    """A 32-bit seed from (augment.seed, utterance_id, copy): independent of run order."""
    digest = hashlib.sha256(f"{seed}:{utterance_id}:{copy}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_augmenter(params: AugmentParams | dict[str, Any]):
    """The audiomentations chain described by the ``augment:`` section."""
    from audiomentations import AddGaussianSNR, Compose, PitchShift, Shift, TimeStretch

    params = typed(AugmentParams, params)
    noise, shift, pitch, stretch = params.noise, params.shift, params.pitch, params.stretch
    return Compose([
        PitchShift(min_semitones=pitch.min_semitones, max_semitones=pitch.max_semitones, p=pitch.p),
        TimeStretch(min_rate=stretch.min_rate, max_rate=stretch.max_rate,
                    leave_length_unchanged=stretch.leave_length_unchanged, p=stretch.p),
        # No rollover: speech that wraps around the clip's end is not speech any more.
        Shift(min_shift=-shift.max_fraction, max_shift=shift.max_fraction, shift_unit="fraction",
              rollover=shift.rollover, p=shift.p),
        AddGaussianSNR(min_snr_db=noise.min_snr_db, max_snr_db=noise.max_snr_db, p=noise.p),
    ])


def augment_signal(y: np.ndarray, sample_rate: int, params: AugmentParams | dict[str, Any], seed: int) -> np.ndarray:
    """One augmented version of ``y`` (``params`` the ``augment:`` section); the same (y, params,
    seed) always gives the same output."""
    augmenter = make_augmenter(params)
    # audiomentations draws from the global `random` and `numpy.random` generators; seeding them
    # here, per copy, in whichever process runs it, makes every copy reproducible.
    random.seed(seed)
    np.random.seed(seed)
    out = augmenter(samples=np.asarray(y, dtype=np.float32), sample_rate=sample_rate)
    out = np.asarray(out, dtype=np.float32)
    if out.size == 0 or not np.all(np.isfinite(out)):
        raise ValueError("augmentation produced an empty or non-finite signal")
    return out


@dataclass(frozen=True)
class AugmentJob:
    key: str                    # cache key of this copy's signal
    path: str
    sets: tuple[str, ...]
    utterance_id: str           # of the source clip
    copy: int
    audio_params: AudioParams = field(hash=False)
    feature_params: FeatureParams = field(hash=False)
    augment_params: AugmentParams = field(hash=False)

    def __post_init__(self) -> None:
        # The sections typed once, here: a job may also be built from plain mappings (a test).
        for name, schema in (("audio_params", AudioParams), ("feature_params", FeatureParams),
                             ("augment_params", AugmentParams)):
            object.__setattr__(self, name, typed(schema, getattr(self, name)))


def augmented_signal(job: AugmentJob) -> np.ndarray:
    """The front-end signal of one augmented copy (normalized again after augmentation)."""
    y = load_audio(job.path, job.audio_params)
    seed = copy_seed(job.augment_params.seed, job.utterance_id, job.copy)
    y = augment_signal(y, job.audio_params.sample_rate, job.augment_params, seed)
    return normalize(y, job.audio_params)


def augment_and_extract(job: AugmentJob) -> dict[str, np.ndarray]:
    """The per-copy work of the augment stage (module-level and pure, for any executor)."""
    return extract(augmented_signal(job), job.audio_params, job.feature_params, job.sets)


def augment_params_hash(augment_params: AugmentParams | dict[str, Any]) -> str:
    """Hash of what shapes one copy: the ``augment:`` section as params.yaml writes it, less
    ``copies`` (how many there are)."""
    written = typed(AugmentParams, augment_params).as_dict()
    return params_hash({key: value for key, value in written.items() if key != "copies"})


def copy_key(pcm_sha256: str, utterance_id: str, copy: int, augment_hash: str) -> str:
    return hashlib.sha256(f"aug:{pcm_sha256}:{utterance_id}:{copy}:{augment_hash}".encode()).hexdigest()


def compute_augmented(metadata_df: pd.DataFrame, out_dir: str | os.PathLike,
                      audio_params: AudioParams | dict[str, Any], feature_params: FeatureParams | dict[str, Any],
                      augment_params: AugmentParams | dict[str, Any], *, root: str | os.PathLike,
                      executor: Executor | None = None, cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """The augment stage: ``augment.copies`` copies of every ok clip -> features in ``out_dir``.

    Writes the feature-folder layout (``ser.features.store``) keyed by the copies'
    utterance_ids (``<source>__aug<k>``, k from 0) plus ``index.parquet`` with provenance.
    ``copies: 0`` writes the same files, valid and empty. Copies are made of every ok clip;
    keeping only those whose source is on the training side is the splits' job.
    """
    audio_params = typed(AudioParams, audio_params)
    feature_params = typed(FeatureParams, feature_params)
    augment_params = typed(AugmentParams, augment_params)
    root = Path(root).absolute()  # jobs name files a worker finds whatever its working directory
    out_dir = Path(out_dir)
    copies = augment_params.copies
    if copies < 0:
        raise ValueError(f"augment.copies must be >= 0, got {copies}")
    clips = ok_clips(metadata_df)
    augment_hash = augment_params_hash(augment_params)
    rows: list[dict[str, Any]] = []
    jobs_info: dict[str, tuple[str, str, int]] = {}
    for clip in clips.itertuples(index=False):
        for copy in range(copies):
            key = copy_key(clip.pcm_sha256, clip.utterance_id, copy, augment_hash)
            jobs_info[key] = (resolve_path(clip.path, root), clip.utterance_id, copy)
            rows.append({"utterance_id": copy_id(clip.utterance_id, copy),
                         "source_utterance_id": clip.utterance_id, "copy": copy, "_key": key,
                         **{column: getattr(clip, column) for column in PROVENANCE_COLUMNS}})
    executor = executor or make_executor(feature_params.executor, feature_params.workers,
                                         **ray_options(feature_params))

    def make_job(key: str, missing: tuple[str, ...]) -> AugmentJob:
        path, utterance_id, copy = jobs_info[key]
        return AugmentJob(key, path, missing, utterance_id, copy, audio_params, feature_params,
                          augment_params)

    cache, scratch = open_cache(feature_params, root, cache_dir)
    try:
        # The index is written into the staged folder too: the folder appears with it or not at all.
        with staged_folder(out_dir) as staging:
            summary = build_feature_folder([(row["utterance_id"], row["_key"]) for row in rows], make_job,
                                           augment_and_extract, staging, audio_params, feature_params,
                                           cache, executor, desc="augment" if progress else None, root=root)
            write_index(staging, rows)
    finally:
        cache.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {**summary, "copies": copies, "augment_hash": augment_hash}


def write_index(folder: Path, rows: list[dict[str, Any]]) -> None:
    """``index.parquet`` of the copies that were computed (failed ones are in failures.parquet)."""
    failed = set(store.load_failures(folder)["utterance_id"])
    index = pd.DataFrame([row for row in rows if row["utterance_id"] not in failed],
                         columns=[*INDEX_COLUMNS, "_key"]).drop(columns="_key")
    schema = pa.schema([(name, pa.int64() if name == "copy" else pa.string()) for name in INDEX_COLUMNS])
    pq.write_table(pa.Table.from_pandas(index.astype({"copy": "int64"}), schema=schema,
                                        preserve_index=False), folder / INDEX_FILE)


def load_index(folder: str | os.PathLike) -> pd.DataFrame:
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {INDEX_FILE}; run the augment stage")
    return pd.read_parquet(path)
