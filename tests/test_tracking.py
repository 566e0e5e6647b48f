"""MLflow: after a small real run (real features of generated audio), the store holds the parent
run with its params, tags, metrics and nested fold runs; evaluate adds its metrics to the same
run; the estimator (sklearn flavor) and the registered audio-in model load and predict."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ser import project
from ser.serving import loader
from ser.training import tracking
from ser.training.calibration import with_temperature
from ser.training.evaluate import evaluate
from ser.features import extract
from ser.training.train import ModelInputs, train
from tests.params_support import params as project_params, section

AUDIO = {"sample_rate": 16000, "trim_silence": False, "trim_top_db": 40, "normalize": "peak", "peak_level": 0.95,
         "loudness_lufs": -23.0, "max_seconds": 0.5}
# the whole features section (extract types it), these keys as the test sets them
FEATURES = section("features", sets=["functionals", "egemaps"], n_mfcc=13, n_mels=24, n_fbank=16, n_fft=512,
                   win_length=400, hop_length=160, contrast_fmin=100.0, contrast_bands=4)
PITCH = {"angry": 330.0, "neutral": 120.0, "sad": 200.0}


def tone(f0: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.5 * AUDIO["sample_rate"])) / AUDIO["sample_rate"]
    pitch = f0 * rng.uniform(0.95, 1.05)
    y = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in (1, 2, 3)) + 0.02 * rng.normal(size=t.size)
    return (0.9 * y / np.max(np.abs(y))).astype(np.float32)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracking")
    rng = np.random.default_rng(0)
    rows, signals = [], []
    for speaker in range(4):
        for emotion, f0 in PITCH.items():
            for take in range(3):
                rows.append({"utterance_id": f"gen_{speaker}_{emotion}_{take}", "corpus": "gen",
                             "speaker": f"gen_{speaker}", "gender": "female" if speaker % 2 else "male",
                             "emotion": emotion, "duplicate_of": None, "status": "ok",
                             "pcm_sha256": f"{speaker}{emotion}{take}"})
                signals.append(tone(f0, rng))
    metadata = pd.DataFrame(rows)
    X = np.stack([np.concatenate([(e := extract(y, AUDIO, FEATURES, ["functionals", "egemaps"]))["functionals"],
                                  e["egemaps"]]) for y in signals]).astype(np.float32)
    params = project_params(
        audio=AUDIO, features=FEATURES,
        split={"protocol": "speaker_kfold", "n_folds": 2, "val_speakers_fraction": 0.0, "seed": 0},
        train={"target": "emotion", "emotions": None, "use_augmented": False, "class_weight": "balanced",
               "speaker_norm": "none", "seed": 0},
        mlflow={"experiment": "ser-tracking-test", "registered_model": "ser-emotion-test"})
    params["model"].update({"type": "svm", "features": "auto",
                            "svm": {**params["model"]["svm"], "C": 10.0, "gamma": "scale", "input": "both"}})
    settings = tracking.RunSettings(
        uri=f"sqlite:///{folder / 'mlflow.db'}", experiment="ser-tracking-test", registered_model="ser-emotion-test",
        run_name="svm-exp-under-test", logged_params={**params, "extra": {"note": 1}},
        tags={"dvc_exp_name": "exp-under-test"})
    inputs = ModelInputs(metadata["utterance_id"].tolist(), X, [f"v{i}" for i in range(X.shape[1])])
    result = train(metadata, inputs, None, params, folder / "train", tracking=settings)
    summary, report = evaluate(folder / "train", folder / "evaluate.json", folder / "plots")
    tracking.log_evaluation(folder / "train", summary, folder / "plots", report)
    version = tracking.register_served_model(folder / "train", params["predict"], params["serve"])
    yield result, folder, params, version


def test_store_holds_the_run_params_tags_metrics_and_folds(tracked_run):
    result, folder, params, version = tracked_run
    assert tracking.read_run_file(folder / "train")["run_id"] == result.run_id
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.data.params["model.type"] == "svm" and run.data.params["extra.note"] == "1"
    assert run.data.params["features.sets"] == '["functionals", "egemaps"]'
    assert run.data.tags["dvc_exp_name"] == "exp-under-test"
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"]) and len(run.data.tags["data_hash"]) == 16
    for name in ("cv_uar_mean", "cv_accuracy_std", "uar", "accuracy", "macro_f1", "uar_fold_mean"):
        assert name in run.data.metrics, name
    assert run.data.metrics["uar"] > 0.9  # three well-separated pitches
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(c.data.tags["fold"] for c in children) == ["0", "1"]
    assert all("uar" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"plots", "classification_report.txt", "evaluate.json", "train_info.json"} <= artifacts


def test_the_experiment_opens_on_training_runs_and_each_run_names_its_dataset(tracked_run):
    result, folder, params, version = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "metadata"
    assert inputs[0].dataset.digest == run.data.tags["data_hash"]
    assert {tag.key: tag.value for tag in inputs[0].tags}["mlflow.data.context"] == "training"


def test_logged_estimator_and_registered_audio_model_load_and_predict(tracked_run):
    result, folder, params, version = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    logged = {m.name: m for m in client.search_logged_models([client.get_run(result.run_id).info.experiment_id])}
    assert {"estimator", "audio_model"} <= set(logged)
    estimator = mlflow.sklearn.load_model(f"models:/{logged['estimator'].model_id}")
    bundle = result.bundle
    rng = np.random.default_rng(9)
    signals = [tone(PITCH[e], rng) for e in ("angry", "neutral", "sad")]
    inputs = bundle.inputs_from_signals(signals)
    # The logged estimator is the raw classifier; the bundle rescales it by the fitted temperature.
    assert bundle.temperature != 1.0
    np.testing.assert_allclose(with_temperature(estimator.predict_proba(inputs), bundle.temperature),
                               bundle.predict_proba(inputs), atol=1e-6)
    info = mlflow.models.get_model_info(f"models:/{logged['estimator'].model_id}")
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, inputs.shape[1]]
    assert info.saved_input_example_info is not None

    versions = client.search_model_versions("name = 'ser-emotion-test'")
    assert len(versions) == 1 and versions[0].run_id == result.run_id
    served = mlflow.pyfunc.load_model("models:/ser-emotion-test/latest")
    clips = []
    for y in signals:
        buffer = io.BytesIO()
        sf.write(buffer, y, AUDIO["sample_rate"], format="WAV")
        clips.append(buffer.getvalue())
    predicted = served.predict(pd.DataFrame({"audio": clips}))
    assert list(predicted["label"]) == ["angry", "neutral", "sad"]


def test_tracking_uri_defaults_to_the_repo_store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert project.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.artifact_location(project.tracking_uri()) == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert project.tracking_uri() == "http://tracking.example:5000"
    assert tracking.artifact_location(project.tracking_uri()) is None


def test_the_champion_alias_names_the_default_model(tracked_run):
    from ser.serving.loader import load_predictor

    result, folder, params, version = tracked_run
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    run = tracking.read_run_file(folder / "train")
    assert run["registered_model"] == "ser-emotion-test" and version == "1"
    with pytest.raises(ValueError, match="@champion.*ser promote"):
        load_predictor(None, tracking_uri=uri, registered_model="ser-emotion-test", predict_params=params["predict"])
    tracking.promote(uri, "ser-emotion-test", version)
    predictor, description = load_predictor(None, tracking_uri=uri, registered_model="ser-emotion-test",
                                            predict_params=params["predict"])
    assert description == "MLflow model models:/ser-emotion-test@champion" and predictor.classes == result.classes
    info = loader.model_version_info(uri, "models:/ser-emotion-test@champion")
    assert info["version"] == "1" and info["run_id"] == result.run_id and info["aliases"] == ["champion"]
    assert info["metrics"]["uar"] == pytest.approx(json.loads((folder / "evaluate.json").read_text())["uar"])
    with pytest.raises(MlflowException, match=r"Model Version \(name=ser-emotion-test, version=7\) not found"):
        tracking.promote(uri, "ser-emotion-test", "7")


def test_ser_promote_moves_an_alias_and_explains_a_missing_version(tracked_run, tmp_path):
    """The ``ser promote`` command (an alias of its own, so the @champion test is unaffected)."""
    result, folder, params, version = tracked_run
    project_dir = tmp_path / "project"
    project_dir.mkdir()
    text = (project.repo_root(Path(__file__).parent) / "params.yaml").read_text()
    assert "  registered_model: ser-emotion\n" in text
    (project_dir / "params.yaml").write_text(text.replace("  registered_model: ser-emotion\n",
                                                          "  registered_model: ser-emotion-test\n"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DVC_ROOT": str(project_dir), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "ser", "promote"]

    moved = subprocess.run([*command, "1", "--alias", "staging"], cwd=project_dir, env=env, capture_output=True,
                           text=True, timeout=300)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.startswith(f"ser-emotion-test version 1 (run {result.run_id}) is now @staging")
    assert loader.model_version_info(uri, "models:/ser-emotion-test@staging")["version"] == "1"
    missing = subprocess.run([*command, "9", "--alias", "staging"], cwd=project_dir, env=env, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith("ser promote: ") and "version=9" in missing.stderr


def test_git_commit_is_the_head_of_the_repository_or_unknown(tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "file.txt").write_text("x")
    for command in (["git", "init", "-q"], ["git", "add", "file.txt"], ["git", "commit", "-q", "-m", "one"]):
        subprocess.run(command, cwd=repo, env=env, check=True)
    head = (repo / ".git" / "refs" / "heads").iterdir().__next__().read_text().strip()  # what git wrote
    assert tracking.git_commit(repo) == head and re.fullmatch(r"[0-9a-f]{40}", head)
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    assert tracking.git_commit(elsewhere) == "unknown"
