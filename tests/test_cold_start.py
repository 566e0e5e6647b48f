"""``ser predict one.wav`` from a cold process: the answer, nothing else on stderr, and no import
the model does not need (TensorFlow for a scikit-learn model, MLflow for a bundle folder,
mlflow.pyfunc for a registered model).

The model is the default family on the default input: a logistic regression on pooled Whisper
encoder features, trained here on a few real RAVDESS clips. Wall time is not asserted (a shared
machine makes it noise): ``benchmarks/bench_cold_start.py`` measures it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.params_support import PARAMS
from tests.serve_support import fit_bundle, ravdess_clip

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Neutral and angry of three actors: enough for a model that answers, little to extract.
TINY_CLASSES = {"01": "neutral", "05": "angry"}
TINY_ACTORS = (1, 2, 3)
# Never imported to score one clip with a scikit-learn model on Whisper features.
HEAVY = ("tensorflow", "keras", "torch", "opensmile", "ray", "matplotlib")
REGISTERED = PARAMS["mlflow"]["registered_model"]  # what ser predict loads @champion without --model

# Runs ``ser predict`` as the ``ser`` command does (ser.cli.main), then writes which modules the
# process imported to the file named by argv[1]; the rest of argv are the command's arguments.
PROBE = """
import json, sys
from ser.cli import main
status = main(sys.argv[2:])
sys.stdout.flush()
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "modules": sorted(sys.modules)}, out)
"""

pytestmark = pytest.mark.mirror


def train_tiny_bundle(mirror: Path, folder: Path) -> Path:
    """A logreg ModelBundle on the ``whisper`` table of 6 real RAVDESS clips (model.logreg of
    params.yaml, the default model type and input), saved to ``folder``."""
    return fit_bundle(mirror, folder, TINY_ACTORS, TINY_CLASSES, "logreg", "whisper", PARAMS["model"]["logreg"])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user has: warnings shown (no PYTHONWARNINGS), no TensorFlow log setting."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONWARNINGS", "TF_CPP_MIN_LOG_LEVEL", "MLFLOW_TRACKING_URI")}
    env.update(extra)
    return env


def probe_predict(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    result = subprocess.run([PYTHON, "-c", PROBE, str(report), "predict", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=env or clean_env())
    assert result.returncode == 0, result.stderr
    return result, json.loads(report.read_text())


def imported(modules: list[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


@pytest.fixture(scope="module")
def tiny_bundle(real_mirror, tmp_path_factory) -> Path:
    return train_tiny_bundle(real_mirror, tmp_path_factory.mktemp("cold_start") / "bundle")


@pytest.fixture(scope="module")
def registry(tiny_bundle, tmp_path_factory) -> str:
    """A fresh MLflow store holding the tiny model, registered and promoted to @champion."""
    import mlflow

    from ser.training import tracking
    from ser.serving.pyfunc import log_model
    from tests.params_support import params as project_params

    params = project_params()
    store = tmp_path_factory.mktemp("cold_start_mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:  # an explicit experiment: the process's active one (other tests' stores) is left alone
        experiment = mlflow.create_experiment("cold-start-test", artifact_location=(store / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_model(tiny_bundle, params["predict"], params["serve"], registered_model_name=REGISTERED,
                             name="audio_model")
        tracking.promote(uri, REGISTERED, str(info.registered_model_version))
    finally:
        mlflow.set_tracking_uri(previous)
    return uri


def table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()[1:] if line.strip()]


def test_a_bundle_answers_with_nothing_on_stderr_and_without_tensorflow_or_mlflow(tiny_bundle, real_mirror,
                                                                                    tmp_path):
    clip = ravdess_clip(real_mirror, 4, "05")  # an actor the model has not seen
    result, report = probe_predict(tmp_path, str(clip), "--model", str(tiny_bundle))

    rows = table_rows(result.stdout)
    assert len(rows) == 1 and rows[0][0] == str(clip) and rows[0][1] in TINY_CLASSES.values(), result.stdout
    assert result.stderr == ""
    modules = report["modules"]
    assert not [name for name in (*HEAVY, "mlflow") if imported(modules, name)]
    # Only the scikit-learn family the bundle holds is imported, not every one of them.
    assert not [name for name in ("sklearn.ensemble", "sklearn.calibration",
                                  "sklearn.neural_network", "sklearn.tree") if imported(modules, name)]


def test_the_ser_command_itself_prints_only_the_answer(tiny_bundle, real_mirror):
    clip = ravdess_clip(real_mirror, 4, "01")
    result = subprocess.run([PYTHON, "-m", "ser", "predict", str(clip), "--model", str(tiny_bundle), "--format",
                             "json"], cwd=REPO, capture_output=True, text=True, timeout=300, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    answer = json.loads(result.stdout)
    assert [a["path"] for a in answer] == [str(clip)] and answer[0]["label"] in TINY_CLASSES.values()


def test_the_registered_default_model_loads_without_mlflow_pyfunc_and_without_warnings(tiny_bundle, registry,
                                                                                         real_mirror, tmp_path):
    """No --model: the @champion version; resolved by MLflow, read without its pyfunc machinery
    (and without its reminder about type hints); the same answer as the bundle it holds."""
    clip = ravdess_clip(real_mirror, 4, "05")
    result, report = probe_predict(tmp_path, str(clip), "--format", "json", env=clean_env(MLFLOW_TRACKING_URI=registry))
    assert result.stderr == ""
    modules = report["modules"]
    assert imported(modules, "mlflow") and not imported(modules, "mlflow.pyfunc")
    assert "ser.serving.pyfunc" not in modules
    assert not [name for name in HEAVY if imported(modules, name)]

    bundle_answer, _ = probe_predict(tmp_path, str(clip), "--format", "json", "--model", str(tiny_bundle))
    registered, direct = json.loads(result.stdout)[0], json.loads(bundle_answer.stdout)[0]
    assert registered["label"] == direct["label"]
    assert registered["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-9)

    # The store unchanged, the next call goes straight to the folder the alias named: no MLflow.
    again, report = probe_predict(tmp_path, str(clip), "--format", "json", env=clean_env(MLFLOW_TRACKING_URI=registry))
    assert not imported(report["modules"], "mlflow") and again.stderr == ""
    assert json.loads(again.stdout) == json.loads(result.stdout)
    # Any write to the store (here a tag on the registered model) sends the next call back to MLflow.
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=registry).set_registered_model_tag(REGISTERED, "reviewed", "yes")
    _, report = probe_predict(tmp_path, str(clip), "--format", "json", env=clean_env(MLFLOW_TRACKING_URI=registry))
    assert imported(report["modules"], "mlflow")


def test_the_logged_model_read_directly_is_the_one_mlflow_loads(tiny_bundle, registry, real_mirror, tmp_path):
    """Same windowing, same bundle, same probabilities as mlflow.pyfunc.load_model + unwrap; and a
    local MLflow model folder is read without importing MLflow at all."""
    import mlflow
    import mlflow.pyfunc

    from ser.serving import loader
    from ser.serving.loader import predictor_of
    from ser.serving.pyfunc import save_model
    from tests.params_support import params as project_params
    from tests.params_support import section, typed_params

    params = project_params()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry)
    try:
        expected = predictor_of(mlflow.pyfunc.load_model(f"models:/{REGISTERED}@champion"))
    finally:
        mlflow.set_tracking_uri(previous)
    predictor, description = loader.load_predictor(None, tracking_uri=registry, registered_model=REGISTERED,
                                                     predict_params=section("predict", window_s=99.0, hop_s=9.0))
    assert description == f"MLflow model models:/{REGISTERED}@champion"
    assert (predictor.window_s, predictor.hop_s) == (expected.window_s, expected.hop_s) \
        == (params["predict"]["window_s"], params["predict"]["hop_s"])  # the logged windowing, not the argument
    assert predictor.classes == expected.classes
    clip = ravdess_clip(real_mirror, 5, "05")
    got, want = predictor.predict_source(clip), expected.predict_source(clip)
    assert got.label == want.label and got.probabilities == pytest.approx(want.probabilities, abs=1e-12)

    # A local MLflow model folder (what `ser predict --model FOLDER` and the serving benchmark use).
    folder = save_model(tiny_bundle, tmp_path / "saved", {**params["predict"], "window_s": 2.5, "hop_s": 1.25},
                        params["serve"])
    result, report = probe_predict(tmp_path, str(clip), "--model", str(folder))
    assert result.stderr == "" and table_rows(result.stdout)[0][0] == str(clip)
    assert not imported(report["modules"], "mlflow")
    local, _ = loader.load_predictor(folder, tracking_uri=registry, registered_model=REGISTERED,
                                       predict_params=params["predict"])
    assert (local.window_s, local.hop_s) == (2.5, 1.25)
    # ser predict / ser serve window with this run's settings (params or flags), not the model's.
    from ser.cli import _load

    loaded, _ = _load(str(folder), typed_params(predict={"window_s": 4.0, "hop_s": 2.0}))
    assert (loaded.window_s, loaded.hop_s) == (4.0, 2.0)
    flagged, _ = _load(str(folder), typed_params(), window_s=6.0, hop_s=3.0)
    assert (flagged.window_s, flagged.hop_s) == (6.0, 3.0)


def test_models_mlflow_must_not_unpickle_go_through_mlflow(registry, monkeypatch):
    """MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false: the direct reader steps aside, MLflow refuses as it
    always did (the error names the setting)."""
    from ser.serving import loader
    from tests.params_support import section

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(Exception, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        loader.load_predictor(None, tracking_uri=registry, registered_model=REGISTERED,
                                predict_params=section("predict", window_s=3.0, hop_s=1.5))


def test_importing_the_served_model_module_warns_nothing():
    """The pyfunc's predict has type hints, so MLflow has nothing to remind us of at import."""
    result = subprocess.run([PYTHON, "-W", "default", "-c", "import ser.serving.pyfunc"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=clean_env())
    assert result.returncode == 0 and result.stderr == "", result.stderr



def test_the_encoder_runs_on_the_threads_the_predictor_asks_for(tiny_bundle, real_mirror):
    """Read back from ONNX Runtime's own sessions, as a server worker reports them."""
    from ser.serving.predict import Predictor
    from ser.serving.workers import _thread_report

    clip = ravdess_clip(real_mirror, 4, "05")
    predictor = Predictor.from_bundle_dir(tiny_bundle, window_s=3.0, hop_s=1.5).use_threads(1)
    assert predictor.bundle.features.whisper.threads == 1
    alone = predictor.predict_source(clip)
    assert 1 in _thread_report()["onnxruntime"]
    both = predictor.use_threads(2).predict_source(clip)
    assert {1, 2} <= set(_thread_report()["onnxruntime"])
    assert both.probabilities == pytest.approx(alone.probabilities, abs=1e-9)  # threads change no number
