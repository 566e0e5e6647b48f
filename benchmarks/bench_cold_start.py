"""Cold start of ``ser predict one.wav``: wall time of a fresh process, median of ``--runs``.

Each run is a new ``ser predict CLIP`` process (the ``ser`` console script of this environment),
as a user types it: interpreter start, imports, params, model load, the first prediction (the
encoder session opens then), the answer. The target is 3 s on this 2-core machine, the goal 2 s.

Models (``--model``, repeatable):

* a ModelBundle folder, an MLflow model folder or a model URI: passed as ``--model``;
* ``registry``: no ``--model``, so the ``@champion`` version of the registered model in the
  project's store (``MLFLOW_TRACKING_URI``, else ``<repo>/mlflow.db``): what ``ser predict``
  does by default;
* ``temp-registry``: the same default path against a temporary store that holds the benchmark's
  bundle, logged, registered and promoted to ``@champion`` (for a checkout without a store);
* nothing given: ``data/train/model`` (the pipeline's model) if present, else a logistic
  regression on the Whisper table of six RAVDESS clips (tests/test_cold_start.py); then both
  that bundle and ``temp-registry``.

Also recorded: each run's CPU seconds (user + system: less sensitive than wall time to other
jobs on a shared machine), the load average, and whether stderr held anything. ``--wait-quiet
S`` waits up to S seconds before each run for the 1-minute load average to fall under 1.

    python benchmarks/bench_cold_start.py
    python benchmarks/bench_cold_start.py --model data/train/model --model registry --runs 5

Writes ``metrics/bench_cold_start.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import publish  # noqa: E402

TARGET_S = 3.0
GOAL_S = 2.0
CLIP = ("ravdess", "Actor_01", "03-01-05-02-01-02-01.flac")  # 3.6 s, angry, strong


def mirror() -> Path:
    return Path(os.environ.get("SER_DATA_MIRROR") or REPO.parent / "shared" / "datasets")


def ser_command() -> list[str]:
    script = Path(sys.executable).with_name("ser")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ser"]


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(limit_s: float) -> float:
    """Seconds waited (at most ``limit_s``) for the 1-minute load average to drop under 1."""
    started = time.monotonic()
    while os.getloadavg()[0] >= 1.0 and time.monotonic() - started < limit_s:
        time.sleep(5.0)
    return round(time.monotonic() - started, 1)


def cold_runs(model_args: list[str], clip: Path, runs: int, env: dict[str, str], quiet_s: float) -> dict:
    """``runs`` fresh ``ser predict`` processes; wall and CPU seconds of each, median wall."""
    command = [*ser_command(), "predict", str(clip), *model_args]
    records = []
    for _ in range(runs):
        waited = wait_quiet(quiet_s) if quiet_s > 0 else 0.0
        load = os.getloadavg()[0]
        cpu_before = child_cpu_seconds()
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
        records.append({"wall_s": round(wall, 3), "cpu_s": round(child_cpu_seconds() - cpu_before, 3),
                        "loadavg_1m": round(load, 2), "waited_s": waited,
                        "stderr_lines": result.stderr.splitlines()})
    walls = [r["wall_s"] for r in records]
    median = statistics.median(walls)
    shown = "ser predict CLIP" + (" --model MODEL" if model_args else "")  # the model is described beside it
    return {"command": shown, "runs": records, "median_wall_s": median,
            "median_cpu_s": statistics.median(r["cpu_s"] for r in records),
            "answer": result.stdout.strip().splitlines()[-1],
            "stderr_empty": all(not r["stderr_lines"] for r in records),
            "target_s": TARGET_S, "goal_s": GOAL_S, "meets_target": median <= TARGET_S, "meets_goal": median <= GOAL_S}


def default_bundle(workdir: Path) -> tuple[Path, str]:
    pipeline = REPO / "data" / "train" / "model"
    if (pipeline / "bundle.json").is_file():
        return pipeline, f"ModelBundle {pipeline.relative_to(REPO)} (the pipeline's model)"
    sys.path.insert(0, str(REPO))
    from tests.test_cold_start import train_tiny_bundle

    folder = train_tiny_bundle(mirror(), workdir / "tiny_bundle")
    return folder, "logreg on the whisper table of 6 RAVDESS clips (tests/test_cold_start.py; no data/train/model)"


def temp_registry(bundle: Path, workdir: Path) -> str:
    """A sqlite MLflow store under ``workdir`` holding ``bundle`` as the @champion of the
    registered model of params.yaml."""
    import mlflow

    from ser import project
    from ser.training import tracking
    from ser.serving.pyfunc import log_model

    params = project.load_params(REPO / "params.yaml")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tracking.use_experiment(uri, "bench-cold-start")
    with mlflow.start_run():
        info = log_model(bundle, params.predict, params.serve,
                         registered_model_name=params.mlflow.registered_model, name="audio_model")
    tracking.promote(uri, params.mlflow.registered_model, str(info.registered_model_version))
    return uri


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="a --model value, 'registry' or 'temp-registry' (repeatable; see the module docstring)")
    parser.add_argument("--bundle", default=None, help="the bundle temp-registry registers (default: as above)")
    parser.add_argument("--clip", type=Path, default=None, help="default: RAVDESS " + "/".join(CLIP))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds before each run for the load average to fall under 1")
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "bench_cold_start.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    clip = args.clip or mirror().joinpath(*CLIP)
    if not clip.is_file():
        raise SystemExit(f"{clip}: no such clip; set SER_DATA_MIRROR or pass --clip")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    workdir = Path(tempfile.mkdtemp(prefix="bench_cold_start_"))
    try:
        models = args.model or ["bundle", "temp-registry"]
        bundle, bundle_description = (Path(args.bundle), args.bundle) if args.bundle else (None, None)
        if bundle is None and ("bundle" in models or "temp-registry" in models):
            bundle, bundle_description = default_bundle(workdir)
        shown_clip = clip.relative_to(mirror()).as_posix() if clip.is_relative_to(mirror()) else str(clip)
        results: dict = {"clip": shown_clip, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                         "loadavg_at_start": [round(v, 2) for v in os.getloadavg()], "models": {}}
        for model in models:
            if model == "bundle":
                name, model_args, run_env, description = "bundle", ["--model", str(bundle)], env, bundle_description
            elif model == "registry":
                name, model_args, run_env = "registry", [], env
                description = "models:/<registered>@champion in the project's store (no --model)"
            elif model == "temp-registry":
                uri = temp_registry(bundle, workdir)
                name, model_args, run_env = "temp_registry", [], {**env, "MLFLOW_TRACKING_URI": uri}
                description = f"no --model: @champion of a temporary store holding {bundle_description}"
            else:
                name, model_args, run_env, description = model, ["--model", model], env, model
            print(f"{name}: {description}", file=sys.stderr)
            result = cold_runs(model_args, clip, args.runs, run_env, args.wait_quiet)
            results["models"][name] = {"model": description, **result}
            print(f"  median {result['median_wall_s']:.2f} s wall ({result['median_cpu_s']:.2f} s CPU) over "
                  f"{args.runs} runs: {[r['wall_s'] for r in result['runs']]}; stderr "
                  f"{'empty' if result['stderr_empty'] else 'NOT empty'}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    publish(results, args.out, lambda shown: print(json.dumps(shown, indent=2)))
    return results


if __name__ == "__main__":
    main()
