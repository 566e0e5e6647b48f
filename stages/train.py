"""Train stage: cross-validated training + the final model, tracked in MLflow.

Reads the audio, features, split, train, model and mlflow sections of params.yaml. The served
model is logged and registered by the evaluate stage, with the predict and serve settings.
"""

from __future__ import annotations

import argparse
import sys
import logging
from pathlib import Path

import pandas as pd

from ser import project
from ser.training.tracking import RunSettings
from ser.training.train import load_training_inputs, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", required=True, type=Path)
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--augmented", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = project.load_params(args.params)
    model = params.model
    try:  # before any work: a server or database that is down stops the stage with one line
        uri = project.checked_tracking_uri()
    except project.TrackingUnavailable as exc:
        sys.exit(f"train: {exc}")
    tracking = RunSettings(uri=uri, experiment=params.mlflow.experiment,
                           registered_model=params.mlflow.registered_model,
                           run_name=project.run_name(model.type), logged_params=params.as_dict(),
                           tags=project.experiment_tags(), dataset_source=str(args.metadata))
    feature_input, inputs, augmented = load_training_inputs(args.features, args.augmented, model, params.train)
    metadata = pd.read_parquet(args.metadata)
    result = train(metadata, inputs, augmented, params, args.out, tracking=tracking)
    means = {k: round(sum(f[k] for f in result.fold_scores) / len(result.fold_scores), 4)
             for k in ("uar", "accuracy", "macro_f1")}
    print(f"{model.type} ({feature_input}): fold means {means}; MLflow run {result.run_id}")


if __name__ == "__main__":
    main()
