"""Train stage: cross-validated training + the final model, tracked in MLflow.

Reads the audio, features, split, train, model and mlflow sections of params.yaml.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

# opensmile before tensorflow (see docs/ARCHITECTURE.md).
import ser.features  # noqa: F401  isort: skip

import pandas as pd

from ser.config import load_params, section
from ser.train import load_training_inputs, train

SECTIONS = ("audio", "features", "split", "train", "model", "mlflow")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", required=True, type=Path)
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--augmented", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = {name: section(name, args.params) for name in SECTIONS}
    model = params["model"]
    feature_input, inputs, augmented = load_training_inputs(args.features, args.augmented, model, params["train"])
    metadata = pd.read_parquet(args.metadata)
    result = train(metadata, inputs, augmented, params, args.out, logged_params=load_params(args.params))
    means = {k: round(sum(f[k] for f in result.fold_scores) / len(result.fold_scores), 4)
             for k in ("uar", "accuracy", "macro_f1")}
    print(f"{model['type']} ({feature_input}): fold means {means}; MLflow run {result.run_id}")


if __name__ == "__main__":
    main()
