"""The Keras families side by side, the way a user compares them: queued DVC experiments.

Queues one ``dvc exp run -S model.type=<family>`` per family (optionally on another input with
``--input``), runs the queue one experiment at a time (``dvc queue start -j 1``), and waits for
it, bounded by ``--timeout``. Then it reads every experiment's metrics from ``dvc exp show``:
RAVDESS speaker-independent UAR (``metrics/evaluate.json``), the five-corpus
leave-one-corpus-out mean (``metrics/cross_corpus.json``), the wall time of the experiment
(its executor log's first to last write) and the family's
trainable parameters on that input. The workspace's own metrics (the default model) are the
first row, for reference. Results go to ``metrics/bench_families.json``.

Queued experiments run in temporary copies of the last commit: commit first, run ``dvc repro``
once, and keep ``SER_DATA_MIRROR`` set (the queue's worker inherits it). Run it alone on the
machine (the wall times are the point). ``--collect`` only reads experiments already run.

    python benchmarks/bench_families.py                      # the six families, their default input
    python benchmarks/bench_families.py --families lstm gru --input logmel
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tqdm import tqdm  # noqa: E402

from benchmarks.common import publish  # noqa: E402

FAMILIES = ("cnn1d", "cnn2d", "lstm", "bilstm", "gru", "clstm")
DONE = ("Success", "Failed")


def dvc(*args: str, check: bool = True) -> str:
    return subprocess.run(["dvc", *args], cwd=REPO, check=check, capture_output=True, text=True).stdout


def queue_states(names: list[str]) -> dict[str, str]:
    """Status of the named tasks ("Queued", "Running", "Success", "Failed") from ``dvc queue status``."""
    states = {}
    for line in dvc("queue", "status").splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in names:
            states[words[1]] = words[-1]
    return states


def run_queue(names: list[str], timeout_s: float, poll_s: float = 60.0) -> dict[str, str]:
    """Starts the queue one experiment at a time and waits for it (bounded by ``timeout_s``);
    the final state of each task. Stops the queue whatever happens. Polled once a minute:
    ``dvc queue status`` talks to the worker through the queue's file broker, and polling it
    every few seconds has crashed the worker (a half-written message) between two tasks."""
    dvc("queue", "start", "-j", "1")
    states = {name: "Queued" for name in names}
    deadline = time.monotonic() + timeout_s
    try:
        with tqdm(total=len(names), desc="queued experiments", unit="exp") as bar:
            while time.monotonic() < deadline and not all(s in DONE for s in states.values()):
                time.sleep(poll_s)
                for name, state in queue_states(names).items():
                    if state in DONE and states[name] not in DONE:
                        bar.update()
                        bar.set_postfix_str(f"{name}: {state}")
                    states[name] = state
    finally:  # never leave queue workers behind
        dvc("queue", "stop", "--kill", check=False)
    return states


def wall_seconds(executor: dict | None) -> tuple[float | None, bool]:
    """An experiment's wall time: from the creation to the last write of its executor's log
    (``dvc exp show`` names the file), so polling intervals do not enter it; and whether it
    trained at all: DVC restores a stage whose deps and params it has run before from its run
    cache, and such a run's seconds say nothing about training."""
    log = ((executor or {}).get("local") or {}).get("log")
    if not log or not Path(log).is_file():
        return None, False
    trained = "Running stage 'train'" in Path(log).read_text(errors="replace")
    shown = subprocess.run(["stat", "-c", "%W %Y", log], capture_output=True, text=True).stdout.split()
    born, modified = (float(value) for value in shown)
    return (round(modified - born, 1) if born > 0 else None), trained


def figures(metrics: dict) -> dict:
    """RAVDESS speaker-independent UAR and the leave-one-corpus-out figures of one revision."""
    evaluated = metrics["metrics/evaluate.json"]["data"]
    cross = metrics["metrics/cross_corpus.json"]["data"]
    return {"model_type": evaluated["model_type"], "input": evaluated["feature_input"],
            "protocol": evaluated["protocol"],
            "ravdess_uar": round(evaluated["per_corpus"]["ravdess"]["uar"], 4),
            "all_clips_uar": round(evaluated["uar"], 4),
            "loco_protocol": cross["protocol"],
            "loco_mean_uar": round(cross["headline"]["mean_uar"], 4),
            "loco_held_out_uar": {c: round(v["uar"], 4) for c, v in cross["headline"]["held_out"].items()}}


def shown_revisions(rev: str | None = None) -> dict[str, dict]:
    """Metrics (and the executor, for the wall time) of the workspace and of every experiment,
    by name, from ``dvc exp show --json`` (of the experiments based on ``rev``; default HEAD)."""
    revisions = {}
    for baseline in json.loads(dvc("exp", "show", "--json", *(["--rev", rev] if rev else []))):
        if baseline["name"] is None and baseline["rev"] == "workspace":
            revisions["workspace"] = {"metrics": baseline["data"]["metrics"], "executor": None}
        for experiment in baseline.get("experiments") or []:
            revisions[experiment["name"]] = {"metrics": experiment["revs"][0]["data"]["metrics"],
                                             "executor": experiment.get("executor"),
                                             "baseline": baseline["rev"][:7]}
    return revisions


@functools.lru_cache(maxsize=None)
def input_shape(feature_input: str) -> tuple[int, ...]:
    from ser.training.train import load_model_inputs

    return tuple(load_model_inputs(REPO / "data/features", feature_input).X.shape[1:])


def parameters(model_type: str, feature_input: str) -> int:
    """Trainable parameters of the family on that input (the five-corpus classes: 8 emotions)."""
    import numpy as np

    from ser.models import MODELS
    from ser.project import load_params

    params = load_params(REPO / "params.yaml").model.of(model_type)
    estimator = MODELS[model_type](params, input_shape(feature_input), 8, 0)
    model = estimator.flavor_model
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def print_table(result: dict) -> None:
    print("| model | input | RAVDESS (speaker-independent UAR) | five-corpus LOCO mean | wall | parameters |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in result["rows"]:
        wall = f"{row['wall_s'] / 60:.1f} min" if row.get("wall_s") else "-"
        params = f"{row['parameters'] / 1000:.0f}k" if row.get("parameters") else "-"
        print(f"| {row['model_type']} | {row['input']} | {row['ravdess_uar']:.3f} | {row['loco_mean_uar']:.3f} | "
              f"{wall} | {params} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--input", default=None, help="model.<family>.input for every family (default: its own)")
    parser.add_argument("--timeout", default=3 * 3600, type=float, help="seconds to wait for the whole queue")
    parser.add_argument("--collect", action="store_true",
                        help="queue and run nothing: read the family-* experiments already run")
    parser.add_argument("--rev", default=None, help="with --collect: the experiments based on this commit")
    parser.add_argument("--out", default=REPO / "metrics/bench_families.json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    names = [f"family-{family}" + (f"-{args.input}" if args.input else "") for family in args.families]
    states: dict[str, str] = {}
    if not args.collect:
        for family, name in zip(args.families, names):
            dvc("exp", "remove", name, check=False)  # a rerun replaces the last one of that name
            overrides = ["-S", f"model.type={family}"] + (["-S", f"model.{family}.input={args.input}"] if args.input else [])
            dvc("exp", "run", "--queue", "-n", name, *overrides)
        states = run_queue(names, args.timeout)
    revisions = shown_revisions(args.rev)
    before = {row["experiment"]: row for row in
              (json.loads(args.out.read_text())["rows"] if args.out.is_file() else [])}
    rows = [{**figures(revisions["workspace"]["metrics"]), "experiment": "workspace (the default model)"}]
    for family, name in zip(args.families, names):
        if name not in revisions or states.get(name, "Success") != "Success":
            rows.append({"model_type": family, "experiment": name, "state": states.get(name, "not found")})
            continue
        wall, trained = wall_seconds(revisions[name]["executor"])
        row = {**figures(revisions[name]["metrics"]), "experiment": name, "wall_s": wall if trained else None,
               "wall_from": f"queued at {revisions[name]['baseline']}" if trained else None}
        if not trained and before.get(name, {}).get("wall_s") and all(
                before[name].get(key) == row[key] for key in ("ravdess_uar", "loco_mean_uar")):
            # Restored from the run cache: the same stages ran before, and that run's time is this one's.
            row["wall_s"] = before[name]["wall_s"]
            row["wall_from"] = before[name].get("wall_from") or "the same stages queued at an earlier commit (run cache)"
        row["parameters"] = parameters(family, row["input"])
        rows.append(row)
    failed = [f"{row['experiment']}: {row['state']}" for row in rows if "ravdess_uar" not in row]
    if not args.collect:
        dvc("queue", "remove", "--queued", check=False)  # what --timeout left unstarted
    result = {"command": "dvc exp run --queue -S model.type=<family>; dvc queue start -j 1",
              "machine_cores": os.cpu_count(), "rows": [r for r in rows if "ravdess_uar" in r], "failed": failed}
    publish(result, args.out, print_table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
