"""``dvc exp run -S model.type=mlp`` on a tiny params set: a scratch git + DVC repository holding
the project's code, its real train/evaluate stages (taken from dvc.yaml) and generated inputs
in the documented layout. The experiment must show its metrics in ``dvc exp show`` and its run,
tagged with the experiment name, in the repository's MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.test_train_eval import generated_metadata, write_generated_project_data

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("train", "crosscorpus", "evaluate")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def scratch_project(root: Path) -> None:
    shutil.copytree(REPO_ROOT / "ser", root / "ser", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "stages").mkdir()
    for stage in STAGES:
        shutil.copy(REPO_ROOT / "stages" / f"{stage}.py", root / "stages" / f"{stage}.py")
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: pipeline["stages"][s] for s in STAGES}}))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["split"].update(n_folds=3, val_speakers_fraction=0.2)
    params["model"]["mlp"].update(hidden_layer_sizes=[16], max_iter=10)
    params["model"]["svm"].update(C=1.0)
    for family in ("logreg", "svm", "mlp", "random_forest", "decision_tree"):
        params["model"][family].update(input="both")  # the generated data has functionals + eGeMAPS only
    params["mlflow"].update(experiment="ser-exp-test", registered_model="ser-emotion-exp-test")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/data/*\n/mlflow.db\n/mlartifacts/\n")
    write_generated_project_data(root, generated_metadata((("ravdess", 6, 8), ("tess", 2, 16))))


@pytest.mark.slow
def test_dvc_exp_run_records_metrics_and_mlflow_run(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    scratch_project(root)
    env = {**os.environ, "PYTHONPATH": str(root), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "scratch"], root, env)

    # The pipeline of main (dvc repro of the committed params) names the default model ...
    run(["dvc", "repro"], root, env)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("ser-emotion-exp-test", "champion")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "pipeline outputs"], root, env)

    run(["dvc", "exp", "run", "-n", "tiny-mlp", "-S", "model.type=mlp"], root, env)
    # ... and an experiment registers a version without moving it.
    versions = client.search_model_versions("name = 'ser-emotion-exp-test'")
    assert len(versions) == 2
    assert client.get_model_version_by_alias("ser-emotion-exp-test", "champion").version == champion.version

    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    experiments = [e for commit in shown for e in (commit.get("experiments") or [])]
    runs = [r for e in experiments for r in e.get("revs", []) if r.get("name") == "tiny-mlp"]
    assert runs, f"experiment tiny-mlp not in dvc exp show: {json.dumps(shown)[:2000]}"
    data = runs[0]["data"]
    metrics = data["metrics"]["metrics/evaluate.json"]["data"]
    assert 0.0 <= metrics["uar"] <= 1.0 and metrics["protocol"] == "speaker_kfold"
    assert data["params"]["params.yaml"]["data"]["model"]["type"] == "mlp"

    experiment = client.get_experiment_by_name("ser-exp-test")
    parents = client.search_runs([experiment.experiment_id], "tags.dvc_exp_name = 'tiny-mlp'")
    parents = [r for r in parents if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    assert parents[0].data.params["model.type"] == "mlp"
    assert parents[0].data.metrics["uar"] == pytest.approx(metrics["uar"])
    assert (root / "mlartifacts").is_dir()


# ---- CI metric gate ------------------------------------------------------------------------------
def test_gate_check_tolerances_and_floors():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from gate import check

    thresholds = {"tolerance": {"uar": 0.01, "per_corpus.ravdess.uar": 0.02}, "minimum": {"per_corpus.ravdess.uar": 0.55}}
    committed = {"protocol": "speaker_kfold", "uar": 0.60, "per_corpus": {"ravdess": {"uar": 0.58}}}
    assert check(committed, committed, thresholds) == []
    within = {"protocol": "speaker_kfold", "uar": 0.595, "per_corpus": {"ravdess": {"uar": 0.565}}}
    assert check(within, committed, thresholds) == []
    dropped = {"protocol": "speaker_kfold", "uar": 0.58, "per_corpus": {"ravdess": {"uar": 0.57}}}
    assert [f.split(":")[0] for f in check(dropped, committed, thresholds)] == ["uar"]
    under_floor = {"protocol": "speaker_kfold", "uar": 0.60, "per_corpus": {"ravdess": {"uar": 0.54}}}
    assert any("floor" in f for f in check(under_floor, None, thresholds))
    assert any("protocol changed" in f for f in check({**committed, "protocol": "random"}, committed, thresholds))
    assert any("missing" in f for f in check({"protocol": "speaker_kfold", "uar": 0.6}, committed, thresholds))


def test_gate_exit_status_against_the_committed_metrics(tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    (tmp_path / "metrics").mkdir()
    shutil.copy(REPO_ROOT / "metrics" / "thresholds.yaml", tmp_path / "metrics" / "thresholds.yaml")
    committed = {"protocol": "speaker_kfold", "uar": 0.72, "accuracy": 0.72, "macro_f1": 0.72,
                 "folds": {"uar": {"mean": 0.72}},
                 "per_corpus": {"ravdess": {"uar": 0.70}, "tess": {"uar": 0.74}, "savee": {"uar": 0.72},
                                "emovo": {"uar": 0.62}, "eyase": {"uar": 0.64}}}
    metrics = tmp_path / "metrics" / "evaluate.json"
    metrics.write_text(json.dumps(committed))
    loco = {"protocol": "leave_one_corpus_out", "headline": {"mean_uar": 0.60}}
    loco_metrics = tmp_path / "metrics" / "cross_corpus.json"
    loco_metrics.write_text(json.dumps(loco))
    run(["git", "init", "-q"], tmp_path, env)
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "-q", "-m", "baseline"], tmp_path, env)
    gate = [sys.executable, str(REPO_ROOT / "tools" / "gate.py"), "--no-repro"]
    assert subprocess.run(gate, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    metrics.write_text(json.dumps({**committed, "uar": 0.67}))
    failed = subprocess.run(gate, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and "uar: 0.6700 < committed 0.7200" in failed.stderr
    # the leave-one-corpus-out figure is gated too, against its own committed value
    metrics.write_text(json.dumps(committed))
    loco_metrics.write_text(json.dumps({**loco, "headline": {"mean_uar": 0.56}}))
    failed = subprocess.run(gate, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    # CI's path runs `dvc repro` first: a pipeline that does not reproduce fails the gate with 2
    # (here a repository that is not a DVC project)
    unreproducible = subprocess.run(gate[:-1], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert unreproducible.returncode == 2 and "gate: FAIL: dvc repro failed" in unreproducible.stderr
    assert "metrics/cross_corpus.json: headline.mean_uar: 0.5600 < committed 0.6000" in failed.stderr
    loco_metrics.unlink()
    failed = subprocess.run(gate, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and "metrics/cross_corpus.json was not produced" in failed.stderr
