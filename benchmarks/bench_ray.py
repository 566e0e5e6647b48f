"""Ray executor benchmark (not a test): ``python benchmarks/bench_ray.py``.

The default features (every set of ``params.yaml``, Whisper included) of ``--limit`` RAVDESS
clips through the stage's own entry (``compute_features``), each run with an empty cache of its
own so that every clip is computed, on:

* ``serial``: this process, the per-clip work alone (the reference cost of a clip);
* ``process``: the stage's default, a local pool of 2 workers;
* ``ray, 1 node x 2 CPUs``: the Ray executor with no address, which starts a local instance;
* ``ray, 2 nodes x 1 CPU``: a head and a second node started with ``ray start`` on this machine
  (``tests/ray_support.py``) before the run, the driver joining through the address.

Each configuration runs ``--rounds`` times, rounds in alternating order, and its best wall time
counts: other jobs on a shared machine then weigh on every configuration alike. Reports clips/s,
x real time and the overhead per clip: the core time a clip took beyond the per-clip work, that
is ``(wall * cpus - clips * work) / clips`` where ``work`` is the CPU time per clip of the serial
run in this process (start-up, imports, model loading in each worker, scheduling, transfers,
idle cores at the end). Checks that every run wrote byte-identical output files. Writes
``metrics/bench_ray.json``.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# One BLAS thread per process: the executors already spread clips over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: `ser` and `tests` live at the repo root
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from common import publish  # noqa: E402  (benchmarks/, the script's folder)
from ser.runtime import make_executor  # noqa: E402
from ser.runtime.executor import cpu_count
from ser.features import compute_features  # noqa: E402
from ser.data.harmonize import harmonize  # noqa: E402
from ser.params import AudioParams, FeatureParams, Params, override  # noqa: E402
from ser.project import load_params  # noqa: E402


QUIET_PERCENT = 15.0  # machine-wide CPU use below which the machine counts as idle


def wait_until_quiet(limit_s: float) -> float:
    """Up to ``limit_s`` seconds for the machine to idle (other people's jobs); the seconds waited."""
    import psutil

    started = time.monotonic()
    while time.monotonic() - started < limit_s and psutil.cpu_percent(interval=1.0) > QUIET_PERCENT:
        pass
    return time.monotonic() - started


def link_ravdess(mirror: Path, limit: int, root: Path) -> list[Path]:
    """``limit`` evenly spaced RAVDESS clips linked under ``root/data/raw/ravdess``."""
    files = sorted((mirror / "ravdess").glob("Actor_*/*.flac"))
    if not files:
        raise FileNotFoundError(f"no RAVDESS clips under {mirror / 'ravdess'}: set --mirror or SER_DATA_MIRROR")
    if limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    for source in files:
        link = root / "data" / "raw" / "ravdess" / source.relative_to(mirror / "ravdess")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return files


def same_files(folder: Path, reference: Path) -> bool:
    comparison = filecmp.dircmp(folder, reference)
    if comparison.diff_files or comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    return all(same_files(folder / sub, reference / sub) for sub in comparison.common_dirs)


def run(name: str, cpus: int, metadata, scratch: Path, audio_params: AudioParams, feature_params: FeatureParams,
        wait_quiet: float) -> dict[str, Any]:
    """One cold-cache features run; its wall time, and its CPU time when it ran in this process."""
    waited = wait_until_quiet(wait_quiet)
    out = Path(tempfile.mkdtemp(prefix="features-", dir=scratch)) / "features"
    cache = out.with_name("cache")  # empty: every clip is computed
    load_before = os.getloadavg()[0]
    start, start_cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    summary = compute_features(metadata, out, audio_params, feature_params, root=scratch, cache_dir=cache)
    wall, end_cpu = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (end_cpu.ru_utime + end_cpu.ru_stime) - (start_cpu.ru_utime + start_cpu.ru_stime)
    print(f"{name}: {summary['clips']} clips in {wall:.1f} s (load average {load_before:.2f})")
    return {"name": name, "cpus": cpus, "clips": summary["clips"], "failed": summary["failed"], "wall_s": wall,
            "own_cpu_s": cpu, "load_average_before": round(load_before, 2), "waited_for_quiet_s": round(waited),
            "out": out}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    params = load_params(args.params)
    audio_params = params.audio
    features = override(params.features, {"cache_dir": None})
    with tempfile.TemporaryDirectory(prefix="ser-bench-ray-") as scratch:
        return bench_in(Path(scratch), args, params, audio_params, features)


CONFIGS = [  # name, CPUs, feature params changed; ray_address "cluster" = the two-node cluster's
    ("serial (1 process)", 1, {"executor": "serial", "workers": 1}),
    ("process pool, 2 workers", 2, {"executor": "process", "workers": 2}),
    ("ray, 1 local node x 2 CPUs (started by the executor)", 2,
     {"executor": "ray", "workers": 2, "ray_address": None}),
    ("ray, 2 nodes x 1 CPU (ray start; driver joins by address)", 2,
     {"executor": "ray", "workers": 2, "ray_address": "cluster"}),
]


def bench_in(scratch: Path, args: argparse.Namespace, params: Params, audio_params: AudioParams,
             features: FeatureParams) -> dict[str, Any]:
    from tests.ray_support import AUTH, LocalCluster

    files = link_ravdess(Path(args.mirror), args.limit, scratch)
    audio_seconds = sum(sf.info(p).duration for p in files)
    metadata = harmonize(scratch / "data" / "raw", ["ravdess"], override(params.data, {"executor": "process"}),
                         root=scratch, executor=make_executor("process", 2))
    print(f"RAVDESS: {len(files)} clips, {audio_seconds:.0f} s of audio, sets {'+'.join(features.sets)}; "
          f"{cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    load_at_start = round(os.getloadavg()[0], 2)
    # Untimed: a worker compiles librosa's numba functions into its private cache slot the first
    # time that slot is used (ser.runtime.executor); every executor below reuses the slots warmed here.
    compute_features(metadata.head(16), scratch / "warm-up", audio_params,
                     override(features, {"executor": "process", "workers": 2}), root=scratch,
                     cache_dir=scratch / "warm-up-cache", progress=False)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in CONFIGS}
    reference, same = None, {name: True for name, _, _ in CONFIGS}
    with LocalCluster(cpus_per_node=1) as cluster:
        cluster.start_head()
        cluster.add_node()
        os.environ.update(AUTH)  # the nodes' token mode, for this driver too
        # Rounds in alternating order: other jobs on a shared machine then weigh on every
        # configuration alike, and the best wall time of each is compared.
        for round_ in range(args.rounds):
            for name, cpus, changes in (CONFIGS if round_ % 2 == 0 else CONFIGS[::-1]):
                if changes.get("ray_address") == "cluster":
                    changes = {**changes, "ray_address": cluster.address}
                record = run(name, cpus, metadata, scratch, audio_params, override(features, changes), args.wait_quiet)
                reference = reference or record["out"]
                same[name] &= same_files(record["out"], reference)
                runs[name].append(record)

    serial = runs[CONFIGS[0][0]]
    # The per-clip work: CPU time of the in-process serial runs, which other jobs inflate far less
    # than wall time.
    work_s = min(r["own_cpu_s"] for r in serial) / serial[0]["clips"]
    rows = []
    for name, cpus, changes in CONFIGS:
        best = min(runs[name], key=lambda r: r["wall_s"])
        clips, wall = best["clips"], best["wall_s"]
        rows.append({"name": name, "executor": changes["executor"], "cpus": cpus, "clips": clips,
                     "failed": best["failed"], "wall_s": round(wall, 2), "clips_per_s": round(clips / wall, 2),
                     "x_realtime": round(audio_seconds / wall, 1),
                     "overhead_ms_per_clip": round(1000 * (wall * cpus - clips * work_s) / clips, 1),
                     "wall_s_each_round": [round(r["wall_s"], 2) for r in runs[name]],
                     "load_average_before_each_round": [r["load_average_before"] for r in runs[name]],
                     "same_output_as_process_pool": same[name]})
    pool = rows[1]["clips_per_s"]
    for row in rows:
        row["vs_process_pool"] = round(row["clips_per_s"] / pool, 2)
    return {
        "machine": {"cpus": cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": load_at_start},
        "corpus": "ravdess", "clips": len(files), "audio_seconds": round(audio_seconds, 1),
        "sets": features["sets"], "rounds": args.rounds, "serial_cpu_ms_per_clip": round(1000 * work_s, 1),
        "rows": rows, "load_average_at_end": round(os.getloadavg()[0], 2),
    }


def print_table(result: dict[str, Any]) -> None:
    print()
    print(f"Ray executor benchmark: {result['clips']} RAVDESS clips ({result['audio_seconds']:.0f} s of audio), "
          f"sets {'+'.join(result['sets'])}, cold cache; {result['machine']['cpus']} cores, load average "
          f"{result['machine']['load_average_at_start']} at start, {result['load_average_at_end']} at end")
    print(f"{'':60} {'CPUs':>4} {'wall s':>7} {'clips/s':>8} {'x RT':>6} {'ovh ms':>7} {'vs pool':>8} {'same':>5}")
    for row in result["rows"]:
        print(f"{row['name'][:60]:60} {row['cpus']:4d} {row['wall_s']:7.1f} {row['clips_per_s']:8.2f} "
              f"{row['x_realtime']:6.1f} {row['overhead_ms_per_clip']:7.1f} {row['vs_process_pool']:7.2f}x "
              f"{'yes' if row['same_output_as_process_pool'] else 'NO':>5}")
    print(f"best wall time of {result['rounds']} round(s) each; per-clip work {result['serial_cpu_ms_per_clip']} ms "
          "(CPU of the serial run); ovh ms = core time per clip beyond it (start-up, imports, model loading per "
          "worker, scheduling, transfers, idle cores at the end); same = every run's output files "
          "byte-identical to the first run's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_ray.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("SER_DATA_MIRROR", str(REPO.parent / "shared" / "datasets")))
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--limit", type=int, default=200, help="evenly spaced RAVDESS clips")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration, in alternating order")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="before each run, wait up to this many seconds for other jobs to idle")
    parser.add_argument("--out", default=str(REPO / "metrics" / "bench_ray.json"))
    args = parser.parse_args(argv)
    if not 0 <= args.wait_quiet <= 600 or not 1 <= args.limit <= 5000 or not 1 <= args.rounds <= 5:
        raise SystemExit("keep it bounded: 0 <= --wait-quiet <= 600, 1 <= --limit <= 5000, 1 <= --rounds <= 5")
    publish(bench(args), args.out, print_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
