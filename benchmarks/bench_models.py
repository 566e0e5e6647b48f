"""Model benchmark: every model type x input on the same 6 speaker-independent RAVDESS folds.

Reads the pipeline's own outputs (``data/interim/metadata.parquet``, ``data/features``), keeps
the RAVDESS clips (8 classes, 24 actors, 6 folds of 4 actors as ``split`` says), and runs the
library's cross-validation (``ser.training.train.train`` without the final fit, no augmentation, no
MLflow) for each (type, input): UAR / accuracy / macro-F1 mean +- std over the folds and the
wall time. Results are merged into ``metrics/bench_models.json`` (one entry per type:input).

    python benchmarks/bench_models.py                                  # the default grid (slow: Keras)
    python benchmarks/bench_models.py --runs logreg:whisper+egemaps svm:both gru:whisper_frames
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ser.params import Params, override  # noqa: E402
from ser.project import load_params  # noqa: E402
from ser.training.train import load_model_inputs, train  # noqa: E402

SKLEARN_RUNS = [f"{t}:{i}" for t in ("logreg", "svm", "mlp", "random_forest", "decision_tree")
                for i in ("whisper+egemaps", "both")]
KERAS_RUNS = [f"{t}:{i}" for t in ("cnn1d", "cnn2d", "lstm", "bilstm", "gru", "clstm")
              for i in ("own", "whisper_frames")]


def run_one(metadata: pd.DataFrame, features: Path, params: Params, model_type: str, feature_input: str) -> dict:
    own = params.model.of(model_type).input
    feature_input = own if feature_input == "own" else feature_input
    params = override(params, {"model.type": model_type, "model.features": feature_input,
                               "train.use_augmented": False, "train.speaker_norm": "none"})
    inputs = load_model_inputs(features, feature_input)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ser-bench-models-") as scratch:
        result = train(metadata, inputs, None, params, scratch, fit_final_model=False)
    wall = time.time() - started
    folds = result.fold_scores
    summary = {"type": model_type, "input": feature_input, "protocol": params.split.protocol,
               "corpus": "ravdess", "classes": len(result.classes), "n_folds": len(folds),
               "wall_s": round(wall, 1)}
    for name in ("uar", "accuracy", "macro_f1"):
        values = [f[name] for f in folds]
        summary[name] = {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4),
                         "folds": [round(v, 4) for v in values]}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", default=REPO / "data/interim/metadata.parquet", type=Path)
    parser.add_argument("--features", default=REPO / "data/features", type=Path)
    parser.add_argument("--params", default=REPO / "params.yaml", type=Path)
    parser.add_argument("--runs", nargs="+", default=SKLEARN_RUNS + KERAS_RUNS,
                        help="type:input pairs; input 'own' = the type's own input param")
    parser.add_argument("--out", default=REPO / "metrics/bench_models.json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    params = load_params(args.params)
    metadata = pd.read_parquet(args.metadata)
    metadata = metadata[(metadata["corpus"] == "ravdess") & (metadata["status"] == "ok")].reset_index(drop=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for run in args.runs:
        model_type, feature_input = run.split(":", 1)
        summary = run_one(metadata, args.features, params, model_type, feature_input)
        results[f"{model_type}:{summary['input']}"] = summary
        print(f"{model_type:14s} {summary['input']:18s} UAR {summary['uar']['mean']:.3f} +- {summary['uar']['std']:.3f}"
              f"  ({summary['wall_s']:.0f} s)", flush=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
