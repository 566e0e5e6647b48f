"""Cross-corpus stage: the default recipe under leave-one-corpus-out -> metrics/cross_corpus.json.

Reads the split, train, model and cross_corpus sections of params.yaml (audio and features only
to name the inputs).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from ser.project import load_params
from ser.training.crosscorpus import cross_corpus
from ser.training.train import load_training_inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", required=True, type=Path)
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--augmented", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="metrics/cross_corpus.json")
    parser.add_argument("--params", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    params = load_params(args.params)
    feature_input, inputs, augmented = load_training_inputs(args.features, args.augmented, params.model, params.train)
    metadata = pd.read_parquet(args.metadata)
    settings = params.cross_corpus
    summary = cross_corpus(metadata, inputs, augmented, params, settings.emotions,
                           transductive=settings.transductive, train_on=settings.train_on)
    summary["feature_input"] = feature_input
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    shown = {"mean_uar": round(summary["headline"]["mean_uar"], 4),
             "held_out_uar": {c: round(v["uar"], 4) for c, v in summary["headline"]["held_out"].items()}}
    if "transductive_speaker_norm" in summary:
        shown["transductive_speaker_norm_mean_uar"] = round(summary["transductive_speaker_norm"]["mean_uar"], 4)
    print(json.dumps(shown))


if __name__ == "__main__":
    main()
