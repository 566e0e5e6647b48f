"""Evaluate stage: metrics/evaluate.json and metrics/plots/* from the out-of-fold predictions,
added to the training run; then the served model (the trained bundle with the predict and
serve settings) is logged to that run and registered, and on main made the @champion.

Reads the split, predict and serve sections of params.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ser import project
from ser.training.evaluate import evaluate
from ser.serving.loader import CHAMPION
from ser.training.tracking import log_evaluation, promote, read_run_file, register_served_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", type=Path, help="(dependency only; the predictions carry what is needed)")
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--plots", required=True, type=Path)
    parser.add_argument("--calibration", type=Path, help="metrics/calibration.json")
    parser.add_argument("--cross-corpus", type=Path, help="metrics/cross_corpus.json (its ECE joins calibration.json)")
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    params = project.load_params(args.params)
    run = read_run_file(args.train)
    try:  # the training run's store (what run.json names, whatever the environment says now): ask it first
        project.checked_tracking_uri(uri=run["tracking_uri"])
    except project.TrackingUnavailable as exc:
        sys.exit(f"evaluate: {exc}")
    summary, report = evaluate(args.train, args.metrics, args.plots, protocol=params.split.protocol,
                               calibration_path=args.calibration, cross_corpus_path=args.cross_corpus)
    log_evaluation(args.train, summary, args.plots, report, params_file=project.params_path(args.params))
    version = register_served_model(args.train, params.predict, params.serve)
    if project.builds_champion(args.params):
        promote(run["tracking_uri"], run["registered_model"], version)
        print(f"{run['registered_model']} version {version} is now @{CHAMPION} (the default of ser predict / ser serve)")
    else:
        print(f"{run['registered_model']} version {version} registered; @{CHAMPION} not moved "
              "(an experiment or uncommitted params; `ser promote` moves it)")
    shown = {k: round(summary[k], 4) for k in ("uar", "accuracy", "macro_f1")}
    print(json.dumps({"protocol": summary["protocol"], **shown,
                      "per_corpus_uar": {c: round(v["uar"], 4) for c, v in summary.get("per_corpus", {}).items()}}))


if __name__ == "__main__":
    main()
