"""Feature benchmark (not a test): ``python benchmarks/bench_features.py features``.

Measures, on the RAVDESS mirror and in one run on the same clips, the seeds' naive recipe
(per file ``librosa.load`` at 22050 Hz, then the means of MFCC(40), chroma_stft and the mel
spectrogram, one file at a time in one process) against ser's extraction of each feature set
through the same executor the stage uses; prints clips/s, x real time and peak RSS (the whole
process tree, sampled), and writes ``metrics/bench_features.json``. ``--stage`` also times the
whole default features stage (every set, cold cache) over a metadata table.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# One BLAS thread per process: the pool already spreads clips over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from common import publish  # noqa: E402  (benchmarks/, the script's folder)
from ser.audio import load_audio  # noqa: E402
from ser.params import AudioParams, FeatureParams  # noqa: E402
from ser.project import load_params, repo_root  # noqa: E402
from ser.runtime import make_executor  # noqa: E402
from ser.runtime.executor import cpu_count
from ser.features import extract  # noqa: E402
from ser.features import spectral  # noqa: E402
from tests.local_server import tree_rss_bytes  # noqa: E402

NAIVE_N_MFCC = 40


def naive_seed_features(path: str) -> np.ndarray:
    """The seeds' recipe, verbatim in spirit: each call decodes, resamples and transforms anew."""
    import librosa

    y, sr = librosa.load(path)  # 22050 Hz mono, librosa's default
    mfcc = np.mean(librosa.feature.mfcc(y=y, sr=sr, n_mfcc=NAIVE_N_MFCC).T, axis=0)
    chroma = np.mean(librosa.feature.chroma_stft(S=np.abs(librosa.stft(y)), sr=sr).T, axis=0)
    mel = np.mean(librosa.feature.melspectrogram(y=y, sr=sr).T, axis=0)
    return np.concatenate([mfcc, chroma, mel])


def seed_set_job(job: tuple[str, AudioParams, FeatureParams]) -> np.ndarray:
    """The same descriptors (MFCC(40), chroma and mel means) through ser's front end and one STFT."""
    path, audio_params, feature_params = job
    spec = spectral.spectrum(load_audio(path, audio_params), audio_params.sample_rate, feature_params)
    logmel = spectral.log_mel(spec, feature_params.n_mels)
    mfcc = spectral.mfcc_from_log_mel(logmel, NAIVE_N_MFCC)
    return np.concatenate([mfcc.mean(axis=1), spectral.chroma(spec).mean(axis=1), logmel.mean(axis=1)])


def feature_set_job(job: tuple[str, AudioParams, FeatureParams, tuple[str, ...]]) -> int:
    path, audio_params, feature_params, sets = job
    values = extract(load_audio(path, audio_params), audio_params, feature_params, sets)
    return sum(v.size for v in values.values())


def warm_up_job(job: tuple[float, AudioParams, FeatureParams]) -> int:
    """What a fresh worker pays once: imports and the first call of every extractor."""
    seconds, audio_params, feature_params = job
    y = (0.1 * np.sin(np.arange(int(16000 * seconds)) * 0.2)).astype(np.float32)
    return len(extract(y, audio_params, feature_params, ("functionals", "egemaps", "sequences")))


class PeakRss:
    """Samples the resident memory of this process and all its children; keeps the peak sum."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        return tree_rss_bytes(os.getpid())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the pools' workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(name: str, run: Callable[[], int], clips: int, audio_seconds: float, workers: int) -> dict[str, Any]:
    """Wall-clock throughput as measured, and CPU time, which a machine shared with other jobs
    distorts far less: ``clips_per_cpu_s`` compares work, whatever the load was."""
    with PeakRss() as rss:
        start, start_cpu = time.perf_counter(), cpu_seconds()
        failures = run()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    return {"name": name, "workers": workers, "clips": clips, "failures": failures,
            "wall_s": round(wall, 2), "clips_per_s": round(clips / wall, 2),
            "x_realtime": round(audio_seconds / wall, 1), "cpu_s": round(cpu, 2),
            "cpu_ms_per_clip": round(1000 * cpu / clips, 2), "clips_per_cpu_s": round(clips / cpu, 2),
            "peak_rss_mb": round(rss.peak / 2**20, 1)}


def run_executor(fn, jobs: Sequence, kind: str, workers: int, desc: str) -> int:
    failures = 0
    for outcome in make_executor(kind, workers).map(fn, jobs, desc=desc, total=len(jobs)):
        if not outcome.ok:
            failures += 1
            print(f"warning: {outcome.error}")
    return failures


def ravdess_clips(mirror: Path, limit: int | None) -> list[Path]:
    files = sorted((mirror / "ravdess").glob("Actor_*/*.flac"))
    if not files:
        raise FileNotFoundError(f"no RAVDESS clips under {mirror / 'ravdess'}: set --mirror or SER_DATA_MIRROR")
    if limit and limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def bench_features(args: argparse.Namespace) -> dict[str, Any]:
    params = load_params(args.params)
    audio_params, feature_params = params.audio, params.features
    workers = args.workers or feature_params.workers or cpu_count()
    files = ravdess_clips(Path(args.mirror), args.limit)
    paths = [str(p) for p in files]
    audio_seconds = sum(sf.info(p).duration for p in paths)
    n = len(paths)
    print(f"RAVDESS: {n} clips, {audio_seconds:.0f} s of audio; {workers} workers on {cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}")

    load_at_start = round(os.getloadavg()[0], 2)
    rows = []
    naive_seed_features(paths[0])  # librosa's imports and first call: not the recipe's cost

    def naive() -> int:
        from tqdm.auto import tqdm

        for path in tqdm(paths, desc="naive seed recipe", unit="clip"):
            naive_seed_features(path)
        return 0

    rows.append(measure("naive seed recipe (librosa.load 22.05k; MFCC40+chroma+mel means; serial)",
                        naive, n, audio_seconds, 1))
    seed_jobs = [(p, audio_params, feature_params) for p in paths]
    rows.append(measure("ser seed set (same descriptors, one STFT, front end)",
                        lambda: run_executor(seed_set_job, seed_jobs, "process", workers, "ser seed set"),
                        n, audio_seconds, workers))
    for sets in (("functionals",), ("egemaps",), ("sequences",), ("whisper",), tuple(feature_params.sets)):
        jobs = [(p, audio_params, feature_params, sets) for p in paths]
        label = "+".join(sets)
        rows.append(measure(f"ser {label}", lambda jobs=jobs, label=label: run_executor(
            feature_set_job, jobs, "process", workers, f"ser {label}"), n, audio_seconds, workers))

    # Every pooled row pays for spawning its workers (each imports librosa, scipy.signal, numba,
    # openSMILE); the naive row was spared its imports. Measured once here so the rows can be
    # compared both ways: as run, and net of that fixed cost.
    startup = measure("pool start-up (spawn + imports + first call)", lambda: run_executor(
        warm_up_job, [(0.2, audio_params, feature_params)] * (8 * workers), "process", workers, None), workers, 0.0, workers)
    naive_rate, naive_work = rows[0]["clips_per_s"], rows[0]["clips_per_cpu_s"]
    for row in rows:
        pooled = row["workers"] > 1
        net_wall = row["wall_s"] - (startup["wall_s"] if pooled else 0.0)
        net_cpu = row["cpu_s"] - (startup["cpu_s"] if pooled else 0.0)
        row["net_clips_per_s"] = round(row["clips"] / max(net_wall, 1e-3), 2)
        row["net_clips_per_cpu_s"] = round(row["clips"] / max(net_cpu, 1e-3), 2)
        row["speedup_vs_naive"] = round(row["clips_per_s"] / naive_rate, 1)
        row["net_speedup_vs_naive"] = round(row["net_clips_per_s"] / naive_rate, 1)
        row["work_speedup_vs_naive"] = round(row["net_clips_per_cpu_s"] / naive_work, 1)

    result: dict[str, Any] = {
        "machine": {"cpus": cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": load_at_start},
        "corpus": "ravdess", "clips": n, "audio_seconds": round(audio_seconds, 1),
        "rows": rows,
        "pool_startup": {key: startup[key] for key in ("workers", "wall_s", "cpu_s", "peak_rss_mb")},
        "seed_set_speedup": rows[1]["speedup_vs_naive"],
        "seed_set_net_speedup": rows[1]["net_speedup_vs_naive"],
        "seed_set_work_speedup": rows[1]["work_speedup_vs_naive"],
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "seed_set_target_speedup": 5.0,
    }
    if args.stage:
        result["stage"] = bench_stage(Path(args.stage), audio_params, feature_params, workers)
    return result


def bench_stage(metadata_path: Path, audio_params: AudioParams, feature_params: FeatureParams,
                workers: int) -> dict[str, Any]:
    """The whole default features stage (all sets, every ok clip, cold cache) over a metadata table."""
    import pandas as pd

    from ser.features import compute_features

    metadata = pd.read_parquet(metadata_path)
    ok = metadata[metadata["status"] == "ok"]
    with tempfile.TemporaryDirectory(prefix="ser-bench-stage-") as scratch:
        params = feature_params.model_copy(update={"workers": workers})
        load_before = os.getloadavg()[0]
        with PeakRss() as rss:
            start, start_cpu = time.perf_counter(), cpu_seconds()
            summary = compute_features(metadata, Path(scratch) / "features", audio_params, params,
                                       root=repo_root(), cache_dir=Path(scratch) / "cache")
            wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    return {"metadata": str(metadata_path), "corpora": sorted(ok["corpus"].unique().tolist()),
            "clips": summary["clips"], "failed": summary["failed"], "sets": summary["sets"],
            "wall_s": round(wall, 1), "clips_per_s": round(summary["clips"] / wall, 2),
            "x_realtime": round(float(ok["duration_s"].sum()) / wall, 1),
            "cpu_s": round(cpu, 1), "cpu_ms_per_clip": round(1000 * cpu / max(1, summary["clips"]), 1),
            "workers": workers, "peak_rss_mb": round(rss.peak / 2**20, 1), "target_wall_s": 180,
            "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def print_table(result: dict[str, Any]) -> None:
    print()
    print(f"features benchmark: {result['clips']} RAVDESS clips ({result['audio_seconds']:.0f} s of audio), "
          f"{result['machine']['cpus']} cores, load average {result['machine']['load_average_at_start']} at "
          f"start, {result['load_average_at_end']} at end (other jobs share this machine)")
    print(f"{'':58} {'wkrs':>4} {'clips/s':>8} {'x RT':>6} {'wall s':>7} {'CPU ms':>7} {'RSS MB':>7} "
          f"{'speedup':>8} {'net':>6} {'per CPU':>8}")
    for row in result["rows"]:
        print(f"{row['name'][:58]:58} {row['workers']:4d} {row['clips_per_s']:8.1f} {row['x_realtime']:6.1f} "
              f"{row['wall_s']:7.1f} {row['cpu_ms_per_clip']:7.1f} {row['peak_rss_mb']:7.0f} "
              f"{row['speedup_vs_naive']:7.1f}x {row['net_speedup_vs_naive']:5.1f}x {row['work_speedup_vs_naive']:7.1f}x")
    startup = result["pool_startup"]
    print(f"pool start-up ({startup['workers']} workers: spawn, imports, first call): {startup['wall_s']} s wall, "
          f"{startup['cpu_s']} CPU s; 'net' = clips/s without it; 'per CPU' = clips per CPU second without it")
    print("CPU ms = CPU time per clip, all processes; RSS MB = peak resident memory of the process tree")
    print(f"seed feature set vs the naive recipe: {result['seed_set_speedup']}x as run, "
          f"{result['seed_set_net_speedup']}x net of pool start-up, {result['seed_set_work_speedup']}x per CPU "
          f"second (target >= {result['seed_set_target_speedup']}x)")
    if "stage" in result:
        stage = result["stage"]
        print(f"whole features stage ({'+'.join(stage['corpora'])}, {stage['clips']} clips, sets "
              f"{'+'.join(stage['sets'])}, cold cache, {stage['workers']} workers): {stage['wall_s']} s wall, "
              f"{stage['clips_per_s']} clips/s, {stage['x_realtime']}x real time, {stage['cpu_s']} CPU s "
              f"({stage['cpu_ms_per_clip']} ms/clip), peak RSS {stage['peak_rss_mb']:.0f} MB, load average "
              f"{stage['load_average_before']} -> {stage['load_average_after']} (target <= {stage['target_wall_s']} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_features.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    features = sub.add_parser("features", help="feature extraction throughput vs the seeds' recipe")
    features.add_argument("--mirror", default=os.environ.get("SER_DATA_MIRROR", "../shared/datasets"))
    features.add_argument("--params", default="params.yaml")
    features.add_argument("--limit", type=int, default=None, help="evenly spaced subset of the clips")
    features.add_argument("--workers", type=int, default=0, help="0 = features.workers (0 = every core)")
    features.add_argument("--stage", default=None,
                          help="also time the whole features stage over this metadata.parquet")
    features.add_argument("--out", default="metrics/bench_features.json")
    args = parser.parse_args(argv)
    publish(bench_features(args), args.out, print_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
