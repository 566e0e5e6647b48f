"""EmoBox benchmark: the default recipe on EmoBox's own partitions, next to its published figures.

Reads the pipeline's outputs (``data/interim/metadata.parquet``, ``data/features``) and EmoBox's
partition file (``../shared/benchmarks/emobox_protocol.json``: the 6 speaker-independent RAVDESS
folds and the balanced 240-clip cross-corpus lists of track 2), runs ``ser.training.emobox.emobox`` with
params.yaml's recipe (model.type, its params and input, train.seed, train.class_weight,
cross_corpus.train_on) and writes ``metrics/emobox.json``:

- ``ravdess_6fold``: RAVDESS alone, 8 classes; ``ua`` = mean of the 6 fold UAs (EmoBox's
  figure), ``folds``, ``pooled_ua`` = UA of all test clips pooled;
- ``track2``: ``savee->ravdess`` and ``ravdess->savee`` UA on EmoBox's lists (balanced 4 classes,
  so UA = the accuracy EmoBox's table 5 reports);
- ``published``: EmoBox's figures, copied from the partition file.

    python benchmarks/bench_emobox.py
    python benchmarks/bench_emobox.py --metadata ../baseline/data/interim/metadata.parquet \\
        --features ../baseline/data/features --out /tmp/emobox.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import pandas as pd  # noqa: E402

from common import publish  # noqa: E402  (benchmarks/, the script's folder)
from ser.training.emobox import emobox  # noqa: E402
from ser.models import resolve_feature_input  # noqa: E402
from ser.project import load_params, params_path  # noqa: E402
from ser.training.train import load_augmented_inputs, load_model_inputs  # noqa: E402


def _published_line(figures: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.3f}" for name, value in figures.items())


def print_table(result: dict) -> None:
    published = result["published"]
    six = result["ravdess_6fold"]
    print(f"\nEmoBox partitions, {result['model_type']} on {result['feature_input']} (UA, fractions)")
    print(f"{'protocol':34s} {'ours':>6s}   published (EmoBox, frozen encoder + small head)")
    print(f"{'RAVDESS 8-class, 6-fold mean':34s} {six['ua']:6.3f}   "
          f"{_published_line(published.get('ravdess_8class_ua_6folds', {}))}")
    print(f"{'  pooled over all test clips':34s} {six['pooled_ua']:6.3f}")
    print(f"{'  per fold':34s} " + " ".join(f"{u:.3f}" for u in six["folds"]))
    for pair, figure in result["track2"].items():
        print(f"{'track 2 ' + pair + ' (' + str(figure['n_clips']) + ' clips)':34s} {figure['ua']:6.3f}   "
              f"{_published_line(published.get('track2_accuracy', {}).get(pair, {}))}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", default=REPO / "data/interim/metadata.parquet", type=Path)
    parser.add_argument("--features", default=REPO / "data/features", type=Path)
    parser.add_argument("--protocol", default=REPO.parent / "shared/benchmarks/emobox_protocol.json", type=Path)
    parser.add_argument("--augmented", default=None, type=Path,
                        help="an augment stage folder (data/augmented); its copies of training clips join the "
                             "training side when train.use_augmented (default: none)")
    parser.add_argument("--out", default=REPO / "metrics/emobox.json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    params = load_params(params_path())
    protocol = json.loads(args.protocol.read_text(encoding="utf-8"))
    metadata = pd.read_parquet(args.metadata)
    model = params.model
    feature_input = resolve_feature_input(model.type, model.features, model.of())
    inputs = load_model_inputs(args.features, feature_input)
    augmented = (load_augmented_inputs(args.augmented, feature_input)
                 if args.augmented is not None and params.train.use_augmented else None)
    started = time.time()
    result = emobox(metadata, inputs, params, protocol, augmented)
    print(f"{time.time() - started:.0f} s", flush=True)
    publish(result, args.out, print_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
