"""Generalization to a recording set nobody trained on: leave-one-corpus-out, as a figure.

The default model's recipe (same model type, inputs, hyper-parameters, augmentation) is trained
on all corpora but one and scored on the one left out, for each corpus in turn, on the emotions
every corpus shares (``cross_corpus.emotions``, by default neutral, happy, sad, angry). The
headline is the mean UAR over the held-out corpora.

``cross_corpus.train_on`` says what the model learns: ``all``, the classes the recipe itself
learns (``train.emotions``: every emotion of the training corpora by default), the model that is
deployed; its answer on a held-out clip is the most probable of the shared emotions, since the
clip can only be scored on those. ``shared`` trains on the shared emotions alone. The figure of
the other choice is written beside the headline, so both are always in view.

The same figure with per-speaker normalization (``train.speaker_norm: speaker``, which reads
the held-out speakers' unlabeled clips) is computed beside it and labelled transductive, never
mixed with the headline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ser.training.calibration import cross_fitted, expected_calibration_error
from ser.training.metrics import scores
from ser.training.train import ModelInputs, cross_validate, out_of_fold, prepare_cross_validation
from ser.params import Params, override, typed

PROTOCOL = "leave_one_corpus_out"
TRAIN_ON = ("all", "shared")


def answers_among(oof: pd.DataFrame, emotions: list[str]) -> pd.DataFrame:
    """The out-of-fold rows of ``emotions``, each answered with the most probable of them."""
    missing = [e for e in emotions if f"p_{e}" not in oof.columns]
    if missing:
        raise ValueError(f"cross_corpus.emotions {missing} are not classes the model learns "
                         f"(it learns {[c[2:] for c in oof.columns if c.startswith('p_')]})")
    rows = oof[oof["y_true"].isin(emotions)]
    probabilities = rows[[f"p_{e}" for e in emotions]].to_numpy()
    return rows.assign(y_pred=np.asarray(emotions, dtype=object)[probabilities.argmax(axis=1)])


def _figure_params(params: Params, emotions: list[str], train_on: str, speaker_norm: str) -> Params:
    changes = {"split.protocol": PROTOCOL, "train.speaker_norm": speaker_norm}
    if train_on == "shared":
        changes["train.emotions"] = list(emotions)
    return override(params, changes)


def _figure(oof: pd.DataFrame, trained_classes: list[str], emotions: list[str], train_on: str,
            speaker_norm: str) -> dict[str, Any]:
    answered = answers_among(oof, emotions)
    shared = answered[[f"p_{e}" for e in emotions]].to_numpy(dtype=np.float64)
    shared /= shared.sum(axis=1, keepdims=True)  # the answer's probabilities among the shared emotions
    labels = pd.Index(emotions).get_indexer(answered["y_true"])
    calibrated, temperatures = cross_fitted(shared, labels, answered["corpus"].astype(str).to_numpy())
    held_out = {}
    for corpus, rows in answered.groupby("corpus"):
        held_out[str(corpus)] = {**scores(rows["y_true"], rows["y_pred"]), "n_clips": int(len(rows))}
    return {
        "mean_uar": float(np.mean([s["uar"] for s in held_out.values()])),
        "mean_accuracy": float(np.mean([s["accuracy"] for s in held_out.values()])),
        "mean_macro_f1": float(np.mean([s["macro_f1"] for s in held_out.values()])),
        "held_out": held_out,
        # Each held-out corpus's probabilities rescaled by a temperature fitted on the other
        # held-out corpora's (so never on its own clips).
        "calibration": {"ece_before": expected_calibration_error(shared, labels),
                        "ece": expected_calibration_error(calibrated, labels), "temperatures": temperatures},
        "speaker_norm": speaker_norm,
        "transductive": speaker_norm != "none",
        "train_on": train_on,
        "trained_classes": trained_classes,
        "classes": sorted(emotions),
    }


def cross_corpus(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
                 params: Params | dict[str, Any], emotions: list[str], transductive: bool = True,
                 train_on: str = "all", other_train_on: bool = True) -> dict[str, Any]:
    """The content of ``metrics/cross_corpus.json``.

    ``params`` is the whole params file (:class:`ser.params.Params`, or its mapping); training
    reads split, train and model. The split protocol becomes leave_one_corpus_out, and
    ``train_on`` (``all`` | ``shared``) says whether the model learns the recipe's own classes or
    only ``emotions``.
    """
    params = typed(Params, params)
    if train_on not in TRAIN_ON:
        raise ValueError(f"cross_corpus.train_on: unknown '{train_on}'; choose one of {list(TRAIN_ON)}")
    corpora = sorted(metadata.loc[metadata.get("status", pd.Series("ok", index=metadata.index)) == "ok",
                                  "corpus"].astype(str).unique())
    if len(corpora) < 2:
        raise ValueError(f"cross-corpus evaluation needs at least two corpora in data.corpora; have {corpora}")
    emotions = list(emotions)
    other = "shared" if train_on == "all" else "all"
    figures = {"headline": (train_on, "none")}
    if other_train_on:
        figures[f"train_on_{other}"] = (other, "none")
    if transductive:
        figures["transductive_speaker_norm"] = (train_on, "speaker")
    # every figure's folds in one pool of workers
    jobs = [prepare_cross_validation(metadata, inputs, augmented, _figure_params(params, emotions, *figure))
            for figure in figures.values()]
    summary: dict[str, Any] = {"protocol": PROTOCOL, "corpora": corpora, "emotions": emotions,
                               "model_type": params.model.type, "speaker_independent": True}
    for (name, figure), job, results in zip(figures.items(), jobs, cross_validate(jobs)):
        summary[name] = _figure(out_of_fold(results), job.data.classes, emotions, *figure)
    return summary
