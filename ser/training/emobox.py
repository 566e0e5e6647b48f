"""EmoBox's partitions, scored with the project's default recipe: numbers that stand next to
the literature (Ma et al., "EmoBox: Multilingual Multi-corpus Speech Emotion Recognition
Toolkit and Benchmark", Interspeech 2024).

Two protocols, each on the test clips EmoBox itself names (the ``protocol`` mapping of its
partition file: ``ravdess_test_actors_by_fold``, ``track2_test_clips``, ``track2_classes``,
``published``):

- ``ravdess_6fold``: RAVDESS alone, every emotion it has (8 classes). Fold k tests EmoBox's 4
  actors of fold k and trains on the other 20. The figure EmoBox reports is the mean of the
  fold UAs (``ua``); the UA of all test clips pooled (each clip is tested exactly once) is
  ``pooled_ua``.
- ``track2``: cross-corpus. Train on one corpus (every clip of it), test on EmoBox's balanced
  240-clip list of the other (60 each of angry, happy, neutral, sad; balanced, so accuracy =
  UA). What the model learns follows ``cross_corpus.train_on`` as in ``ser.training.crosscorpus``:
  ``all`` = the recipe's own classes (``train.emotions`` of the training corpus), answering the
  most probable of the 4; ``shared`` = the 4 only.

The recipe is the project's: ``MODELS[model.type](model.<type>, ...)`` seeded with
``train.seed``, sample weights from ``train.class_weight`` (``ser.training.train.sample_weights``), standardization inside the estimator
(fitted on the training rows only), no speaker normalization (EmoBox's protocols are not
transductive). Model types that stop early (``uses_validation``) get a speaker-disjoint
validation split carved out of the training side by ``ser.training.splits.validation_groups``
(``split.val_speakers_fraction``), exactly as in the project's cross-validation; others use
every training clip. Augmented copies (when given) join the training side only for clips on it.

UA (unweighted average recall) is ``ser.training.metrics.scores(...)["uar"]``: macro recall over the
classes present in the scored clips.

This module knows nothing of DVC or of where files live: the caller passes the metadata frame,
the model inputs, the params (:class:`ser.params.Params`, or its mapping) and the protocol mapping.
"""

from __future__ import annotations

import copy
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ser.training import splits
from ser.data.corpora import FileNameError, get_corpus
from ser.training.metrics import scores
from ser.models import MODELS, resolve_feature_input, uses_validation
from ser.training.train import ModelInputs, make_labels, sample_weights
from ser.params import Params, Section, typed

RAVDESS = "ravdess"
TRACK2_PAIRS = (("savee", "ravdess"), ("ravdess", "savee"))  # (train corpus, test corpus)
TRAIN_ON = ("all", "shared")


class MissingClipsError(KeyError):
    """Clips a protocol names that the metadata (or the model inputs) cannot supply."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ---- the protocol file -----------------------------------------------------------------------------
def check_protocol(protocol: dict[str, Any]) -> None:
    """Raise ValueError unless ``protocol`` has the keys and shapes this module reads."""
    missing = [k for k in ("ravdess_test_actors_by_fold", "track2_test_clips", "track2_classes", "published")
               if k not in protocol]
    if missing:
        raise ValueError(f"the EmoBox protocol lacks {missing}")
    fold_actors(protocol["ravdess_test_actors_by_fold"])
    clips = protocol["track2_test_clips"]
    absent = [c for pair in TRACK2_PAIRS for c in pair if c not in clips]
    if absent:
        raise ValueError(f"track2_test_clips has no list for {sorted(set(absent))}")


def fold_actors(test_actors_by_fold: dict[str, list[str]]) -> dict[str, int]:
    """``{actor id "01".."24": fold number}`` from EmoBox's ``{fold: [4 actor ids]}``; each actor
    in at most one fold."""
    fold_of: dict[str, int] = {}
    for fold, actors in test_actors_by_fold.items():
        for actor in actors:
            actor = f"{int(actor):02d}"
            if actor in fold_of:
                raise ValueError(f"actor {actor} is a test actor of folds {fold_of[actor]} and {fold}")
            fold_of[actor] = int(fold)
    if len(set(fold_of.values())) < 2:
        raise ValueError("the RAVDESS protocol needs at least two folds")
    return fold_of


# ---- matching EmoBox's clip names to metadata rows -----------------------------------------------
def _path_key(path: str) -> str:
    """``<folder>/<stem>`` of a metadata path: the official layout's name of the clip."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    return f"{p.parent.name}/{p.stem}"


def match_clips(metadata: pd.DataFrame, corpus: str, entries: list[str]) -> list[str]:
    """``utterance_id`` of each ``<folder>/<file stem>`` entry (EmoBox's official-layout names,
    e.g. ``Actor_01/03-01-01-01-01-02-01`` or ``DC/a01``), in order.

    A clip is found by its path (``<folder>/<stem>`` of ``metadata.path``), else by the id
    harmonization gives that file name (``<corpus>_<name>``, the corpus's own parser: a flat
    ``DC_a01.wav`` copy of SAVEE is the same clip). Only usable (``status == ok``) rows count.
    Raises :class:`MissingClipsError` naming every entry that is not found.
    """
    rows = metadata[(metadata["corpus"].astype(str) == corpus)]
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    by_path: dict[str, list[str]] = {}
    for uid, path in zip(rows["utterance_id"].astype(str), rows["path"].astype(str)):
        by_path.setdefault(_path_key(path), []).append(uid)
    known_ids = set(rows["utterance_id"].astype(str))
    parse = get_corpus(corpus).CORPUS.parse
    found, missing, ambiguous = [], [], []
    for entry in entries:
        candidates = by_path.get(entry, [])
        if len(candidates) > 1:
            ambiguous.append(f"{entry} ({', '.join(candidates)})")
            continue
        if candidates:
            found.append(candidates[0])
            continue
        try:
            uid = f"{corpus}_{parse(entry + '.wav').name}"
        except FileNameError:
            uid = None
        if uid in known_ids:
            found.append(uid)
        else:
            missing.append(entry)
    if ambiguous:
        raise ValueError(f"{corpus}: {len(ambiguous)} listed clips match several metadata rows: "
                         + "; ".join(ambiguous))
    if missing:
        raise MissingClipsError(f"{corpus}: {len(missing)} of {len(entries)} listed clips are not usable clips of "
                                f"the metadata: {', '.join(missing)}")
    repeated = sorted({u for u in found if found.count(u) > 1})
    if repeated:
        raise ValueError(f"{corpus}: the list names these clips more than once: {', '.join(repeated)}")
    return found


def _require_features(ids, inputs: ModelInputs, what: str) -> None:
    absent = [u for u in ids if u not in inputs.position]
    if absent:
        raise MissingClipsError(f"{what}: {len(absent)} clips have no model inputs: {', '.join(absent)}")


# ---- fitting -------------------------------------------------------------------------------------
def _recipe(params: Params) -> tuple[str, Section, int, str | None]:
    model_type = params.model.type
    return model_type, params.model.of(model_type), params.train.seed, params.train.class_weight


def _training_rows(inputs: ModelInputs, augmented: ModelInputs | None, fit_ids: list[str], y_fit: np.ndarray,
                   corpora: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, y and corpus of ``fit_ids`` plus the augmented copies of exactly those clips (labelled
    as, and of the corpus of, their source)."""
    X, y = inputs.rows(fit_ids), y_fit
    if augmented is None or not augmented.sources:
        return X, y, corpora
    source_row = {u: i for i, u in enumerate(fit_ids)}
    copies = [i for i, source in enumerate(augmented.sources) if source in source_row]
    if not copies:
        return X, y, corpora
    rows = [source_row[augmented.sources[i]] for i in copies]
    return (np.concatenate([X, augmented.X[copies]]), np.concatenate([y, y_fit[rows]]),
            np.concatenate([corpora, corpora[rows]]))


def fit_and_predict(params: Params | dict[str, Any], inputs: ModelInputs, n_classes: int, fit_ids: list[str],
                    y_fit: np.ndarray, fit_corpora: list[str], test_ids: list[str], val_ids: list[str] | None = None,
                    y_val: np.ndarray | None = None, augmented: ModelInputs | None = None) -> np.ndarray:
    """Probabilities (test rows x ``n_classes``) of the recipe fitted on ``fit_ids`` (of corpora
    ``fit_corpora``), weighted per ``train.class_weight`` (``ser.training.train.sample_weights``)."""
    model_type, type_params, seed, weighting = _recipe(typed(Params, params))
    X_fit, y_all, corpora = _training_rows(inputs, augmented, list(fit_ids), np.asarray(y_fit, dtype=np.int64),
                                           np.asarray(fit_corpora, dtype=object))
    estimator = MODELS[model_type](type_params, inputs.X.shape[1:], n_classes, seed,
                                   feature_names=list(inputs.feature_names) or None)
    has_val = bool(val_ids)
    estimator.fit(X_fit, y_all, inputs.rows(val_ids) if has_val else None,
                  np.asarray(y_val, dtype=np.int64) if has_val else None,
                  sample_weight=sample_weights(y_all, corpora, weighting))
    return np.asarray(estimator.predict_proba(inputs.rows(list(test_ids))))


def _folds_frame(clips: pd.DataFrame, fold: np.ndarray) -> pd.DataFrame:
    """``ser.training.splits``' fold frame: index utterance_id, ``fold`` and ``group`` (speakers joined by
    duplicate links)."""
    groups = splits.speaker_groups(clips)
    return pd.DataFrame({"fold": fold.astype(int), "group": groups.values}, index=groups.index)


def _validation(folds: pd.DataFrame, clips: pd.DataFrame, train_side: np.ndarray, params: Params,
                seed_offset: int) -> np.ndarray:
    fraction = params.split.val_speakers_fraction if uses_validation(params.model.type) else 0.0
    return splits.validation_groups(folds, clips, train_side, fraction, params.split.seed + seed_offset,
                                    "speaker_kfold")


def _usable(metadata: pd.DataFrame, corpus: str) -> pd.DataFrame:
    rows = metadata[metadata["corpus"].astype(str) == corpus]
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    return rows.reset_index(drop=True)


# ---- RAVDESS, 6 speaker-independent folds ---------------------------------------------------------
def ravdess_folds(clips: pd.DataFrame, test_actors_by_fold: dict[str, list[str]]) -> np.ndarray:
    """EmoBox fold number of each RAVDESS clip, from its actor (speaker ``ravdess_<nn>``).
    Every actor of the data must be a test actor of some fold."""
    fold_of = fold_actors(test_actors_by_fold)
    actors = clips["speaker"].astype(str).str.removeprefix(f"{RAVDESS}_")
    unassigned = sorted(set(actors) - set(fold_of))
    if unassigned:
        raise ValueError(f"RAVDESS actors {unassigned} are in no EmoBox test fold")
    return actors.map(fold_of).to_numpy(dtype=int)


def ravdess_6fold(metadata: pd.DataFrame, inputs: ModelInputs, params: Params | dict[str, Any],
                  test_actors_by_fold: dict[str, list[str]], augmented: ModelInputs | None = None,
                  ) -> dict[str, Any]:
    """``{"ua": mean of fold UAs, "folds": [UA per fold, in fold order], "pooled_ua": UA of all
    test clips}``: RAVDESS alone, all its emotions, fold k trained on the actors of the others."""
    params = typed(Params, params)
    clips = _usable(metadata, RAVDESS)
    if clips.empty:
        raise ValueError("the metadata has no usable RAVDESS clips")
    _require_features(clips["utterance_id"], inputs, "ravdess")
    labels, classes = make_labels(clips, "emotion", None)
    clips = clips[labels.notna().to_numpy()].reset_index(drop=True)
    y = np.array([classes.index(str(v)) for v in labels.dropna()], dtype=np.int64)
    folds = _folds_frame(clips, ravdess_folds(clips, test_actors_by_fold))
    ids = clips["utterance_id"].astype(str).to_numpy()
    corpora = clips["corpus"].astype(str).to_numpy()
    fold_uas, y_true, y_pred = [], [], []
    for fold in sorted(int(f) for f in test_actors_by_fold):
        test = (folds["fold"] == fold).to_numpy()
        if not test.any():
            raise ValueError(f"EmoBox fold {fold}: no clips of its test actors {test_actors_by_fold[str(fold)]}")
        train_side = splits.training_mask(folds, fold)
        validation = _validation(folds, clips, train_side, params, fold)
        fit = train_side & ~validation
        probabilities = fit_and_predict(params, inputs, len(classes), ids[fit].tolist(), y[fit], corpora[fit].tolist(),
                                        ids[test].tolist(), ids[validation].tolist(), y[validation], augmented)
        predicted = probabilities.argmax(axis=1)
        fold_uas.append(scores(y[test], predicted)["uar"])
        y_true.append(y[test])
        y_pred.append(predicted)
    return {"ua": float(np.mean(fold_uas)), "folds": [float(u) for u in fold_uas],
            "pooled_ua": float(scores(np.concatenate(y_true), np.concatenate(y_pred))["uar"])}


# ---- track 2: cross-corpus on EmoBox's balanced lists ---------------------------------------------
def cross_corpus_ua(metadata: pd.DataFrame, inputs: ModelInputs, params: Params | dict[str, Any], train_corpus: str,
                    test_entries: list[str], test_corpus: str, classes: list[str], train_on: str = "all",
                    augmented: ModelInputs | None = None) -> dict[str, Any]:
    """``{"ua", "n_clips"}`` of the recipe trained on every usable ``train_corpus`` clip and tested
    on the listed ``test_corpus`` clips, each answered with the most probable of ``classes``."""
    params = typed(Params, params)
    if train_on not in TRAIN_ON:
        raise ValueError(f"cross_corpus.train_on: unknown '{train_on}'; choose one of {list(TRAIN_ON)}")
    classes = sorted(classes)
    test_ids = match_clips(metadata, test_corpus, list(test_entries))
    usable = pd.concat([_usable(metadata, train_corpus), _usable(metadata, test_corpus)], ignore_index=True)
    test_rows = usable.set_index("utterance_id").loc[test_ids]
    outside = test_rows[~test_rows["emotion"].isin(classes)]
    if len(outside):
        raise ValueError(f"{test_corpus}: listed clips outside {classes}: "
                         + ", ".join(f"{u} ({e})" for u, e in outside["emotion"].items()))
    _require_features(test_ids, inputs, test_corpus)

    train_clips = usable[usable["corpus"].astype(str) == train_corpus]
    _require_features(train_clips["utterance_id"], inputs, train_corpus)
    emotions = list(classes) if train_on == "shared" else params.train.emotions
    labels, learnt = make_labels(train_clips, "emotion", emotions)
    absent = [c for c in classes if c not in learnt]
    if absent:
        raise ValueError(f"{train_corpus}->{test_corpus}: the model would not learn {absent} (it learns {learnt})")

    # Nothing sharing a speaker group (a duplicate link) with a test clip reaches training.
    clips = pd.concat([train_clips[labels.notna().to_numpy()], usable.set_index("utterance_id").loc[test_ids]
                      .reset_index()], ignore_index=True)
    fold = np.r_[np.zeros(int(labels.notna().sum()), dtype=int), np.ones(len(test_ids), dtype=int)]
    folds = _folds_frame(clips, fold)
    train_side = splits.training_mask(folds, 1)
    validation = _validation(folds, clips, train_side, params, 0)
    fit = train_side & ~validation
    ids = clips["utterance_id"].astype(str).to_numpy()
    label_of = dict(zip(train_clips["utterance_id"].astype(str), labels))
    y = np.array([learnt.index(str(label_of[u])) if u in label_of else -1 for u in ids], dtype=np.int64)
    corpora = clips["corpus"].astype(str).to_numpy()
    probabilities = fit_and_predict(params, inputs, len(learnt), ids[fit].tolist(), y[fit], corpora[fit].tolist(),
                                    test_ids, ids[validation].tolist(), y[validation], augmented)
    columns = [learnt.index(c) for c in classes]
    predicted = np.asarray(classes, dtype=object)[probabilities[:, columns].argmax(axis=1)]
    return {"ua": float(scores(test_rows["emotion"].astype(str).to_numpy(), predicted)["uar"]),
            "n_clips": len(test_ids)}


def track2(metadata: pd.DataFrame, inputs: ModelInputs, params: Params | dict[str, Any],
           test_clips: dict[str, list[str]],
           classes: list[str], train_on: str = "all", augmented: ModelInputs | None = None) -> dict[str, Any]:
    """``{"savee->ravdess": {...}, "ravdess->savee": {...}}`` (see :func:`cross_corpus_ua`)."""
    return {f"{source}->{target}": cross_corpus_ua(metadata, inputs, params, source, test_clips[target], target,
                                                   classes, train_on, augmented)
            for source, target in TRACK2_PAIRS}


# ---- everything ---------------------------------------------------------------------------------
def describe(params: Params | dict[str, Any], train_on: str) -> str:
    params = typed(Params, params)
    model_type = params.model.type
    validation = (f"early stopping on {params.split.val_speakers_fraction} of the training side's speakers "
                  f"(ser.training.splits.validation_groups, seed split.seed + fold)" if uses_validation(model_type)
                  else "no validation split (every training clip is fitted)")
    learns = ("the recipe's own classes (train.emotions) of the training corpus, answering the most probable "
              "of the 4" if train_on == "all" else "the 4 classes only")
    return (f"EmoBox (Ma et al., Interspeech 2024) partitions, scored with the project's recipe "
            f"(model {model_type}, train.seed, class_weight {params.train.class_weight}, no speaker "
            f"normalization, {validation}). ravdess_6fold: RAVDESS alone, 8 classes, EmoBox's 6 folds of 4 test "
            f"actors, each trained on the other 20; 'ua' = mean of the 6 fold UAs (as EmoBox reports), "
            f"'folds' = UA per fold 1..6, 'pooled_ua' = UA over every fold's test clips pooled (each"
            f" RAVDESS clip tested once). track2: train on "
            f"every clip of one corpus ({learns}; cross_corpus.train_on={train_on}), test on EmoBox's balanced "
            f"240-clip 4-class list of the other (angry, happy, neutral, sad); balanced, so UA = the accuracy "
            f"EmoBox's table 5 reports. UA = unweighted average recall (macro recall, ser.training.metrics).")


def emobox(metadata: pd.DataFrame, inputs: ModelInputs, params: Params | dict[str, Any], protocol: dict[str, Any],
           augmented: ModelInputs | None = None) -> dict[str, Any]:
    """The benchmark's JSON: ``protocol`` (a description), ``ravdess_6fold``, ``track2``,
    ``published`` (copied from the protocol mapping), ``model_type``, ``feature_input``.

    ``params`` is the whole params file (:class:`ser.params.Params`, or its mapping): training
    reads split, train and model, ``cross_corpus.train_on`` says what track 2 learns; ``inputs``
    are the model inputs of the recipe's feature input (``ser.training.train.load_model_inputs``).
    """
    check_protocol(protocol)
    params = typed(Params, params)
    model_type = params.model.type
    feature_input = resolve_feature_input(model_type, params.model.features, params.model.of(model_type))
    train_on = params.cross_corpus.train_on
    return {
        "protocol": describe(params, train_on),
        "ravdess_6fold": ravdess_6fold(metadata, inputs, params, protocol["ravdess_test_actors_by_fold"], augmented),
        "track2": track2(metadata, inputs, params, protocol["track2_test_clips"], protocol["track2_classes"],
                         train_on, augmented),
        "published": copy.deepcopy(protocol["published"]),
        "model_type": model_type,
        "feature_input": feature_input,
    }
