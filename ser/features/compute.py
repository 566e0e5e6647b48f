"""Run feature extraction over many clips: cache, executor, streamed outputs, quarantine.

Phase 1 computes what the per-clip cache lacks, in parallel (``ser.runtime.executor``), streaming
each outcome into the cache; a clip that fails becomes a row of ``failures.parquet`` with its
problem and a printed warning. Phase 2 reads the cache back in metadata order and streams it
into the output files, so the outputs are the same whatever order the workers finished in and
memory never holds more than one chunk of clips. The outputs are written into a staging folder
that replaces the output folder only once complete (:func:`staged_folder`), and the cache
commits whole clips, so a run stopped at any point is resumed by running it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ser.audio import load_audio
from ser.runtime import make_executor
from ser.runtime.executor import Executor
from ser.features import store
from ser.features.cache import FeatureCache
from ser.features.extraction import check_sets, extract
from ser.features.sets import FEATURE_SETS, FROM_FIRST_CLIP, feature_section, typed_sections
from ser.params import AudioParams, FeatureParams
from ser.runtime.ray_executor import ray_options

_WRITE_CHUNK = 256
# Facts about a run, not about its outputs: returned (for the stage's log line) but kept out of
# info.json, so the feature folder is byte-identical whether the cache was cold or warm.
RUN_FACTS = ("computed", "computed_per_set", "from_cache")
# Name parts of the folders staged_folder() writes into and moves aside, beside the output folder.
_PARTIAL = ".partial-"
_RETIRED = ".retired-"


@dataclass(frozen=True)
class ClipJob:
    """One clip to extract: picklable, so any executor (process pool, cluster) can run it."""

    key: str                    # cache key of the signal: the clip's pcm_sha256
    path: str
    sets: tuple[str, ...]       # the sets the cache lacks for this clip
    audio_params: AudioParams = field(hash=False)
    feature_params: FeatureParams = field(hash=False)


def extract_job(job: ClipJob) -> dict[str, np.ndarray]:
    """The per-clip work of the features stage: front end, then the missing sets."""
    y = load_audio(job.path, job.audio_params)
    return extract(y, job.audio_params, job.feature_params, job.sets)


def resolve_path(path: str, root: Path) -> str:
    return path if os.path.isabs(path) else str(root / path)


def ok_clips(metadata: pd.DataFrame) -> pd.DataFrame:
    """The clips features are computed for: status ``ok``, in utterance_id order."""
    clips = metadata[metadata["status"] == "ok"].sort_values("utterance_id", kind="stable")
    missing_hash = clips["pcm_sha256"].isna()
    if missing_hash.any():
        raise ValueError("metadata: ok clips without pcm_sha256 (the cache key): "
                         f"{clips.loc[missing_hash, 'utterance_id'].head(5).tolist()}")
    return clips.reset_index(drop=True)


@contextlib.contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A new folder beside ``out_dir`` to write the outputs into, put in ``out_dir``'s place
    only when the block completes. A run that fails or is stopped (Ctrl-C, SIGTERM, SIGKILL)
    leaves the previous outputs or none, never a folder that looks finished and is not."""
    out_dir = out_dir.absolute()  # a name to put beside, even for "."
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}{_PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        retired = out_dir.with_name(f".{out_dir.name}{_RETIRED}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, retired)
        os.rename(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out_dir)


def _remove_abandoned(out_dir: Path) -> None:
    """Staging folders of runs that were killed before they could clean up (their process is gone)."""
    for marker in (_PARTIAL, _RETIRED):
        for folder in out_dir.parent.glob(f".{out_dir.name}{marker}*"):
            pid = folder.name[len(f".{out_dir.name}{marker}"):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        pass
    return True


def open_cache(feature_params: FeatureParams | dict, root: Path, cache_dir: str | os.PathLike | None = None
               ) -> tuple[FeatureCache, Path | None]:
    """The persistent cache (``features.cache_dir``), or a throwaway one when it is null."""
    folder = cache_dir if cache_dir is not None else feature_section(feature_params).cache_dir
    if folder:
        folder = Path(folder)
        return FeatureCache(folder if folder.is_absolute() else root / folder), None
    scratch = Path(tempfile.mkdtemp(prefix="ser-features-cache-"))
    return FeatureCache(scratch), scratch


def build_feature_folder(entries: Sequence[tuple[str, str]], make_job: Callable[[str, tuple[str, ...]], Any],
                         job_fn: Callable[[Any], dict], out_dir: Path, audio_params: AudioParams | dict,
                         feature_params: FeatureParams | dict, cache: FeatureCache, executor: Executor,
                         desc: str, root: Path | None = None) -> dict[str, Any]:
    """Fill ``out_dir`` for ``entries`` = [(utterance_id, cache key)] (in output order).

    ``make_job(key, missing_sets)`` builds the picklable job that ``job_fn`` turns into
    ``extract``'s dict. Returns a summary; ``info.json`` holds it without the :data:`RUN_FACTS`.
    Every output file depends only on the entries, the params and the features, never on the
    workers' completion order, the cache's state or where ``root`` (the folder that relative
    clip paths resolve against, stripped from failure messages) is.
    """
    audio_params, feature_params = typed_sections(audio_params, feature_params)
    sets = check_sets(feature_params.sets)
    for name in sets:  # a set's one-time work (e.g. verifying an encoder's weights): once, before any worker
        FEATURE_SETS[name].prepare(audio_params, feature_params)
    hashes = {name: FEATURE_SETS[name].params_hash(audio_params, feature_params) for name in sets}
    present = {name: set.intersection(*(cache.present(kind, hashes[name]) for kind in FEATURE_SETS[name].kinds))
               for name in sets}
    keys = list(dict.fromkeys(key for _, key in entries))
    jobs = []
    for key in keys:
        missing = tuple(name for name in sets if key not in present[name])
        if missing:
            jobs.append(make_job(key, missing))

    failed: dict[str, str] = {}
    for outcome in executor.map(job_fn, jobs, desc=desc, total=len(jobs)):
        job = outcome.item
        if not outcome.ok:
            failed[job.key] = _portable(outcome.error, root)
            tqdm.write(f"warning: {getattr(job, 'path', job.key)}: quarantined, {outcome.error}")
            continue
        cache.put_clip(job.key, [(kind, hashes[name], outcome.value[kind])
                                 for name in job.sets for kind in FEATURE_SETS[name].kinds])
    cache.commit()

    out_dir.mkdir(parents=True, exist_ok=True)
    good = [(uid, key) for uid, key in entries if key not in failed]
    failures = [(uid, failed[key]) for uid, key in entries if key in failed]
    store.write_failures(out_dir / store.FAILURES_FILE, failures)
    _write_sets(good, sets, hashes, out_dir, audio_params, feature_params, cache)
    summary = {
        "sets": list(sets),
        "params_hash": hashes,
        "clips": len(good),
        "failed": len(failures),
        "computed": len(jobs) - len(failed),
        "computed_per_set": {name: sum(1 for job in jobs if name in job.sets and job.key not in failed)
                             for name in sets},
        "from_cache": len(keys) - len(jobs),
    }
    for name, feature_set in FEATURE_SETS.items():  # every set's entries, empty when not selected
        summary.update(feature_set.info(audio_params, feature_params, name in sets))
    info = {key: value for key, value in summary.items() if key not in RUN_FACTS}
    (out_dir / store.INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return summary


def _portable(message: str, root: Path | None) -> str:
    """``message`` with the absolute ``root`` prefix of clip paths removed (repo-relative paths),
    so failures.parquet is the same in every clone."""
    prefix = f"{str(root).rstrip(os.sep)}{os.sep}" if root is not None and root.is_absolute() else ""
    return message.replace(prefix, "") if prefix != os.sep and prefix else message


def _chunks(items: Sequence, size: int = _WRITE_CHUNK):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def table_columns(set_name: str, feature_params: FeatureParams | dict, values_per_clip: int) -> list[str]:
    """Column names of a table set whose clips have ``values_per_clip`` values each (the encoder's
    width is read from that count)."""
    if set_name not in FEATURE_SETS:
        raise ValueError(f"'{set_name}' is not a table set; choose one of "
                         f"{[name for name, one in FEATURE_SETS.items() if one.table]}")
    return FEATURE_SETS[set_name].columns(feature_section(feature_params), values_per_clip)


def _write_sets(good: Sequence[tuple[str, str]], sets: Sequence[str], hashes: dict[str, str],
                out_dir: Path, audio_params: AudioParams, feature_params: FeatureParams, cache: FeatureCache) -> None:
    def first_clip(kind: str, name: str) -> np.ndarray | None:
        return cache.get_many(kind, hashes[name], [good[0][1]])[good[0][1]] if good else None

    for name in (s for s in sets if FEATURE_SETS[s].table):
        first = first_clip(name, name)
        columns = FEATURE_SETS[name].columns(feature_params, None if first is None else len(first))
        writer = store.TableWriter(out_dir / f"{name}.parquet", columns)
        try:
            for chunk in _chunks(good):
                found = cache.get_many(name, hashes[name], [key for _, key in chunk])
                writer.write([uid for uid, _ in chunk], np.stack([found[key] for _, key in chunk]))
        finally:
            writer.close()
    kinds = {}  # sequence kind -> (set it belongs to, shape of one clip's frames)
    for name in (s for s in FEATURE_SETS if s in sets):
        for kind, shape in FEATURE_SETS[name].frame_shapes(audio_params, feature_params).items():
            if shape is FROM_FIRST_CLIP:  # known once a clip was stored; none stored, no file
                first = first_clip(kind, name)
                if first is None:
                    continue
                shape = tuple(first.shape)
            kinds[kind] = (name, shape)
    if not kinds:
        return
    folder = out_dir / store.SEQUENCES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"utterance_id": pa.array([uid for uid, _ in good], pa.string()),
                             "row": pa.array(np.arange(len(good)), pa.int64())}),
                   folder / "index.parquet")
    for kind, (set_name, shape) in kinds.items():
        dtype = store.SEQUENCE_DTYPES[kind]
        # Streamed with plain writes after the .npy header rather than through a memmap, whose
        # dirty pages would count against the process however large the corpus grows.
        with open(folder / f"{kind}.npy", "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {
                "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": (len(good), *shape)})
            for chunk in _chunks(good):
                found = cache.get_many(kind, hashes[set_name], [key for _, key in chunk])
                block = np.stack([found[key] for _, key in chunk])
                if block.shape[1:] != shape or block.dtype != dtype:
                    raise ValueError(f"cached {kind} of shape {block.shape[1:]} {block.dtype}, "
                                     f"expected {shape} {dtype}")
                handle.write(block.tobytes())


def compute_features(metadata_df: pd.DataFrame, out_dir: str | os.PathLike, audio_params: AudioParams | dict,
                     feature_params: FeatureParams | dict, *, root: str | os.PathLike,
                     executor: Executor | None = None, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """The features stage: every ``status == "ok"`` clip of ``metadata_df`` -> ``out_dir``.

    Quarantined clips (status not ok) are not processed; clips that fail extraction are listed
    in ``failures.parquet`` with their problem. ``root`` resolves relative metadata paths
    (the repository root); ``cache_dir`` overrides ``features.cache_dir``.
    """
    audio_params, feature_params = typed_sections(audio_params, feature_params)
    # Absolute, so that the jobs mean the same file to a worker whatever its working directory
    # (a Ray worker on another machine); failure messages strip it again (_portable).
    root = Path(root).absolute()
    out_dir = Path(out_dir)
    clips = ok_clips(metadata_df)
    paths = dict(zip(clips["pcm_sha256"], (resolve_path(p, root) for p in clips["path"])))
    entries = list(zip(clips["utterance_id"], clips["pcm_sha256"]))
    executor = executor or make_executor(feature_params.executor, feature_params.workers,
                                         **ray_options(feature_params))

    def make_job(key: str, missing: tuple[str, ...]) -> ClipJob:
        return ClipJob(key, paths[key], missing, audio_params, feature_params)

    cache, scratch = open_cache(feature_params, root, cache_dir)
    try:
        with staged_folder(out_dir) as staging:
            return build_feature_folder(entries, make_job, extract_job, staging, audio_params,
                                        feature_params, cache, executor,
                                        desc="features" if progress else None, root=root)
    finally:
        cache.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
