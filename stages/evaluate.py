"""Evaluate stage: metrics/evaluate.json and metrics/plots/* from the out-of-fold predictions.

Reads the split, train and mlflow sections of params.yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ser import project
from ser.training.evaluate import evaluate
from ser.training.tracking import log_evaluation


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
    split = project.load_params(args.params)["split"]
    summary, report = evaluate(args.train, args.metrics, args.plots, protocol=split["protocol"],
                               calibration_path=args.calibration, cross_corpus_path=args.cross_corpus)
    log_evaluation(args.train, summary, args.plots, report, params_file=project.params_path(args.params))
    shown = {k: round(summary[k], 4) for k in ("uar", "accuracy", "macro_f1")}
    print(json.dumps({"protocol": summary["protocol"], **shown,
                      "per_corpus_uar": {c: round(v["uar"], 4) for c, v in summary.get("per_corpus", {}).items()}}))


if __name__ == "__main__":
    main()
