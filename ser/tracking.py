"""MLflow tracking: where runs go, what every run is tagged with, and reopening a run.

The store is ``sqlite:///<repo root>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` is set.
``ser.config.repo_root()`` honours ``DVC_ROOT``, which DVC points at the main work tree even
for ``dvc exp run --temp`` / ``--queue`` workers, so queued experiments land in the same store
(and the same ``mlartifacts/`` folder) instead of a temporary copy that is then deleted.

Two queue workers may touch the SQLite store at the same moment; store set-up and the first
writes are retried on "database is locked" and on the experiment being created concurrently.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from ser.config import flatten, repo_root

T = TypeVar("T")
RUN_FILE = "run.json"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_location(uri: str | None = None) -> str | None:
    """``mlartifacts/`` beside a SQLite store (absolute, so runs from temporary DVC work trees
    keep their artifacts); None (MLflow's default) for other stores."""
    uri = uri or tracking_uri()
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


def use_experiment(name: str) -> str:
    """Point mlflow at the project store and at experiment ``name`` (created if missing)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())

    def get_or_create() -> str:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            return mlflow.create_experiment(name, artifact_location=artifact_location())
        return experiment.experiment_id

    uri = tracking_uri()
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
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    if metadata is not None:
        tags["data_hash"] = data_hash(metadata)
    for key, value in (extra or {}).items():
        tags[key] = str(value)
    return tags


def loggable_params(params: dict[str, Any]) -> dict[str, str]:
    # MLflow caps a param value at 6000 characters.
    return {key: str(value)[:6000] for key, value in flatten(params).items()}


def write_run_file(folder: str | os.PathLike, run_id: str, experiment_id: str, experiment: str) -> Path:
    path = Path(folder) / RUN_FILE
    path.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id, "experiment": experiment,
                                "tracking_uri": tracking_uri()}, indent=2), encoding="utf-8")
    return path


def read_run_file(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no MLflow run recorded by training")
    return json.loads(path.read_text(encoding="utf-8"))
