"""Where the project is and what its environment says: for entry points only.

``stages/*.py``, ``ser.cli``, ``benchmarks/`` and ``tools/`` call this module; the rest of ``ser``
never does. The library is handed a params mapping, a folder, a tracking URI and run tags as
arguments, so it works the same inside DVC, in a notebook or in a served model.

- ``repo_root()``: ``DVC_ROOT`` when DVC runs the stage (it points at the main work tree even
  for ``dvc exp run --temp`` / ``--queue`` workers, so queued experiments share one MLflow
  store), else the nearest folder holding ``params.yaml``.
- ``tracking_uri()``: ``MLFLOW_TRACKING_URI``, else ``sqlite:///<repo root>/mlflow.db``;
  ``checked_tracking_uri()`` also asks a tracking server (``http(s)://``) once, so a server or
  database that is down, or a refused login, stops an entry point before any work with one line
  naming the URI (MLflow's client would retry for minutes, then print a traceback).
- ``experiment_tags()`` / ``run_name()``: what ``dvc exp run`` says about the experiment.
- ``builds_champion()``: whether this run is the pipeline of main (``dvc repro`` of the
  committed params, not an experiment), the only run allowed to move the ``champion`` alias.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from ser import params as schema

PARAMS_FILE = "params.yaml"


def repo_root(start: str | os.PathLike | None = None) -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    return here


def params_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path) if path is not None else repo_root() / PARAMS_FILE


def load_params(path: str | os.PathLike | None = None) -> schema.Params:
    """The project's params.yaml (or ``path``), validated against ``ser.params``."""
    return schema.load(params_path(path))


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root or repo_root()) / 'mlflow.db'}"


class TrackingUnavailable(ValueError):
    """The tracking server named by the URI cannot take runs now (down, its database down, login refused)."""


def checked_tracking_uri(root: str | os.PathLike | None = None, timeout_s: float = 10.0, uri: str | None = None) -> str:
    """:func:`tracking_uri` (or ``uri``, e.g. a training run's store from run.json), after one
    request to it when it is a server (a local store needs none).

    The request lists one experiment, so it passes through the login and reaches the database;
    credentials come from ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` (or ``_TOKEN``) as MLflow's
    client reads them."""
    named = "MLFLOW_TRACKING_URI" if uri is None else "the training run's tracking URI"
    uri = tracking_uri(root) if uri is None else uri
    if not uri.startswith(("http://", "https://")):
        return uri
    import requests

    auth, headers = None, {}
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    try:
        answer = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                              auth=auth, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        advice = ("unset MLFLOW_TRACKING_URI to use the local store" if named == "MLFLOW_TRACKING_URI"
                  else "train again against the store you mean to use")
        raise TrackingUnavailable(f"the MLflow tracking server {uri} ({named}) does not answer "
                                  f"({type(exc).__name__}); start it (make team-up) or {advice}") from None
    if answer.status_code == 401:
        raise TrackingUnavailable(f"the MLflow tracking server {uri} refused the login: set MLFLOW_TRACKING_USERNAME "
                                  "and MLFLOW_TRACKING_PASSWORD to an account on it")
    if answer.status_code == 403:
        raise TrackingUnavailable(f"the MLflow tracking server {uri} denied user "
                                  f"{os.environ.get('MLFLOW_TRACKING_USERNAME')!r} access")
    if answer.status_code != 200:
        raise TrackingUnavailable(f"the MLflow tracking server {uri} answers {answer.status_code} "
                                  f"({_first_line(answer.text)}): its database may be down (make team-up "
                                  "restarts it)")
    return uri


def _first_line(text: str, limit: int = 200) -> str:
    try:  # MLflow's errors are JSON with a message
        import json

        text = json.loads(text).get("message", text)
    except (ValueError, AttributeError):
        pass
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "no message")
    return line[:limit]


def experiment_tags() -> dict[str, str]:
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def run_name(model_type: str) -> str:
    return f"{model_type}-{os.environ.get('DVC_EXP_NAME', 'run')}"


def builds_champion(path: str | os.PathLike | None = None) -> bool:
    """True for a plain ``dvc repro`` (no ``dvc exp``) whose params file equals the committed one."""
    if os.environ.get("DVC_EXP_NAME"):
        return False
    file = params_path(path).resolve()
    try:
        root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=file.parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        committed = subprocess.run(["git", "show", f"HEAD:{file.relative_to(Path(root).resolve()).as_posix()}"],
                                   cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return yaml.safe_load(committed) == schema.read_yaml(file)
