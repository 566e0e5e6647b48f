"""Ablations of the default recipe, each judged on both figures the project keeps:
speaker-independent UAR per corpus (``split`` folds) and the leave-one-corpus-out mean on the
shared emotions (non-transductive, the recipe's own classes), from one features folder.

Variants are named ``NAME=KEY:VALUE[,KEY:VALUE...]`` over the params sections training reads;
``depths`` takes the pooled encoder depths as ``2-4-6`` and slices them out of a whisper table
computed with every depth wanted (``features.whisper.layers`` a superset), so no feature is
recomputed::

    python benchmarks/ablate.py --features data/features \\
        --variant 'd246=depths:2-4-6' --variant 'all=depths:1-2-3-4-5-6' \\
        --variant 'balanced=depths:2-4-6,train.balance:corpus_class'

Writes ``metrics/ablation.json`` (or ``--out``), one row per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ser import project  # noqa: E402
from ser.params import Params, override  # noqa: E402
from ser.training.crosscorpus import cross_corpus  # noqa: E402
from ser.training.metrics import scores  # noqa: E402
from ser.training.train import ModelInputs, load_model_inputs, train  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, settings = text.partition("=")
    changes = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition(":")
        changes[key] = [int(d) for d in value.split("-")] if key == "depths" else yaml.safe_load(value)
    return name, changes


def depth_columns(inputs: ModelInputs, depths: list[int]) -> ModelInputs:
    keep = [i for i, column in enumerate(inputs.feature_names)
            if int(column.split("_")[1][1:]) in depths]
    if len(keep) != 1024 * len(depths):
        raise ValueError(f"the whisper table lacks some of depths {depths}")
    return ModelInputs(inputs.ids, inputs.X[:, keep], [inputs.feature_names[i] for i in keep])


def apply(params: Params, changes: dict[str, Any]) -> Params:
    """``params`` with the variant's dotted keys replaced (validated; ``depths`` is no params key)."""
    return override(params, {key: value for key, value in changes.items() if key != "depths"})


def evaluate(metadata: pd.DataFrame, inputs: ModelInputs, params: Params) -> dict[str, Any]:
    started = time.time()
    result = train(metadata, inputs, None, params, "/tmp/unused", fit_final_model=False)
    by_corpus = {}
    oof = result.oof
    for corpus, rows in oof.groupby("corpus"):
        by_corpus[str(corpus)] = round(scores(rows["y_true"], rows["y_pred"])["uar"], 4)
    figure = cross_corpus(metadata, inputs, None, params, params.cross_corpus.emotions, transductive=False,
                          train_on=params.cross_corpus.train_on, other_train_on=False)
    held = {corpus: round(v["uar"], 4) for corpus, v in figure["headline"]["held_out"].items()}
    return {"speaker_independent_uar": by_corpus, "loco_mean_uar": round(figure["headline"]["mean_uar"], 4),
            "loco_held_out_uar": held,
            "seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", default="data/interim/metadata.parquet")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--out", default=str(REPO / "metrics" / "ablation.json"))
    args = parser.parse_args(argv)

    base = project.load_params(project.params_path())
    metadata = pd.read_parquet(args.metadata)
    table = load_model_inputs(args.features, "whisper")
    rows = []
    for text in args.variant:
        name, changes = parse_variant(text)
        params = apply(base, changes)
        inputs = depth_columns(table, changes["depths"]) if "depths" in changes else table
        row = {"variant": name, "changes": changes, **evaluate(metadata, inputs, params)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"protocol": {"speaker_independent": base.split.protocol,
                                            "cross_corpus": "leave_one_corpus_out, non-transductive"},
                               "corpora": sorted(metadata.loc[metadata["status"] == "ok", "corpus"].unique()),
                               "rows": rows}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
