"""What tracking on the team's server costs: the train and evaluate stages, each run with MLflow on
the local SQLite file and on the team's server (``tools/team.py``: PostgreSQL behind the login,
proxied artifacts), a few times each, wall time per stage.

The stages are the real ones on the small generated project of ``tests/test_experiments.py``
(logistic regression, 3 speaker folds + the final fit, 80 clips), so the tracking calls (a
parent run, one nested run per fold, params, the dataset, the histories; then the evaluation,
its plots, the served model logged and registered) are a large share of the time: an upper
bound for the share on the real pipeline. The first run of each store is a warm-up (it creates
the store's tables and the experiment) and is not counted. Writes ``metrics/bench_team.json``.

    python benchmarks/bench_team.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.local_server import free_port  # noqa: E402
from tests.test_experiments import scratch_project  # noqa: E402

PASSWORD = "bench-team-password-0123"
TRAIN = ["stages/train.py", "--metadata", "data/interim/metadata.parquet", "--features", "data/features",
         "--augmented", "data/augmented", "--out", "data/train"]
EVALUATE = ["stages/evaluate.py", "--train", "data/train", "--metrics", "metrics/evaluate.json",
            "--plots", "metrics/plots"]


def timed(command: list[str], root: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def measure(root: Path, env: dict[str, str], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"train": [], "evaluate": []}
    for index in range(repeats + 1):
        train, evaluate = timed(TRAIN, root, env), timed(EVALUATE, root, env)
        if index:  # the first run creates the store's tables and the experiment
            times["train"].append(round(train, 2))
            times["evaluate"].append(round(evaluate, 2))
        print(f"  run {index}: train {train:.1f} s, evaluate {evaluate:.1f} s{'' if index else ' (warm-up)'}",
              flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "bench_team.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ser-bench-team-"))
    # its own folder: mkdtemp's are closed to others, and PostgreSQL runs as another user under root
    team_dir = Path(tempfile.mkdtemp(prefix="ser-bench-team-db-"))
    team_env = {**os.environ, "SER_TEAM_DIR": str(team_dir), "SER_TEAM_PORT": str(free_port()),
                "SER_TEAM_DB_PORT": str(free_port()), "SER_TEAM_ADMIN_PASSWORD": PASSWORD}
    team = [sys.executable, str(REPO / "tools" / "team.py")]
    try:
        root = work / "project"
        root.mkdir()
        scratch_project(root)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        base.update(PYTHONPATH=str(root), PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="2")
        print("SQLite store (mlflow.db beside the project)", flush=True)
        local = measure(root, base, args.repeats)

        started = subprocess.run([*team, "up"], env=team_env, capture_output=True, text=True, timeout=300)
        if started.returncode != 0:
            raise SystemExit(f"team up failed: {started.stderr}")
        url = f"http://127.0.0.1:{team_env['SER_TEAM_PORT']}"
        print(f"team server {url} (PostgreSQL, basic-auth, proxied artifacts)", flush=True)
        server = measure(root, {**base, "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
                                "MLFLOW_TRACKING_PASSWORD": PASSWORD}, args.repeats)
    finally:
        subprocess.run([*team, "down"], env=team_env, capture_output=True, timeout=300)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(team_dir, ignore_errors=True)

    result = {"what": "wall seconds per stage on the generated test project (80 clips, logreg, 3 folds + final), "
                      f"{args.repeats} runs after a warm-up, {os.cpu_count()} cores shared",
              "sqlite": local, "server": server,
              "median_s": {stage: {"sqlite": statistics.median(local[stage]),
                                   "server": statistics.median(server[stage]),
                                   "extra": round(statistics.median(server[stage]) - statistics.median(local[stage]), 2)}
                           for stage in local}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_s"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
