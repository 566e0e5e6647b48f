"""Cross-validated training and the final model.

``train(metadata, inputs, augmented, params, out)``:

1. labels from ``train.target`` / ``train.emotions``; clips without features are reported;
2. folds from ``split`` (``ser.training.splits``); for models that stop early (Keras, MLP) a
   speaker-disjoint validation split is carved out of each training side;
3. per fold: augmented copies of training clips join the training side (never copies of test
   or validation clips), class weights from the training labels, a fresh estimator whose
   standardization is fitted on those rows only; out-of-fold probabilities for the test clips;
4. the final model is fitted on ALL labelled clips (and their augmented copies). Models that
   train by epochs have no held-out data left for early stopping then, so they run for the
   median of the folds' best epochs: the cross-validated numbers estimate this model's
   quality, and no clip is wasted. It is saved as a ``ModelBundle`` in ``<out>/model``.

Everything is tracked in one MLflow parent run with a nested run per fold when the caller
passes ``ser.training.tracking.RunSettings``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ser.training import splits
from ser.training.metrics import scores
from ser.models import MODELS, is_keras, resolve_feature_input, uses_validation
from ser.models.bundle import SEQUENCE_INPUTS, ModelBundle, tabular_sets
from ser.features.speaker_norm import check_speaker_norm, standardize_groups
from ser.training.tracking import RunSettings, TrainingRun
from ser.params import ModelParams, Params, Section, TrainParams, model_block, typed

log = logging.getLogger(__name__)

TARGETS = ("emotion", "gender", "emotion_gender")
HISTORY_COLUMNS = ["fold", "epoch", "loss", "val_loss", "accuracy", "val_accuracy"]
FINAL_FOLD = -1  # the ``fold`` value of the final model's rows in history.csv


# ---- labels ---------------------------------------------------------------------------------
def make_labels(metadata: pd.DataFrame, target: str = "emotion",
                emotions: list[str] | dict[str, str | None] | None = None) -> tuple[pd.Series, list[str]]:
    """Label per metadata row (NaN = not used) and the sorted class names.

    ``emotions``: ``None`` keeps all; a list keeps those; a mapping renames (merges) emotions,
    e.g. ``{calm: neutral}``, and drops those mapped to null.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown train.target '{target}'; choose one of {TARGETS}")
    emotion = metadata["emotion"].astype("object")
    if isinstance(emotions, dict):
        emotion = emotion.map(lambda e: emotions[e] if e in emotions else e)
    elif emotions:
        emotion = emotion.where(emotion.isin(list(emotions)))
    elif emotions is not None and len(emotions) == 0:
        raise ValueError("train.emotions is an empty list; use null to keep every emotion")
    gender = metadata["gender"].astype("object")
    if target == "emotion":
        labels = emotion
    elif target == "gender":
        labels = gender.where(emotion.notna())
    else:
        labels = (gender + "_" + emotion).where(emotion.notna() & gender.notna())
    labels = labels.where(labels.notna(), None)
    classes = sorted(str(c) for c in labels.dropna().unique())
    if len(classes) < 2:
        raise ValueError(f"train.target={target} with train.emotions={emotions} leaves {len(classes)} class(es) "
                         f"{classes}; need at least two")
    return labels.rename("label"), classes


WEIGHTINGS = ("balanced", "corpus_balanced")


def sample_weights(y: np.ndarray, corpora: np.ndarray, mode: str | None) -> np.ndarray | None:
    """Per-row training weights for ``train.class_weight``, averaging 1 over the rows.

    ``balanced``: every class weighs the same in total. ``corpus_balanced``: every corpus weighs
    the same in total, and within a corpus every class: a corpus of 2,800 clips from two
    speakers then counts as much as one of 480, and no corpus's class mix decides the others'.
    """
    if not mode:
        return None
    if mode not in WEIGHTINGS:
        raise ValueError(f"unknown train.class_weight '{mode}'; use one of {list(WEIGHTINGS)} or null")
    frame = pd.DataFrame({"corpus": np.asarray(corpora, dtype=object), "y": np.asarray(y)})
    if mode == "balanced":  # scikit-learn's "balanced": n / (classes x rows of the class)
        per_class = frame.groupby("y")["y"].transform("size").to_numpy()
        return len(frame) / (frame["y"].nunique() * per_class).astype(np.float64)
    per_cell = frame.groupby(["corpus", "y"])["y"].transform("size").to_numpy()
    classes_in_corpus = frame.groupby("corpus")["y"].transform("nunique").to_numpy()
    return len(frame) / (frame["corpus"].nunique() * classes_in_corpus * per_cell).astype(np.float64)


# ---- inputs ------------------------------------------------------------------------------------
@dataclass
class ModelInputs:
    """Rows of model input: ``ids[i]`` is the utterance of ``X[i]``."""

    ids: list[str]
    X: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    sources: list[str] | None = None  # augmented rows: the clip each copy was made from

    def __post_init__(self):
        if len(self.ids) != len(self.X):
            raise ValueError(f"{len(self.ids)} ids for {len(self.X)} rows of features")
        self.position = {u: i for i, u in enumerate(self.ids)}

    def rows(self, ids) -> np.ndarray:
        return self.X[[self.position[u] for u in ids]]


def load_model_inputs(folder: str | os.PathLike, feature_input: str) -> ModelInputs:
    """Features written by the features (or augment) stage, as one model-input matrix."""
    from ser.features import load_sequences, load_table

    folder = Path(folder)
    if feature_input in SEQUENCE_INPUTS:
        ids, array = load_sequences(folder, feature_input)
        # float16 frames stay float16 (the Keras families read them so); the rest become float32
        dtype = np.float16 if array.dtype == np.float16 else np.float32
        return ModelInputs([str(u) for u in ids], np.asarray(array, dtype=dtype))
    tables = []
    for name in tabular_sets(feature_input):
        table = load_table(folder, name).select_dtypes("number")
        taken = {c for t in tables for c in t.columns}
        tables.append(table.rename(columns={c: f"{name}__{c}" for c in table.columns if c in taken}))
    joined = pd.concat(tables, axis=1, join="inner") if len(tables) > 1 else tables[0]
    return ModelInputs([str(u) for u in joined.index], joined.to_numpy(dtype=np.float32), [str(c) for c in joined.columns])


def load_augmented_inputs(folder: str | os.PathLike, feature_input: str) -> ModelInputs | None:
    """Augmented copies with their source clip, or None when augmentation produced nothing."""
    folder = Path(folder)
    index_path = folder / "index.parquet"
    if not index_path.is_file():
        return None
    index = pd.read_parquet(index_path)
    if index.empty:
        return None
    inputs = load_model_inputs(folder, feature_input)
    source_of = dict(zip(index["utterance_id"].astype(str), index["source_utterance_id"].astype(str)))
    keep = [u for u in inputs.ids if u in source_of]
    return ModelInputs(keep, inputs.rows(keep), inputs.feature_names, [source_of[u] for u in keep])


def load_training_inputs(features: str | os.PathLike, augmented: str | os.PathLike,
                         model_params: ModelParams | dict[str, Any], train_params: TrainParams | dict[str, Any],
                         ) -> tuple[str, ModelInputs, ModelInputs | None]:
    """``(feature_input, inputs, augmented copies or None)`` that the ``model`` and ``train``
    sections name, read from the features and augment stage folders."""
    model_params = typed(ModelParams, model_params)
    train_params = typed(TrainParams, train_params)
    model_type = model_params.type
    feature_input = resolve_feature_input(model_type, model_params.features, model_params.of(model_type))
    copies = load_augmented_inputs(augmented, feature_input) if train_params.use_augmented else None
    return feature_input, load_model_inputs(features, feature_input), copies


# ---- epochs -------------------------------------------------------------------------------------
def best_epoch(history: dict[str, list]) -> int | None:
    """1-based epoch count that early stopping kept (the lowest validation loss)."""
    if not history.get("loss"):
        return None
    val_loss = [v for v in history.get("val_loss", []) if v == v]
    if not val_loss:
        return len(history["loss"])
    return int(np.argmin(val_loss)) + 1


def final_params(model_type: str, params_of_type: Section | dict[str, Any], best_epochs: list[int]) -> Section:
    """The ``model.<model_type>`` section of the final fit: epoch-trained models run for the
    folds' median best epoch."""
    params_of_type = model_block(model_type, params_of_type)
    if not best_epochs:
        return params_of_type
    epochs = max(1, int(round(float(np.median(best_epochs)))))
    if is_keras(model_type):
        return params_of_type.model_copy(update={"epochs": epochs})
    if model_type == "mlp":
        return params_of_type.model_copy(update={"max_iter": epochs})
    return params_of_type


def history_frame(fold: int, history: dict[str, list]) -> pd.DataFrame:
    if not history.get("loss"):
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    n = len(history["loss"])
    frame = {"fold": [fold] * n, "epoch": list(range(1, n + 1))}
    for column in HISTORY_COLUMNS[2:]:
        frame[column] = list(history.get(column) or [float("nan")] * n)[:n]
    return pd.DataFrame(frame, columns=HISTORY_COLUMNS)


def concat_histories(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([h for h in parts if len(h)] or [pd.DataFrame(columns=HISTORY_COLUMNS)], ignore_index=True)


# ---- the labelled data ------------------------------------------------------------------------
@dataclass
class LabelledData:
    """Every labelled clip with features, as the model sees it, and the augmented copies of them."""

    clips: pd.DataFrame                 # metadata rows, in the order of X and y
    classes: list[str]
    X: np.ndarray
    y: np.ndarray
    speaker_norm: str
    without_features: list[str]
    copies: pd.DataFrame | None = None  # augmented rows: utterance_id, source_utterance_id (+ fold, group once placed)
    copies_X: np.ndarray | None = None
    copies_y: np.ndarray | None = None
    feature_names: list[str] | None = None  # a table's columns (None: frame sequences)

    def keep_placed_copies(self, placed: pd.DataFrame) -> None:
        """Keep the copies ``splits.augmented_folds`` placed in folds (those of labelled clips),
        each labelled as its source clip."""
        rows = pd.Index(self.copies["utterance_id"]).get_indexer(placed.index)
        sources = pd.Index(self.clips["utterance_id"]).get_indexer(placed["source_utterance_id"])
        self.copies = placed.reset_index()
        self.copies_X = self.copies_X[rows]
        self.copies_y = self.y[sources]

    def training_rows(self, fit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X, y and corpus of ``fit_rows`` plus the augmented copies of exactly those clips
        (``fit_rows`` a mask or indices; a copy belongs to its source clip's corpus)."""
        corpora = self.clips["corpus"].astype(str).to_numpy()
        X, y, corpus = self.X[fit_rows], self.y[fit_rows], corpora[fit_rows]
        if self.copies is None or not len(self.copies):
            return X, y, corpus
        sources = self.copies["source_utterance_id"]
        allowed = sources.isin(self.clips["utterance_id"].to_numpy()[fit_rows]).to_numpy()
        if not allowed.any():
            return X, y, corpus
        corpus_of = dict(zip(self.clips["utterance_id"], corpora))
        copy_corpora = np.array([corpus_of[u] for u in sources[allowed]], dtype=object)
        return (np.concatenate([X, self.copies_X[allowed]]), np.concatenate([y, self.copies_y[allowed]]),
                np.concatenate([corpus, copy_corpora]))


def labelled_data(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
                  train_params: TrainParams | dict[str, Any], feature_input: str) -> LabelledData:
    """Usable clips with features and a label (train.target / train.emotions), speaker-normalized
    when train.speaker_norm says so; augmented copies only when train.use_augmented (which of
    them belong to labelled clips is the folds' business: :meth:`LabelledData.keep_placed_copies`)."""
    train_params = typed(TrainParams, train_params)
    usable = metadata[metadata["status"] == "ok"] if "status" in metadata.columns else metadata
    without_features = sorted(set(usable["utterance_id"]) - set(inputs.ids))
    if without_features:
        log.warning("%d usable clips have no %s features and are left out (the features stage lists why): %s%s",
                    len(without_features), feature_input, ", ".join(without_features[:5]),
                    " ..." if len(without_features) > 5 else "")
    usable = usable[usable["utterance_id"].isin(inputs.position)]
    labels, classes = make_labels(usable, train_params.target, train_params.emotions)
    clips = usable[labels.notna().to_numpy()].reset_index(drop=True)
    label_of = dict(zip(clips["utterance_id"], labels.dropna().astype(str)))
    class_index = {c: i for i, c in enumerate(classes)}
    y = np.array([class_index[label_of[u]] for u in clips["utterance_id"]], dtype=np.int64)
    X = inputs.rows(clips["utterance_id"])
    speaker_norm = check_speaker_norm(train_params.speaker_norm)
    copies_X = augmented.X if augmented is not None else None
    if speaker_norm == "speaker":
        X, copies_X = _normalize_speakers(usable, inputs, clips, X, augmented)
    data = LabelledData(clips, classes, X, y, speaker_norm, without_features,
                        feature_names=list(inputs.feature_names) or None)
    if train_params.use_augmented and augmented is not None:
        data.copies = pd.DataFrame({"utterance_id": augmented.ids, "source_utterance_id": augmented.sources})
        data.copies_X = copies_X
    return data


def _normalize_speakers(usable: pd.DataFrame, inputs: ModelInputs, clips: pd.DataFrame, X: np.ndarray,
                        augmented: ModelInputs | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Transductive: each speaker's clips (labelled or not) give that speaker's statistics;
    augmented copies use their source speaker's."""
    speaker_of = dict(zip(usable["utterance_id"], usable["speaker"].astype(str)))
    reference = inputs.rows(usable["utterance_id"])
    reference_groups = usable["speaker"].astype(str).to_numpy()
    X = standardize_groups(X, [speaker_of[u] for u in clips["utterance_id"]], reference, reference_groups)
    if augmented is None:
        return X, None
    known = [s in speaker_of for s in augmented.sources]
    copies_X = augmented.X.copy()
    if any(known):
        rows = np.flatnonzero(known)
        copies_X[rows] = standardize_groups(augmented.X[rows], [speaker_of[augmented.sources[i]] for i in rows],
                                            reference, reference_groups)
    return X, copies_X


# ---- one fold, the final model ------------------------------------------------------------------
@dataclass
class FoldResult:
    score: dict[str, float]
    oof: pd.DataFrame
    history: pd.DataFrame
    best_epoch: int | None
    sizes: dict[str, int] = field(default_factory=dict)     # n_test, n_fit, n_val
    epochs: dict[str, list] = field(default_factory=dict)   # the fit's own history (per-epoch metrics)


def fit_fold(data: LabelledData, folds: pd.DataFrame, fold: int, model_type: str, params: Params | dict[str, Any],
             run: TrainingRun) -> FoldResult:
    """:func:`score_fold`, recorded in ``run``."""
    result = score_fold(data, folds, fold, model_type, params)
    record_fold(run, fold, result)
    return result


def record_fold(run: TrainingRun, fold: int, result: FoldResult) -> None:
    with run.fold(fold):
        run.log_fold(result.score, result.epochs, result.best_epoch, result.sizes)


def score_fold(data: LabelledData, folds: pd.DataFrame, fold: int, model_type: str,
               params: Params | dict[str, Any]) -> FoldResult:
    """Fit on the training side of ``fold`` (minus its validation speakers), score its test side."""
    params = typed(Params, params)
    split_params, train_params = params.split, params.train
    test = (folds["fold"] == fold).to_numpy()
    train_side = splits.training_mask(folds, fold)
    fraction = split_params.val_speakers_fraction if uses_validation(model_type) else 0.0
    validation = splits.validation_groups(folds, data.clips, train_side, fraction,
                                          split_params.seed + int(fold), split_params.protocol)
    X_fit, y_fit, corpora_fit = data.training_rows(train_side & ~validation)
    estimator = MODELS[model_type](params.model.of(model_type), data.X.shape[1:], len(data.classes),
                                   train_params.seed, feature_names=data.feature_names)
    history = estimator.fit(X_fit, y_fit,
                            data.X[validation] if validation.any() else None,
                            data.y[validation] if validation.any() else None,
                            sample_weight=sample_weights(y_fit, corpora_fit, train_params.class_weight))
    probabilities = estimator.predict_proba(data.X[test])
    predicted = probabilities.argmax(axis=1)
    score = scores(data.y[test], predicted)
    kept = best_epoch(history)
    sizes = {"n_test": int(test.sum()), "n_fit": int(len(y_fit)), "n_val": int(validation.sum())}
    oof = pd.DataFrame({"utterance_id": data.clips["utterance_id"].to_numpy()[test],
                        "corpus": data.clips["corpus"].to_numpy()[test], "fold": int(fold),
                        "y_true": [data.classes[i] for i in data.y[test]],
                        "y_pred": [data.classes[i] for i in predicted]})
    for index, name in enumerate(data.classes):
        oof[f"p_{name}"] = probabilities[:, index].astype(np.float32)
    return FoldResult(score, oof, history_frame(int(fold), history), kept, sizes, history)


# ---- the folds, several at once -----------------------------------------------------------------
# Every fold is fitted on one math thread, in this process or in a worker, so that the scores do
# not depend on train.workers: BLAS's and TensorFlow's sums change in their last digits with the
# number of threads. Two one-thread fits at once also finish sooner than two two-thread fits in
# a row, far more so for the linear probe than for Keras (docs/RESULTS.md).
_WORKER_FOLDS: dict[str, Any] = {}


def tensorflow_threads(model_type: str, threads: int) -> None:
    """For a Keras family, TensorFlow's pool sized to ``threads`` (it sizes itself by the machine's
    cores otherwise); a process whose TensorFlow already started keeps its setting."""
    if not is_keras(model_type):
        return
    import contextlib

    # through keras_models, which imports opensmile before TensorFlow (docs/ARCHITECTURE.md)
    from ser.models.keras_models import tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def one_math_thread(model_type: str):
    """Limits BLAS (and, in a fresh process, TensorFlow) to one thread; a context manager."""
    from threadpoolctl import threadpool_limits

    tensorflow_threads(model_type, 1)
    return threadpool_limits(1)


@dataclass
class CrossValidation:
    """One cross-validation to run: the labelled data, its folds, the model type and the params
    (a mapping is validated into :class:`ser.params.Params`)."""

    data: LabelledData
    folds: pd.DataFrame
    model_type: str
    params: Params
    feature_input: str = ""

    def __post_init__(self) -> None:
        self.params = typed(Params, self.params)

    @property
    def fold_ids(self) -> list[int]:
        return [int(f) for f in sorted(self.folds["fold"].unique())]


def _start_fold_worker(state_path: str) -> None:
    import dataclasses
    import pickle

    from ser.runtime.executor import init_worker_process

    init_worker_process()
    state = pickle.loads(Path(state_path).read_bytes())
    jobs = []
    for job, (X, copies_X) in zip(state["jobs"], state["arrays"]):
        data = dataclasses.replace(job.data, X=np.load(X, mmap_mode="r"),
                                   copies_X=np.load(copies_X, mmap_mode="r") if copies_X else None)
        jobs.append(dataclasses.replace(job, data=data))
    one_math_thread(jobs[0].model_type)
    _WORKER_FOLDS["jobs"] = jobs


def _score_fold_in_worker(job: int, fold: int) -> FoldResult:
    cv = _WORKER_FOLDS["jobs"][job]
    return score_fold(cv.data, cv.folds, fold, cv.model_type, cv.params)


def fold_workers(workers: int, n_folds: int) -> int:
    """Folds fitted at once: ``train.workers`` (0 = every core), never more than the folds."""
    from ser.runtime.executor import cpu_count

    return max(1, min(n_folds, workers or cpu_count()))


def fit_folds(data: LabelledData, folds: pd.DataFrame, model_type: str, params: Params | dict[str, Any],
              run: TrainingRun) -> list[FoldResult]:
    """Every fold's :func:`score_fold`, in fold order, recorded in ``run``."""
    results = cross_validate([CrossValidation(data, folds, model_type, params)])[0]
    for fold, result in zip(sorted(folds["fold"].unique()), results):
        record_fold(run, int(fold), result)
        log.info("fold %s: %s", fold, {k: round(v, 4) for k, v in result.score.items()})
    return results


def cross_validate(jobs: list[CrossValidation]) -> list[list[FoldResult]]:
    """Every fold of every cross-validation in ``jobs`` (each job's results in fold order),
    ``train.workers`` folds at once (the first job's) in spawned processes that map the
    features from files: one pool for all of them, so no core waits for a job's last fold."""
    tasks = [(j, fold) for j, job in enumerate(jobs) for fold in job.fold_ids]
    workers = fold_workers(jobs[0].params.train.workers, len(tasks))
    done: dict[tuple[int, int], FoldResult] = {}
    with tqdm(total=len(tasks), desc=f"{jobs[0].model_type} folds", unit="fold") as bar:
        if workers == 1:
            with one_math_thread(jobs[0].model_type):
                for j, fold in tasks:
                    job = jobs[j]
                    done[j, fold] = score_fold(job.data, job.folds, fold, job.model_type, job.params)
                    bar.update()
        else:
            for task, result in _fold_pool(jobs, tasks, workers):
                done[task] = result
                bar.update()
    return [[done[j, fold] for fold in job.fold_ids] for j, job in enumerate(jobs)]


def _fold_pool(jobs: list[CrossValidation], tasks: list[tuple[int, int]], workers: int):
    import dataclasses
    import multiprocessing as mp
    import pickle
    import tempfile
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    with tempfile.TemporaryDirectory(prefix="ser-folds-") as scratch:
        folder = Path(scratch)
        arrays = []
        for j, job in enumerate(jobs):
            np.save(folder / f"X{j}.npy", job.data.X)
            copies_X = None
            if job.data.copies_X is not None:
                copies_X = str(folder / f"copies_X{j}.npy")
                np.save(copies_X, job.data.copies_X)
            arrays.append((str(folder / f"X{j}.npy"), copies_X))
        state = {"jobs": [dataclasses.replace(job, data=dataclasses.replace(job.data, X=None, copies_X=None))
                          for job in jobs], "arrays": arrays}
        (folder / "state.pickle").write_bytes(pickle.dumps(state))
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start_fold_worker,
                                 initargs=(str(folder / "state.pickle"),)) as pool:
            futures = {pool.submit(_score_fold_in_worker, *task): task for task in tasks}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BrokenProcessPool as exc:
                raise RuntimeError(f"a fold worker died ({exc}); with train.workers: 1 the folds are fitted "
                                   "one at a time in this process") from None
            finally:
                for future in futures:
                    future.cancel()


def fit_final(data: LabelledData, model_type: str, type_params: Section | dict[str, Any],
              params: Params | dict[str, Any]):
    """The final estimator on every labelled clip (and every copy of them), built from
    ``type_params`` (the ``model.<model_type>`` section of the final fit); returns it with its history."""
    type_params = model_block(model_type, type_params)
    train_params = typed(Params, params).train
    X, y, corpora = data.training_rows(np.arange(len(data.y)))
    final = MODELS[model_type](type_params, data.X.shape[1:], len(data.classes), train_params.seed,
                               feature_names=data.feature_names)
    history = final.fit(X, y, sample_weight=sample_weights(y, corpora, train_params.class_weight))
    return final, history


# ---- training ---------------------------------------------------------------------------------
def folded_data(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
                params: Params | dict[str, Any], feature_input: str) -> tuple[LabelledData, pd.DataFrame]:
    """The labelled data and its folds (``split``), augmented copies placed with their sources:
    what every cross-validation of these params (training, a tuning trial) scores on."""
    params = typed(Params, params)
    split = params.split
    data = labelled_data(metadata, inputs, augmented, params.train, feature_input)
    folds = splits.assign_folds(data.clips, split.protocol, split.n_folds, split.seed,
                                labels=pd.Series([data.classes[i] for i in data.y]))
    if data.copies is not None:
        data.keep_placed_copies(splits.augmented_folds(folds, data.copies))
    return data, folds


def prepare_cross_validation(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
                             params: Params | dict[str, Any]) -> CrossValidation:
    """The cross-validation ``params`` describe (``model.type`` on its own input), ready for
    :func:`cross_validate`."""
    params = typed(Params, params)
    model_params = params.model
    model_type = model_params.type
    feature_input = resolve_feature_input(model_type, model_params.features, model_params.of(model_type))
    data, folds = folded_data(metadata, inputs, augmented, params, feature_input)
    return CrossValidation(data, folds, model_type, params, feature_input)


def out_of_fold(results: list[FoldResult]) -> pd.DataFrame:
    return pd.concat([r.oof for r in results], ignore_index=True)


@dataclass
class TrainResult:
    oof: pd.DataFrame
    history: pd.DataFrame
    classes: list[str]
    bundle: ModelBundle | None
    fold_scores: list[dict[str, float]]
    run_id: str | None
    info: dict[str, Any]


def train(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
          params: Params | dict[str, Any], out: str | os.PathLike, *, tracking: RunSettings | None = None,
          fit_final_model: bool = True) -> TrainResult:
    """Cross-validate, fit the final model, write ``out`` (see the module docstring).

    ``params`` is the whole params file (:class:`ser.params.Params`, or its mapping); training
    reads its audio, features, split, train and model sections. ``tracking`` records the run in
    MLflow (None: no tracking). ``fit_final_model=False`` only cross-validates (no final model,
    nothing written), as the benchmarks do.
    """
    params = typed(Params, params)
    prepared = prepare_cross_validation(metadata, inputs, augmented, params)
    data, folds, model_type, feature_input = prepared.data, prepared.folds, prepared.model_type, prepared.feature_input
    protocol, target = params.split.protocol, params.train.target
    run = TrainingRun(tracking, data.clips, {"model_type": model_type, "feature_input": feature_input,
                                             "protocol": protocol, "speaker_dependent": protocol == "random"},
                      target)
    info = {"model_type": model_type, "feature_input": feature_input, "protocol": protocol,
            "speaker_dependent": protocol == "random", "speaker_norm": data.speaker_norm,
            "transductive": data.speaker_norm != "none", "target": target,
            "classes": data.classes, "n_clips": int(len(data.clips))}
    started = time.time()
    with run.parent():
        results = fit_folds(data, folds, model_type, params, run)
        info["cv_seconds"] = round(time.time() - started, 1)
        oof = out_of_fold(results)
        fold_scores = [{"fold": int(f), **r.score} for f, r in zip(sorted(folds["fold"].unique()), results)]
        histories = [r.history for r in results]
        if not fit_final_model:
            return TrainResult(oof, concat_histories(histories), data.classes, None, fold_scores, None, info)
        info["temperature"] = temperature_of(oof, data.classes) if params.train.calibrate else 1.0
        best_epochs = [r.best_epoch for r in results if r.best_epoch and len(r.history)]
        type_params = final_params(model_type, params.model.of(model_type), best_epochs)
        final, final_history = fit_final(data, model_type, type_params, params)
        histories.append(history_frame(FINAL_FOLD, final_history))
        bundle = ModelBundle(model_type=model_type, classes=data.classes, feature_input=feature_input,
                             audio=params.audio, features=params.features, estimator=final,
                             feature_names=inputs.feature_names, target=target,
                             speaker_norm=data.speaker_norm, temperature=info["temperature"])
        n_copies = 0 if data.copies is None else int(len(data.copies))
        info.update({
            "n_augmented": n_copies, "clips_without_features": data.without_features,
            "folds": splits.describe(folds, data.clips),
            "final_model": {"trained_on": "all labelled clips" + (" + their augmented copies" if n_copies else ""),
                            "params": type_params.as_dict(), "best_epochs_of_folds": best_epochs},
            "train_seconds": round(time.time() - started, 1)})
        history = concat_histories(histories)
        write_outputs(Path(out), bundle, oof, history, data.classes)
        run_id = run.finish(Path(out), bundle, data.X[: min(5, len(data.X))], fold_scores, info)
        (Path(out) / "train_info.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    return TrainResult(oof, history, data.classes, bundle, fold_scores, run_id, info)


def temperature_of(oof: pd.DataFrame, classes: list[str]) -> float:
    """The temperature that calibrates the out-of-fold probabilities (held-out speakers)."""
    from ser.training.calibration import fit_temperature

    labels = pd.Index(classes).get_indexer(oof["y_true"].astype(str))
    return round(fit_temperature(oof[[f"p_{c}" for c in classes]].to_numpy(), labels), 6)


def write_outputs(out: Path, bundle: ModelBundle, oof: pd.DataFrame, history: pd.DataFrame, classes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    bundle.save(model_dir)
    oof.to_parquet(out / "oof_predictions.parquet", index=False)
    history.to_csv(out / "history.csv", index=False)
    (out / "classes.json").write_text(json.dumps(classes, indent=2), encoding="utf-8")
