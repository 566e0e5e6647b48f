"""Stage ``features``: metadata -> data/features (functionals, eGeMAPS, sequences, failures)."""

from __future__ import annotations

import argparse
import os
import sys

# One BLAS thread per worker process: the pool already uses every core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pandas as pd  # noqa: E402

from ser.project import load_params, repo_root  # noqa: E402
from ser.features import compute_features  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", required=True, help="data/interim/metadata.parquet")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/features")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = compute_features(pd.read_parquet(args.metadata), args.out, params.audio, params.features,
                               root=repo_root())
    print(f"features: {summary['clips']} clips written to {args.out} "
          f"({summary['computed']} computed, {summary['from_cache']} from cache, "
          f"{summary['failed']} failed -> {args.out}/failures.parquet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
