"""One metadata table for every selected corpus: labels from file names, facts from the audio.

Each clip is probed in parallel (decoded with :func:`ser.audio.decode`, never trusted from its
header): sample rate, channels, duration, peak level and a hash of the decoded samples. A clip
that cannot be decoded, is empty, all silence or too short is *quarantined* with its reason;
it keeps its row, so nothing is silently dropped. Clips with identical decoded audio are linked
through ``duplicate_of`` so that later splits keep them on one side.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ser.audio import AudioError, decode
from ser.data import custom
from ser.data.corpora import get_corpus
from ser.data.corpora.base import FileNameError, is_audio
from ser.runtime import make_executor
from ser.runtime.executor import Executor
from ser.runtime.ray_executor import ray_options
from ser.data.metadata import COLUMNS, keep_ids_unique, write_metadata
from ser.params import DataParams, typed


@dataclass(frozen=True)
class Probe:
    """What decoding one clip tells (``problem`` set when it could not be decoded)."""

    sample_rate: int | None = None
    channels: int | None = None
    frames: int = 0
    duration_s: float | None = None
    peak: float | None = None
    pcm_sha256: str | None = None
    problem: str | None = None


def pcm_sha256(samples: np.ndarray) -> str:
    """Hash of decoded float32 samples ([n, channels], C order): equal for equal audio, whatever
    the container or encoding it came in."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def probe(path: str) -> Probe:
    """Decode one clip and measure it; a decoding failure is a result, not an exception."""
    try:
        samples, sample_rate = decode(path)
    except AudioError as exc:
        return Probe(problem=str(exc))
    frames, channels = samples.shape
    finite = bool(np.isfinite(samples).all())
    return Probe(
        sample_rate=sample_rate,
        channels=channels,
        frames=frames,
        duration_s=frames / sample_rate,
        peak=float(np.max(np.abs(samples))) if finite else None,
        pcm_sha256=pcm_sha256(samples),
        problem=None if finite else f"{path}: samples include NaN or infinity",
    )


def quarantine_reason(measured: Probe, min_duration_s: float, silence_peak: float) -> str | None:
    if measured.problem:
        return measured.problem
    if measured.duration_s < min_duration_s:
        return f"too short: {measured.duration_s:.4f} s < data.min_duration_s {min_duration_s}"
    if measured.peak < silence_peak:
        return f"all silence: peak {measured.peak:.3g} < data.silence_peak {silence_peak}"
    return None


def audio_files(folder: Path) -> list[Path]:
    """Audio files of a corpus folder, relative and sorted (the manifest is not audio)."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and is_audio(p))


def label_rows(corpus: str, folder: Path, root: Path) -> list[dict[str, Any]]:
    """One row per audio file with everything its name says; unparseable names are flagged."""
    module = get_corpus(corpus)
    description = module.CORPUS
    rows, seen = [], {}
    for relative in audio_files(folder):
        absolute = folder / relative
        row: dict[str, Any] = {column: None for column in COLUMNS}
        row.update(corpus=corpus, path=os.path.relpath(absolute, root), language=description.language,
                   status="ok")
        try:
            clip = description.parse(relative)
        except FileNameError as exc:
            row.update(utterance_id=f"{corpus}_{relative.stem}", status="quarantined",
                       problem=f"file name: {exc}")
        else:
            row.update(utterance_id=f"{corpus}_{clip.name}", speaker=f"{corpus}_{clip.speaker}",
                       gender=clip.gender, emotion=clip.emotion, emotion_raw=clip.emotion_raw,
                       intensity=clip.intensity, statement=clip.statement)
        keep_ids_unique(row, seen, rows, row["path"], "same clip name as")  # e.g. flat and nested copies
        row["_absolute"] = str(absolute)
        rows.append(row)
    return rows


def link_duplicates(frame: pd.DataFrame) -> pd.Series:
    """``duplicate_of`` for ok rows whose decoded audio equals an earlier (by id) ok row."""
    duplicate_of = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    ok = frame[frame["status"] == "ok"].sort_values("utterance_id")
    for _, group in ok.groupby("pcm_sha256", sort=False):
        if len(group) > 1:
            duplicate_of.loc[group.index[1:]] = group["utterance_id"].iloc[0]
    return duplicate_of


def harmonize(raw: str | os.PathLike, corpora: Sequence[str], params: DataParams | dict[str, Any], *,
              root: str | os.PathLike, executor: Executor | None = None) -> pd.DataFrame:
    """The metadata table of ``corpora`` under ``raw`` (``params`` is the ``data:`` section).

    ``path`` is written relative to ``root`` (the repository root). A corpus declared under
    ``data.custom`` is read from the label table the download stage wrote next to its files;
    every corpus's labels are read and checked before any clip is probed.
    """
    params = typed(DataParams, params)
    raw = Path(raw).resolve()
    root = Path(root).resolve()
    rows = []
    for corpus in corpora:
        folder = raw / corpus
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: corpus '{corpus}' is selected but absent; run the "
                                    "download stage first (dvc repro download)")
        if corpus in params.custom:
            corpus_rows = custom.label_rows(corpus, params.custom[corpus], folder, root)
        else:
            corpus_rows = label_rows(corpus, folder, root)
        if not corpus_rows:
            raise FileNotFoundError(f"{folder}: corpus '{corpus}' holds no audio files")
        rows.extend(corpus_rows)
    executor = executor or make_executor(params.executor, params.workers, **ray_options(params))
    measured: dict[str, Probe] = {}
    for outcome in executor.map(probe, [row["_absolute"] for row in rows], desc="probe", total=len(rows)):
        measured[outcome.item] = outcome.value if outcome.ok else Probe(problem=f"{outcome.item}: {outcome.error}")
    for row in rows:
        absolute = row.pop("_absolute")
        result = measured[absolute]
        row.update(sample_rate=result.sample_rate, channels=result.channels, duration_s=result.duration_s,
                   pcm_sha256=result.pcm_sha256)
        if row["status"] == "ok":
            reason = quarantine_reason(result, params.min_duration_s, params.silence_peak)
            if reason:
                # Name the clip by its repo-relative path, so the table is the same on every machine.
                row.update(status="quarantined", problem=reason.replace(absolute, row["path"]))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame = frame.sort_values(["corpus", "utterance_id"], kind="stable").reset_index(drop=True)
    frame["duplicate_of"] = link_duplicates(frame)
    return frame


def summarize(frame: pd.DataFrame) -> dict[str, Any]:
    """Per corpus (and over all): clips, ok, quarantined, duplicates, speakers by gender,
    hours and emotion counts of the usable (ok) clips."""

    def describe(rows: pd.DataFrame) -> dict[str, Any]:
        ok = rows[rows["status"] == "ok"]
        speakers = ok.drop_duplicates("speaker")
        return {
            "clips": int(len(rows)),
            "ok": int(len(ok)),
            "quarantined": int((rows["status"] == "quarantined").sum()),
            "duplicates": int(ok["duplicate_of"].notna().sum()),
            "speakers": int(len(speakers)),
            "female_speakers": int((speakers["gender"] == "female").sum()),
            "male_speakers": int((speakers["gender"] == "male").sum()),
            "hours": round(float(ok["duration_s"].sum()) / 3600, 4),
            "emotions": {emotion: int(n) for emotion, n in sorted(ok["emotion"].value_counts().items())},
        }

    summary = {corpus: describe(rows) for corpus, rows in frame.groupby("corpus", sort=True)}
    summary["all"] = describe(frame)
    return summary


def write_summary(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def run(raw: str | os.PathLike, out: str | os.PathLike, summary_path: str | os.PathLike,
        params: DataParams | dict[str, Any], *, root: str | os.PathLike,
        executor: Executor | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Harmonize the ``corpora`` of ``params`` (the ``data:`` section), write the validated
    table and the summary."""
    params = typed(DataParams, params)
    frame = harmonize(raw, params.corpora, params, root=root, executor=executor)
    write_metadata(frame, out)
    summary = summarize(frame)
    write_summary(summary, summary_path)
    return frame, summary
