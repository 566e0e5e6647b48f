"""Which registered model ``ser predict`` and ``ser serve`` use, and loading it: a local
ModelBundle folder, a local MLflow model folder, or an MLflow model URI.

MLflow is imported inside the functions that use it: :func:`load_predictor` imports only what
resolving a model URI needs, and nothing of MLflow for a folder (a cold ``ser predict`` pays for
every import).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ser.params import PredictParams, typed

if TYPE_CHECKING:
    from ser.serving.predict import Predictor


# ---- which registered version predict and serve use by default --------------------------------
CHAMPION = "champion"
# The evaluate metrics shown beside a model version (page, /health, `ser promote`).
SHOWN_METRICS = ("uar", "accuracy", "macro_f1", "ravdess_uar", "tess_uar", "savee_uar")


def model_version_info(uri: str, model_uri: str) -> dict[str, Any] | None:
    """Version, run, alias and evaluate metrics of a ``models:/name/<version>`` or
    ``models:/name@alias`` URI; None for anything else (a folder, a runs:/ URI)."""
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        return None
    name, _, ref = model_uri[len("models:/"):].partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
    else:
        alias = None
    client = MlflowClient(tracking_uri=uri)
    if alias is not None:
        version = client.get_model_version_by_alias(name, alias)
    elif ref.isdigit():
        version = client.get_model_version(name, ref)
    else:
        return None
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    return {"uri": model_uri, "name": name, "version": str(version.version), "run_id": version.run_id,
            "aliases": list(version.aliases), "metrics": {k: metrics[k] for k in SHOWN_METRICS if k in metrics}}


# ---- loading the served model for ser predict / ser serve ------------------------------------------
AUDIO_MODEL_CLASS = ("ser.serving.pyfunc", "AudioEmotionModel")  # module and name of the served model
BUNDLE_ARTIFACT = "bundle"  # the logged audio model's artifact holding its ModelBundle (ser.serving.pyfunc)
PYTHON_MODEL_LOADER = "mlflow.pyfunc.model"  # the MLmodel loader_module of a PythonModel (pickled)


def load_predictor(model: str | os.PathLike | None, *, tracking_uri: str, registered_model: str,
                   predict_params: PredictParams | dict[str, Any]) -> tuple[Predictor, str]:
    """A Predictor and a description of where it came from.

    ``model`` is a local ModelBundle folder (windowed by ``predict_params``, the ``predict:``
    section), a local MLflow model folder, or an MLflow model URI resolved against
    ``tracking_uri``; ``None`` means the version of ``registered_model`` that the ``champion``
    alias names there (set by ``dvc repro`` of the committed params or by ``ser promote``;
    experiments never move it).

    A logged model gives the Predictor that ``mlflow.pyfunc.load_model(...).unwrap_python_model()``
    holds (its own windowing, its bundle artifact), read without MLflow's pyfunc machinery (see
    :func:`logged_predictor`): a cold ``ser predict`` imports neither ``mlflow.pyfunc`` nor, for a
    folder, MLflow at all.
    """
    from ser.serving.predict import load_bundle_predictor

    predict_params = typed(PredictParams, predict_params)
    if model is not None and Path(model).is_dir():
        folder = Path(model)
        if (folder / "bundle.json").is_file():
            return load_bundle_predictor(folder, predict_params), f"bundle {folder}"
        if (folder / "MLmodel").is_file():
            return logged_predictor(folder), f"MLflow model {folder}"
        raise ValueError(f"{folder}: neither an MLflow model folder (no MLmodel) nor a model bundle (no bundle.json)")
    uri = str(model) if model is not None else f"models:/{registered_model}@{CHAMPION}"
    known = _resolved_folder(tracking_uri, uri)
    if known is not None:
        return logged_predictor(known), f"MLflow model {uri}"
    import mlflow
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # models:/ and runs:/ URIs resolve against the project's store
    try:
        # What mlflow.pyfunc.load_model does first: the model's folder (a local store's own, in place).
        folder = download_artifacts(artifact_uri=uri)
        predictor = logged_predictor(folder)
        _remember_folder(tracking_uri, uri, folder)
    except MlflowException as exc:
        hint = (f"`dvc repro` on the committed params registers and promotes one to @{CHAMPION}, "
                f"`ser promote VERSION` promotes an existing version" if model is None else "check the URI")
        raise ValueError(f"cannot load model '{uri}' from {tracking_uri}: {exc.message}. {hint}, "
                         "or pass --model") from None
    finally:
        mlflow.set_tracking_uri(previous)
    return predictor, f"MLflow model {uri}"


# ---- where a model URI of a local SQLite store led, while the store is unchanged -----------------
# Importing MLflow and opening its store take about two of the three seconds a cold `ser predict`
# may take; the answer (the folder the alias names) only changes when the database file does.
def _store_state(tracking_uri: str) -> list | None:
    """Size and modification time of a ``sqlite:///`` store's files (None for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri[len("sqlite:///"):])
    state = []
    for path in (database, database.with_name(database.name + "-wal")):
        if path.exists():
            facts = path.stat()
            state.append([str(path), facts.st_size, facts.st_mtime_ns])
    return state or None


def _resolved_file() -> Path:
    from ser.features.whisper import cache_home

    return cache_home() / "resolved-models.json"


def _resolved_folder(tracking_uri: str, uri: str) -> Path | None:
    state = _store_state(tracking_uri)
    if state is None or not uri.startswith(("models:/", "runs:/")):
        return None
    try:
        known = json.loads(_resolved_file().read_text(encoding="utf-8")).get(f"{tracking_uri} {uri}")
    except (OSError, ValueError):
        return None
    if not known or known.get("store") != state or not (Path(known["folder"]) / "MLmodel").is_file():
        return None
    return Path(known["folder"])


def _remember_folder(tracking_uri: str, uri: str, folder: str | os.PathLike) -> None:
    state = _store_state(tracking_uri)
    if state is None or not (Path(folder) / "MLmodel").is_file():
        return
    target = _resolved_file()
    try:
        entries = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[f"{tracking_uri} {uri}"] = {"folder": str(Path(folder).resolve()), "store": state}
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}")
    scratch.write_text(json.dumps(entries, indent=2), encoding="utf-8")
    os.replace(scratch, target)  # readers see the old file or the new one, never half of one


def logged_predictor(folder: str | os.PathLike) -> Predictor:
    """The Predictor of a logged audio model (``ser.serving.pyfunc.log_model``) in a local folder.

    ``AudioEmotionModel.load_context`` builds it from two things: the windowing in the model's
    ``model_config`` (``config`` in ``MLmodel``; older models pickled it in ``python_model.pkl``) and the
    ``bundle`` artifact. Both are read here directly, the pickle by :func:`_unpickle_inert`, which
    imports no class and runs no code. Any other model (another
    PythonModel, models-from-code, a compressed pickle, pickles disallowed by
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``) goes through ``mlflow.pyfunc.load_model`` as before,
    with its errors.
    """
    settings = _audio_model_settings(Path(folder))
    if settings is None:
        import mlflow.pyfunc

        return predictor_of(mlflow.pyfunc.load_model(str(folder)))
    from ser.serving.predict import Predictor

    bundle_dir, window_s, hop_s = settings
    return Predictor.from_bundle_dir(bundle_dir, window_s=window_s, hop_s=hop_s)


class _LoggedAudioModel:
    """What unpickling a ``ser.serving.pyfunc.AudioEmotionModel`` gives here: its attributes, no behaviour."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _Inert:
    """Stands for every other class or function a pickle names: built, given state, never run."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _unpickle_inert(path: Path) -> Any:
    """Unpickle ``path`` importing and calling nothing it names: a ``ser.serving.pyfunc.AudioEmotionModel``
    becomes a :class:`_LoggedAudioModel`, anything else (MLflow's type-hint record, pandas
    classes...) an :class:`_Inert`."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return _LoggedAudioModel if (module, name) == AUDIO_MODEL_CLASS else _Inert

    with path.open("rb") as handle:
        return Unpickler(handle).load()


def _audio_model_settings(folder: Path) -> tuple[Path, float, float] | None:
    """``(bundle folder, window_s, hop_s)`` of a logged AudioEmotionModel; None for anything else."""
    import yaml

    if os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true").strip().lower() not in ("true", "1"):
        return None  # MLflow refuses such models; let it say so
    try:
        description = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8")) or {}
        conf = description.get("flavors", {}).get("python_function") or {}
        bundle = (conf.get("artifacts") or {}).get(BUNDLE_ARTIFACT) or {}
        if (conf.get("loader_module") != PYTHON_MODEL_LOADER or not conf.get("python_model")
                or conf.get("python_model_compression") or conf.get("model_code_path") or not bundle.get("path")):
            return None
        model = _unpickle_inert(folder / conf["python_model"])
    except Exception:  # unreadable or unexpected: MLflow's own loader says what is wrong
        return None
    # Settings from the model_config (the pickle then holds none); older models pickled them.
    settings = {**vars(model), **(conf.get("config") or {})} if isinstance(model, _LoggedAudioModel) else {}
    if not {"window_s", "hop_s"} <= set(settings):
        return None
    return folder / bundle["path"], settings["window_s"], settings["hop_s"]


def predictor_of(loaded) -> Predictor:
    """The Predictor inside a model ``mlflow.pyfunc.load_model`` loaded (ser's AudioEmotionModel,
    known by name so that loading a folder does not import :mod:`ser.serving.pyfunc`)."""
    python_model = loaded.unwrap_python_model()
    kind = type(python_model)
    if (kind.__module__, kind.__name__) != AUDIO_MODEL_CLASS:
        raise ValueError(f"the model is a {kind.__name__}, not ser's AudioEmotionModel")
    return python_model.ready()
