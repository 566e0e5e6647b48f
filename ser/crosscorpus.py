"""Generalization to a recording set nobody trained on: leave-one-corpus-out, as a figure.

The default model's recipe (same model type, inputs, hyper-parameters, augmentation) is trained
on all corpora but one and scored on the one left out, for each corpus in turn, on the emotions
every corpus shares (``cross_corpus.emotions``, by default neutral, happy, sad, angry). The
headline is the mean UAR over the held-out corpora. The same figure with per-speaker
normalization (``train.speaker_norm: speaker``, which reads the held-out speakers' unlabeled
clips) is computed beside it and labelled transductive, never mixed with the headline.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import numpy as np
import pandas as pd

from ser.metrics import scores
from ser.train import ModelInputs, train

PROTOCOL = "leave_one_corpus_out"


def _figure(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
            params: dict[str, Any], speaker_norm: str) -> dict[str, Any]:
    params = copy.deepcopy(params)
    params["split"]["protocol"] = PROTOCOL
    params["train"]["speaker_norm"] = speaker_norm
    with tempfile.TemporaryDirectory(prefix="ser-crosscorpus-") as scratch:
        result = train(metadata, inputs, augmented, params, scratch, fit_final_model=False)
    held_out = {}
    for corpus, rows in result.oof.groupby("corpus"):
        held_out[str(corpus)] = {**scores(rows["y_true"], rows["y_pred"]), "n_clips": int(len(rows))}
    return {
        "mean_uar": float(np.mean([s["uar"] for s in held_out.values()])),
        "mean_accuracy": float(np.mean([s["accuracy"] for s in held_out.values()])),
        "mean_macro_f1": float(np.mean([s["macro_f1"] for s in held_out.values()])),
        "held_out": held_out,
        "speaker_norm": speaker_norm,
        "transductive": speaker_norm != "none",
        "classes": result.classes,
    }


def cross_corpus(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
                 params: dict[str, Any], emotions: list[str], transductive: bool = True) -> dict[str, Any]:
    """The content of ``metrics/cross_corpus.json``.

    ``params`` holds the sections training reads (split, train, model, ...); the split protocol
    becomes leave_one_corpus_out and ``train.emotions`` becomes ``emotions``.
    """
    corpora = sorted(metadata.loc[metadata.get("status", pd.Series("ok", index=metadata.index)) == "ok",
                                  "corpus"].astype(str).unique())
    if len(corpora) < 2:
        raise ValueError(f"cross-corpus evaluation needs at least two corpora in data.corpora; have {corpora}")
    params = copy.deepcopy(params)
    params["train"]["emotions"] = list(emotions)
    model = params["model"]
    summary: dict[str, Any] = {
        "protocol": PROTOCOL,
        "corpora": corpora,
        "emotions": list(emotions),
        "model_type": model["type"],
        "speaker_independent": True,
        "headline": _figure(metadata, inputs, augmented, params, "none"),
    }
    if transductive:
        summary["transductive_speaker_norm"] = _figure(metadata, inputs, augmented, params, "speaker")
    return summary
