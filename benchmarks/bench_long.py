"""Long-recording benchmark: peak memory and speed of ``ser predict`` on a generated multi-hour file.

For each ``--minutes`` value: writes a recording into a temporary folder (real RAVDESS clips of
every actor, shuffled and looped, with 0.3-1.5 s pauses of faint noise between them; 48 kHz
mono FLAC written clip by clip, so the generator itself stays small), runs ``python -m ser
predict FILE --format json`` on it in a subprocess, samples the RSS of that process tree every
50 ms, and records the duration, wall time, x real time, peak RSS and the number of windows.

    python benchmarks/bench_long.py                          # 2 hours, data/train/model
    python benchmarks/bench_long.py --minutes 120 30         # both, one after the other
    python benchmarks/bench_long.py --model path/to/bundle --out /tmp/bench_long.json

The model defaults to ``data/train/model``; without it a small SVM on functionals + eGeMAPS is
trained on 32 RAVDESS clips (as the tests do). Results go to ``metrics/bench_long.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: `ser` and `tests` live at the repo root
    sys.path.insert(0, str(REPO))

from tests.local_server import tree_rss_bytes  # noqa: E402

RATE = 48000
PAUSE_S = (0.3, 1.5)
NOISE_LEVEL = 1e-4  # faint room noise in the pauses, so they are quiet rather than digital zeros
SAMPLE_EVERY_S = 0.05
TIMELINE_EVERY_S = 30.0


def corpus_mirror() -> Path:
    return Path(os.environ.get("SER_DATA_MIRROR") or REPO.parent / "shared" / "datasets")


def write_recording(path: Path, seconds: float, seed: int = 0) -> float:
    """A ``seconds``-long 48 kHz FLAC of RAVDESS speech and pauses, written clip by clip."""
    from ser.audio import decode, resample, to_mono

    clips = sorted((corpus_mirror() / "ravdess").glob("Actor_*/*.flac"))
    if not clips:
        raise SystemExit(f"bench_long: no RAVDESS clips under {corpus_mirror() / 'ravdess'}; set SER_DATA_MIRROR")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clips))
    target, written, index = int(round(seconds * RATE)), 0, 0
    with sf.SoundFile(path, "w", samplerate=RATE, channels=1, format="FLAC", subtype="PCM_16") as out:
        while written < target:
            samples, rate = decode(clips[order[index % len(clips)]])
            speech = resample(to_mono(samples), rate, RATE)
            pause = (NOISE_LEVEL * rng.standard_normal(int(rng.uniform(*PAUSE_S) * RATE))).astype(np.float32)
            for piece in (speech, pause):
                piece = piece[:target - written]
                out.write(piece)
                written += piece.size
            index += 1
    return written / RATE


def default_model(workdir: Path) -> tuple[Path, str]:
    trained = REPO / "data" / "train" / "model"
    if (trained / "bundle.json").is_file():
        return trained, "data/train/model"
    from tests.serve_support import train_small_bundle

    print("bench_long: data/train/model is missing; training a small SVM on 32 RAVDESS clips", file=sys.stderr)
    return train_small_bundle(corpus_mirror(), workdir / "model"), "small SVM (functionals + eGeMAPS, 32 RAVDESS clips)"


def vm_hwm_bytes(pid: int) -> int:
    """The kernel's high-water mark of one process's RSS (Linux); 0 where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_predict(recording: Path, model: Path, answer_path: Path) -> dict:
    """Run ``ser predict`` on ``recording``; peak RSS of its process tree, wall time, the answer."""
    command = [sys.executable, "-m", "ser", "predict", str(recording), "--model", str(model), "--format", "json"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(answer_path, "w") as stdout, open(answer_path.with_suffix(".stderr"), "w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr, env=env)
        peak = hwm = 0
        timeline, next_mark = [], 0.0
        while process.poll() is None:
            rss = tree_rss_bytes(process.pid)
            peak, hwm = max(peak, rss), max(hwm, vm_hwm_bytes(process.pid))
            elapsed = time.perf_counter() - started
            if elapsed >= next_mark:
                timeline.append([round(elapsed), round(rss / 2**20)])
                next_mark += TIMELINE_EVERY_S
            time.sleep(SAMPLE_EVERY_S)
        wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"bench_long: ser predict failed ({process.returncode}):\n"
                         + answer_path.with_suffix(".stderr").read_text()[-2000:])
    answer = json.loads(answer_path.read_text())[0]
    return {"wall_s": wall, "peak_rss": peak, "main_hwm": hwm, "timeline": timeline, "answer": answer}


def bench_one(minutes: float, model: Path, workdir: Path) -> dict:
    recording = workdir / f"recording_{minutes:g}min.flac"
    started = time.perf_counter()
    seconds = write_recording(recording, minutes * 60.0)
    generated = time.perf_counter() - started
    print(f"bench_long: wrote {seconds / 60:.1f} min ({recording.stat().st_size / 2**20:.0f} MiB FLAC) "
          f"in {generated:.0f} s; predicting ...", file=sys.stderr)
    run = run_predict(recording, model, workdir / f"answer_{minutes:g}min.json")
    answer = run["answer"]
    recording.unlink()
    result = {
        "label": f"{minutes:g} min",
        "recording_s": round(seconds, 2),
        "recording": "RAVDESS clips (all actors, shuffled, looped) with 0.3-1.5 s pauses, 48 kHz mono FLAC PCM_16",
        "duration_s": answer["duration_s"],  # after the front end's edge trim
        "windows": len(answer["windows"]),
        "wall_s": round(run["wall_s"], 1),
        "x_real_time": round(seconds / run["wall_s"], 2),
        "peak_rss_mb": round(run["peak_rss"] / 2**20, 1),
        "peak_rss_main_process_hwm_mb": round(run["main_hwm"] / 2**20, 1),
        "rss_mb_timeline": run["timeline"],
        "label_predicted": answer["label"],
    }
    print(f"bench_long: {result['label']}: {result['windows']} windows, wall {result['wall_s']} s "
          f"({result['x_real_time']}x real time), peak RSS {result['peak_rss_mb']} MB", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[120.0], help="recording lengths (default: 120)")
    parser.add_argument("--model", type=Path, default=None, help="a model bundle folder (default: data/train/model)")
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "bench_long.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_long_") as folder:
        workdir = Path(folder)
        model, description = (args.model, str(args.model)) if args.model else default_model(workdir)
        report = {"benchmark": "ser predict on one long recording (streamed front end)",
                  "model": description, "cores": psutil.cpu_count(),
                  "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                  "rss_sampling": f"sum over the ser predict process tree, every {SAMPLE_EVERY_S} s", "runs": []}
        for minutes in args.minutes:
            report["runs"].append(bench_one(minutes, model, workdir))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each run: a long run's result is kept
    keys = ("duration_s", "windows", "wall_s", "x_real_time", "peak_rss_mb")
    print(json.dumps({run["label"]: {key: run[key] for key in keys} for run in report["runs"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
