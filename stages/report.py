"""Report stage: reports/index.html with its figures, also logged to the training run in MLflow.

Shows what the earlier stages produced; reads the ``predict:`` section for its one example
timeline (windows and speech segments, as ``ser predict --timeline`` uses them).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ser import project
from ser.training.report import FIGURES, build_report, log_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", required=True, type=Path, help="data/interim/metadata.parquet")
    parser.add_argument("--features", required=True, type=Path, help="data/features/")
    parser.add_argument("--train", required=True, type=Path, help="data/train/ (oof predictions, history, run.json)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics/evaluate.json")
    parser.add_argument("--calibration", type=Path, help="metrics/calibration.json")
    parser.add_argument("--out", required=True, type=Path, help="report folder (index.html + images)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to the training run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    predict = project.load_params(project.params_path()).predict
    report = build_report(args.metadata, args.features, args.train, args.metrics, args.out, project.repo_root(),
                          args.calibration, predict)
    missing = sorted(set(FIGURES) - set(report.figures))
    if missing:
        raise SystemExit(f"report: figures not produced: {missing}")
    for note in report.notes:
        logging.warning("report: %s", note)
    logging.info("report: %s with %d figures", report.index, len(report.figures))
    if not args.no_mlflow:
        uri = project.tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
        run_id = log_report(args.out, args.train / "run.json", uri)
        if run_id is None:
            logging.warning("report: %s names no MLflow run; figures not logged", args.train / "run.json")
        else:
            logging.info("report: logged to MLflow run %s under report/", run_id)


if __name__ == "__main__":
    main()
