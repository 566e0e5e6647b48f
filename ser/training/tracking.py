"""MLflow tracking: the training run (parent + one nested run per fold), its dataset, the
served model it registers, the evaluation added to it, and reopening it later.

The store's URI is an argument (entry points take it from ``ser.project.tracking_uri()``).
MLflow is imported inside the functions that use it: :func:`load_predictor` (``ser predict``)
imports only what resolving a model URI needs, and nothing of MLflow for a folder.
Loading a logged model back (``ser predict``, ``ser serve``) is :mod:`ser.serving.loader`.
Two ``dvc exp`` queue workers may touch a SQLite store (or a tracking server) at the same moment;
store set-up and the first writes are retried on "database is locked" and on the experiment or
the dataset being created concurrently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ser.params import PredictParams, Section, ServeParams, flatten, typed
from ser.serving.loader import CHAMPION

if TYPE_CHECKING:  # pandas is not needed to load a model for prediction
    import pandas as pd


T = TypeVar("T")
RUN_FILE = "run.json"


# The MLflow 3 UI opens an experiment on its GenAI overview unless told it holds models.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def artifact_location(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite store (absolute, so runs from temporary DVC work trees
    keep their artifacts); None (MLflow's default) for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.resolve().parent / "mlartifacts").as_uri()


def retry(action: Callable[[], T], attempts: int = 8, wait_s: float = 0.5) -> T:
    """Run ``action``, retrying on errors a concurrently used SQLite store raises."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:  # mlflow wraps SQLAlchemy errors in several exception types
            message = str(exc).lower()
            transient = any(word in message for word in ("locked", "unique constraint", "already exists", "busy",
                                                         "duplicate column", "no such table"))
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(wait_s * (attempt + 1))
    raise AssertionError("unreachable")


def use_experiment(uri: str, name: str) -> str:
    """Point mlflow at the store ``uri`` and at experiment ``name`` (created if missing, and
    marked as a model-training experiment for the UI)."""
    import mlflow

    mlflow.set_tracking_uri(uri)

    def get_or_create() -> str:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            return mlflow.create_experiment(name, artifact_location=artifact_location(uri), tags=EXPERIMENT_KIND)
        if experiment.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
            for key, value in EXPERIMENT_KIND.items():
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        # The first access creates and migrates the schema; two queue workers doing that at
        # once collide ("duplicate column"), so store set-up is serialized across processes.
        import tempfile

        database = str(Path(uri[len("sqlite:///"):]).resolve())
        lock = Path(tempfile.gettempdir()) / f"ser-mlflow-{hashlib.sha256(database.encode()).hexdigest()[:12]}.lock"
        with FileLock(str(lock), timeout=600):
            experiment_id = retry(get_or_create)
    else:
        experiment_id = retry(get_or_create)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit(folder: str | os.PathLike | None = None) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder or Path.cwd(), capture_output=True,
                                text=True, timeout=10, check=True)
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_hash(metadata: pd.DataFrame) -> str:
    """Hash of the clips a model saw: utterance ids with the hash of their decoded samples."""
    columns = [c for c in ("utterance_id", "pcm_sha256") if c in metadata.columns]
    rows = metadata[columns].astype(str).sort_values("utterance_id")
    blob = "\n".join("\t".join(row) for row in rows.itertuples(index=False, name=None))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_tags(metadata: pd.DataFrame | None = None, extra: dict[str, Any] | None = None) -> dict[str, str]:
    tags = {"git_commit": git_commit(), "mlflow.source.git.commit": git_commit()}
    if metadata is not None:
        tags["data_hash"] = data_hash(metadata)
    for key, value in (extra or {}).items():
        tags[key] = str(value)
    return tags


def loggable_params(params: dict[str, Any] | Section) -> dict[str, str]:
    """``params`` (the typed file or a section, or a mapping) flattened to MLflow params
    (``model.svm.C``), the same keys and values for the typed object as for its mapping."""
    # MLflow caps a param value at 6000 characters.
    return {key: str(value)[:6000] for key, value in flatten(params).items()}


def write_run_file(folder: str | os.PathLike, run_id: str, experiment_id: str, experiment: str, uri: str,
                   registered_model: str | None = None, version: str | None = None) -> Path:
    path = Path(folder) / RUN_FILE
    path.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id, "experiment": experiment,
                                "tracking_uri": uri, "registered_model": registered_model,
                                "model_version": version}, indent=2), encoding="utf-8")
    return path


def read_run_file(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no MLflow run recorded by training")
    return json.loads(path.read_text(encoding="utf-8"))


# ---- the training run -------------------------------------------------------------------------
@dataclass
class RunSettings:
    """Where and how ``ser.training.train.train`` records its run (built by the entry point)."""

    uri: str
    experiment: str
    registered_model: str
    run_name: str
    logged_params: dict[str, Any] | Section  # the run's params: the whole params.yaml in the stage
    tags: dict[str, str] = field(default_factory=dict)
    dataset_source: str = "data/interim/metadata.parquet"


def training_dataset(metadata: pd.DataFrame, source: str, target: str):
    """The clips a model was trained on as an MLflow dataset (digest: ids + decoded-sample hashes)."""
    import mlflow.data

    columns = [c for c in ("utterance_id", "corpus", "speaker", "gender", "emotion", "pcm_sha256") if c in metadata]
    with warnings.catch_warnings():
        # MLflow registers its local-file source class twice and says so for every local path.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return mlflow.data.from_pandas(metadata[columns].reset_index(drop=True), source=source, name="metadata",
                                       targets=target if target in columns else None, digest=data_hash(metadata))


class TrainingRun:
    """MLflow side of ``ser.training.train.train``: a no-op without settings."""

    def __init__(self, settings: RunSettings | None, metadata: pd.DataFrame, tags: dict[str, Any], target: str):
        self.settings = settings
        self.metadata = metadata
        self.tags = tags
        self.target = target
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def parent(self):
        if self.settings is None:
            return contextlib.nullcontext()
        import mlflow

        s = self.settings
        self.experiment_id = use_experiment(s.uri, s.experiment)
        tags = run_tags(self.metadata, {**s.tags, **self.tags})
        run = retry(lambda: mlflow.start_run(run_name=s.run_name, tags=tags))
        self.run_id = run.info.run_id
        logged = loggable_params(s.logged_params)
        retry(lambda: mlflow.log_params(logged))
        dataset = training_dataset(self.metadata, s.dataset_source, self.target)
        # Two runs of one dataset may insert its row at once (a server on PostgreSQL answers the
        # loser with a unique violation); the retry finds the row and links it.
        retry(lambda: mlflow.log_input(dataset, context="training"))
        return run

    def fold(self, fold: int):
        if self.settings is None:
            return contextlib.nullcontext()
        import mlflow

        return mlflow.start_run(run_name=f"fold-{fold}", nested=True, tags={"fold": str(fold)})

    def log_fold(self, fold_score: dict[str, float], history: dict[str, list], epochs_kept: int | None,
                 sizes: dict[str, int]) -> None:
        if self.settings is None:
            return
        import mlflow

        mlflow.log_metrics({**fold_score, **sizes, **({"best_epoch": epochs_kept} if epochs_kept and history else {})})
        for column in ("loss", "val_loss", "accuracy", "val_accuracy"):
            for step, value in enumerate(history.get(column) or []):
                if value == value:
                    mlflow.log_metric(column, float(value), step=step + 1)

    def finish(self, out: Path, bundle, input_example: np.ndarray, fold_scores: list[dict[str, float]],
               info: dict[str, Any]) -> str | None:
        if self.settings is None:
            return None
        import mlflow

        from ser.training.metrics import mean_std

        for name, spread in mean_std(fold_scores).items():
            mlflow.log_metrics({f"cv_{name}_mean": spread["mean"], f"cv_{name}_std": spread["std"]})
        mlflow.log_metrics({"cv_seconds": info["cv_seconds"]})
        mlflow.log_dict(info, "train_info.json")
        log_flavor(bundle, input_example)
        write_run_file(out, self.run_id, self.experiment_id, self.settings.experiment, self.settings.uri,
                       self.settings.registered_model)
        return self.run_id


def log_flavor(bundle, input_example: np.ndarray) -> None:
    """Log the raw estimator with its own MLflow flavor (features in, probabilities out)."""
    import mlflow
    from mlflow.models import infer_signature

    from ser.models import is_keras
    from ser.serving.pyfunc import pip_requirements

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, bundle.predict_proba(example).astype(np.float32))
    model = bundle.estimator.flavor_model
    if is_keras(bundle.model_type):
        # mlflow.keras.log_model (3.17) writes the input example before creating its folder;
        # the TensorFlow flavor logs a Keras 3 model the same way and works.
        import mlflow.tensorflow

        mlflow.tensorflow.log_model(model, name="estimator", signature=signature, input_example=example,
                                    pip_requirements=pip_requirements())
    else:
        import mlflow.sklearn
        import skops.io

        # Our own freshly fitted objects (e.g. the MLP's optimizer state) are safe to load back.
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        mlflow.sklearn.log_model(model, name="estimator", signature=signature, input_example=example,
                                 pip_requirements=pip_requirements(), skops_trusted_types=trusted)


def log_evaluation(train_dir: str | os.PathLike, summary: dict[str, Any], plots_dir: str | os.PathLike,
                   report: str, params_file: str | os.PathLike | None = None) -> None:
    """Reopen the training run (``run.json``) and add the evaluation to it."""
    import mlflow

    from ser.training.metrics import METRICS

    run = read_run_file(train_dir)
    mlflow.set_tracking_uri(run["tracking_uri"])
    metrics = {name: summary[name] for name in METRICS}
    for name in METRICS:
        metrics[f"{name}_fold_mean"] = summary["folds"][name]["mean"]
        metrics[f"{name}_fold_std"] = summary["folds"][name]["std"]
    for corpus, values in summary.get("per_corpus", {}).items():
        metrics.update({f"{corpus}_{name}": values[name] for name in METRICS})
    with retry(lambda: mlflow.start_run(run_id=run["run_id"])):
        mlflow.log_metrics(metrics)
        mlflow.set_tag("protocol", summary["protocol"])
        mlflow.set_tag("speaker_dependent", str(summary["speaker_dependent"]))
        mlflow.log_dict(summary, "evaluate.json")
        mlflow.log_text(report, "classification_report.txt")
        mlflow.log_artifacts(str(plots_dir), "plots")
        if params_file is not None and Path(params_file).is_file():
            mlflow.log_artifact(str(params_file))


def register_served_model(train_dir: str | os.PathLike, predict_params: PredictParams | dict[str, Any],
                          serve_params: ServeParams | dict[str, Any]) -> str:
    """Log the trained bundle as the audio-in served model (:mod:`ser.serving.pyfunc`) to the
    training run of ``train_dir``, with the windowing and serving settings (the ``predict`` and
    ``serve`` sections) as its ``model_config``, register it under the run's registered model
    and return the version. Apart from training: a serving setting changes this, never the
    trained model."""
    import mlflow

    from ser.serving import pyfunc

    predict_params = typed(PredictParams, predict_params)
    serve_params = typed(ServeParams, serve_params)
    run = read_run_file(train_dir)
    mlflow.set_tracking_uri(run["tracking_uri"])
    with retry(lambda: mlflow.start_run(run_id=run["run_id"])):
        logged = pyfunc.log_model(Path(train_dir) / "model", predict_params, serve_params,
                                  registered_model_name=run["registered_model"], name="audio_model")
    return str(logged.registered_model_version)


# ---- which registered version predict and serve use by default --------------------------------
def promote(uri: str, registered_model: str, version: str, alias: str = CHAMPION) -> None:
    """Point ``alias`` at ``version``: what ``models:/<name>@<alias>`` (the default of ``ser
    predict`` and ``ser serve``) loads from now on."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.get_model_version(registered_model, str(version))  # a clear error for a version that does not exist
    retry(lambda: client.set_registered_model_alias(registered_model, alias, str(version)))

