"""``ser tune`` on real clips: a scratch project (six RAVDESS actors through the real harmonize and
features code, eGeMAPS only) searched by a real local Ray with Optuna. The trials must be nested
MLflow runs of one parent with their values and fold scores, score on the train stage's folds
(the trial of the current values equals ``train``'s cross-validation), follow the seeded
sampler, and the best must come out as a params fragment and ``-S`` overrides that DVC's own
override code applies to a params.yaml that still validates. Ray must leave no process behind.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ser.params import ParamsError, validate
from ser.training.tune import check_space, current_point, optuna_space, override_value
from tests.params_support import PARAMS

REPO = Path(__file__).resolve().parents[1]
ACTORS = range(1, 7)  # 3 female, 3 male: 3 speaker-independent folds of 2 actors
N_FOLDS = 3
SPACE = {"C": {"loguniform": [0.001, 1.0]}}


def tune_project_params() -> dict:
    params = copy.deepcopy(PARAMS)
    params["data"]["corpora"] = ["ravdess"]
    params["features"].update(sets=["egemaps"], cache_dir=None)
    params["split"].update(n_folds=N_FOLDS)
    params["train"].update(use_augmented=False)
    params["model"].update(type="logreg", features="auto")
    params["model"]["logreg"].update(C=0.1, input="egemaps")
    params["mlflow"].update(experiment="ser-tune-test-train", registered_model="ser-tune-test")
    params["tune"].update(model_type=None, num_samples=2, max_concurrent=2, cpus_per_trial=1, num_cpus=2, seed=7,
                          metric="uar", include_current=True, scheduler="fifo", experiment="ser-tune-test",
                          space={**params["tune"]["space"], "logreg": SPACE})
    return params


@pytest.fixture(scope="module")
def project(real_mirror, tmp_path_factory) -> Path:
    """A project folder with params.yaml, data/interim/metadata.parquet and data/features from
    the real harmonize and features code on six RAVDESS actors (360 clips)."""
    from ser.features import compute_features
    from ser.data.harmonize import harmonize

    root = tmp_path_factory.mktemp("tune_project")
    for actor in ACTORS:
        folder = root / "data" / "raw" / "ravdess" / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for clip in sorted((real_mirror / "ravdess" / f"Actor_{actor:02d}").iterdir()):
            (folder / clip.name).symlink_to(clip)
    params = tune_project_params()
    metadata = harmonize(root / "data" / "raw", ["ravdess"], params["data"], root=root)
    (root / "data" / "interim").mkdir(parents=True)
    metadata.to_parquet(root / "data" / "interim" / "metadata.parquet", index=False)
    compute_features(metadata, root / "data" / "features", params["audio"], params["features"], root=root,
                     progress=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def session_members(session: int) -> list[int]:
    """Processes whose session is ``session``: what a process started with start_new_session
    left behind (Ray's GCS, raylet and workers inherit it; their titles say nothing)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:
                members.append(int(entry.name))
    return members


def kill_session(session: int) -> list[int]:
    """SIGKILL what is left of a session; returns the pids that were still there."""
    time.sleep(0.5)  # let exiting children go
    left = session_members(session)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def ser_tune(project: Path, *args: str, **extra_env: str) -> dict:
    """``python -m ser tune ARGS`` in ``project``: exit code, output and the processes it left
    behind (killed here, reported to the test)."""
    scratch = tempfile.mkdtemp(prefix="st-", dir="/tmp")  # short: Ray's socket paths live under TMPDIR
    env = {**os.environ, "TMPDIR": scratch, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        env.pop(name, None)
    env.update(extra_env)
    process = subprocess.Popen([sys.executable, "-m", "ser", "tune", *args], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    finally:
        left = kill_session(process.pid)
        shutil.rmtree(scratch, ignore_errors=True)
    return {"code": process.returncode, "stdout": stdout, "stderr": stderr, "left": left}


@pytest.fixture(scope="module")
def tuned(project):
    """``ser tune --num-samples 3`` (params.yaml says 2) on a local Ray."""
    return ser_tune(project, "--num-samples", "3")


def trial_runs(project: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ser-tune-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags),
                      key=lambda r: int(r.data.tags["trial_index"]))
    return client, parents, children


def test_ser_tune_runs_and_leaves_no_ray_behind(tuned):
    assert tuned["code"] == 0, f"ser tune failed:\n{tuned['stdout'][-3000:]}\n{tuned['stderr'][-5000:]}"
    assert tuned["left"] == [], f"Ray processes left running: {tuned['left']}"
    assert "best: trial" in tuned["stdout"] and "dvc exp run -S model.type=logreg -S model.logreg.C=" in tuned["stdout"]
    assert "tune logreg" in tuned["stderr"]  # the progress bar, in folds
    # Quiet otherwise: none of Tune's own status tables or Ray's start-up chatter.
    for chatter in ("Trial status", "View detailed results", "Started a local Ray instance", "Token authentication"):
        assert chatter not in tuned["stdout"] + tuned["stderr"]


def test_trials_are_nested_mlflow_runs_scored_on_the_train_folds(tuned, project):
    from ser.training.train import load_training_inputs, train

    assert tuned["code"] == 0, tuned["stderr"][-3000:]
    client, parents, children = trial_runs(project)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "tune"
    assert parent.data.params["tune.num_samples"] == "3"  # what the search ran with: the flag, not the file's 2
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    for child in children:
        assert child.info.status == "FINISHED" and child.data.params["model.type"] == "logreg"
        assert 0.0 < child.data.metrics["cv_uar_mean"] <= 1.0 and child.data.metrics["folds_done"] == N_FOLDS
        history = client.get_metric_history(child.info.run_id, "fold_uar")
        assert sorted(m.step for m in history) == [1, 2, 3]
        assert child.data.metrics["cv_uar_mean"] == pytest.approx(np.mean([m.value for m in history]))

    # Trial 0 holds the current values (include_current): the train stage's cross-validation of
    # the same params, folds and seed must give exactly its fold scores. With as many BLAS threads
    # as the trial had (cpus_per_trial: 1): lbfgs's sums, and so its last digits, depend on them.
    from threadpoolctl import threadpool_limits

    assert float(children[0].data.params["model.logreg.C"]) == 0.1
    params = tune_project_params()
    _, inputs, augmented = load_training_inputs(project / "data" / "features", project / "data" / "augmented",
                                                params["model"], params["train"])
    metadata = pd.read_parquet(project / "data" / "interim" / "metadata.parquet")
    with threadpool_limits(params["tune"]["cpus_per_trial"]):
        trained = train(metadata, inputs, augmented, params, project / "unused", fit_final_model=False)
    history = client.get_metric_history(children[0].info.run_id, "fold_uar")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [f["uar"] for f in trained.fold_scores], abs=1e-12)

    # The other trials are the seeded sampler's draws, in order.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=7, n_startup_trials=10))
    study.enqueue_trial({"C": 0.1})
    drawn = [study.ask(fixed_distributions=optuna_space(SPACE)).params["C"] for _ in range(3)]
    assert [float(c.data.params["model.logreg.C"]) for c in children] == drawn


def test_the_best_params_apply_with_dvc_exp_run(tuned, project, tmp_path):
    from dvc.utils.hydra import apply_overrides

    assert tuned["code"] == 0, tuned["stderr"][-3000:]
    _, parents, children = trial_runs(project)
    best = max(children, key=lambda c: (c.data.metrics["cv_uar_mean"], -int(c.data.tags["trial_index"])))
    assert parents[0].data.tags["best_run_id"] == best.info.run_id

    fragment = yaml.safe_load((project / "metrics" / "tune_best.yaml").read_text())
    assert fragment == {"model": {"type": "logreg", "logreg": {"C": float(best.data.params["model.logreg.C"])}}}
    merged = yaml.safe_load((project / "params.yaml").read_text())
    merged["model"]["logreg"].update(fragment["model"]["logreg"])
    validate(merged, "params.yaml + tune_best.yaml")

    # What `dvc exp run $(cat metrics/tune_best.args)` does to params.yaml, by DVC's own code.
    words = (project / "metrics" / "tune_best.args").read_text().split()
    assert words[::2] == ["-S"] * (len(words) // 2)
    applied = tmp_path / "params.yaml"
    shutil.copy(project / "params.yaml", applied)
    apply_overrides(applied, words[1::2])
    assert validate(yaml.safe_load(applied.read_text())).as_dict() == merged

    # And the documented command itself, in a scratch DVC repository whose one stage reads `model`.
    scratch = tmp_path / "exp"
    (scratch / "metrics").mkdir(parents=True)
    shutil.copy(project / "params.yaml", scratch / "params.yaml")
    shutil.copy(project / "metrics" / "tune_best.args", scratch / "metrics" / "tune_best.args")
    dump = "import yaml; yaml.safe_dump(yaml.safe_load(open('params.yaml'))['model'], open('model.yaml', 'w'))"
    (scratch / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"model": {"cmd": f'python -c "{dump}"', "params": ["model"], "outs": ["model.yaml"]}}}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for name in ("DVC_ROOT", "DVC_EXP_NAME"):
        env.pop(name, None)
    script = ("git init -q && dvc init -q && git add -A && git commit -qm base && "
              "dvc exp run $(cat metrics/tune_best.args)")
    done = subprocess.run(["bash", "-c", script], cwd=scratch, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert yaml.safe_load((scratch / "model.yaml").read_text()) == merged["model"]
    validate(yaml.safe_load((scratch / "params.yaml").read_text()), "params.yaml after dvc exp run")


# ---- without Ray -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.1, 1e-05, 3.0e-3, 300, None, True, "sqrt", "log2", [256, 128], [64], 0.3,
                                   "null", "1e3", "whisper+egemaps"])
def test_override_values_parse_back_as_dvc_reads_them(value):
    from dvc.utils.hydra import to_hydra_overrides

    (override,) = to_hydra_overrides([f"model.x.key={override_value(value)}"])
    assert override.value() == value and type(override.value()) is type(value)
    assert " " not in override_value(value)


def test_the_schema_refuses_keys_a_model_does_not_have():
    params = copy.deepcopy(PARAMS)
    params["tune"]["space"]["svm"] = {"gama": {"loguniform": [1e-5, 1e-2]}, "input": {"choice": ["both"]}}
    params["tune"]["space"]["nope"] = {"C": {"uniform": [0.0, 1.0]}}
    with pytest.raises(ParamsError) as caught:
        validate(params, "params.yaml")
    message = str(caught.value)
    assert "space.svm.gama: model.svm has no key 'gama'" in message and "space.svm.input" in message
    assert "space.nope: unknown model type" in message
    params = copy.deepcopy(PARAMS)
    params["tune"]["space"]["logreg"] = {"C": {"loguniform": [0.0, 1.0]}}
    with pytest.raises(ParamsError, match=r"tune\.space\.logreg\.C.*0 < low < high"):
        validate(params, "params.yaml")


def test_a_draw_the_model_would_refuse_fails_before_any_trial():
    params = copy.deepcopy(PARAMS)
    params["tune"]["space"]["random_forest"] = {"n_estimators": {"uniform": [100.0, 600.0]}}
    with pytest.raises(ParamsError, match=r"tune\.space\.random_forest\.n_estimators: uniform can draw 350\.5"):
        check_space(params, "random_forest")
    with pytest.raises(ParamsError, match=r"tune\.space\.cnn1d: no search space"):
        check_space(params, "cnn1d")


def test_every_shipped_space_draws_valid_params_and_holds_the_current_values():
    """Each family's space in params.yaml: its draws validate, and trial 0 can be today's values."""
    for model_type in PARAMS["tune"]["space"]:
        space = check_space(PARAMS, model_type)
        assert current_point(PARAMS, model_type, space) is not None, model_type
    assert {"logreg", "svm", "mlp", "random_forest", "lstm"} <= set(PARAMS["tune"]["space"])


# ---- on a Ray cluster ------------------------------------------------------------------------------
@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster on loopback (``ray start --head``) in its own temp dir, killed by
    its session at the end (never ``ray stop``: that would stop every Ray on the machine)."""
    from tests.local_server import free_port

    scratch = tempfile.mkdtemp(prefix="sc-", dir="/tmp")
    port = free_port()
    # Ray's single-machine mode keeps every listener on 127.0.0.1; token auth as Ray's default.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    start = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                              "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={scratch}",
                              "--disable-usage-stats"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        output, _ = start.communicate(timeout=120)
        assert start.returncode == 0, output[-3000:]
        yield f"127.0.0.1:{port}", Path(scratch), start.pid
    finally:
        kill_session(start.pid)
        shutil.rmtree(scratch, ignore_errors=True)


def test_ser_tune_runs_the_trials_on_the_cluster_ray_address_names_and_leaves_it_up(project, ray_cluster, tmp_path):
    address, cluster_dir, session = ray_cluster
    copy_of = tmp_path / "project"  # its own metrics/ and MLflow store: the local search's stay as they are
    (copy_of / "data").mkdir(parents=True)
    for name in ("interim", "features"):
        (copy_of / "data" / name).symlink_to(project / "data" / name)
    shutil.copy(project / "params.yaml", copy_of / "params.yaml")

    result = ser_tune(copy_of, "--max-concurrent", "1", RAY_ADDRESS=address, RAY_AUTH_MODE="token")
    assert result["code"] == 0, f"ser tune failed:\n{result['stdout'][-3000:]}\n{result['stderr'][-5000:]}"
    assert f"Ray cluster {address}" in result["stdout"] and result["left"] == []
    # The trials ran on the cluster, importing the ser this checkout shipped to it ...
    assert list(cluster_dir.glob("session_*/runtime_resources/py_modules_files/*/ser/training/tune.py"))
    # ... which is still up: ser tune only disconnected from it.
    alive = [(Path("/proc") / str(pid) / "comm").read_text().strip() for pid in session_members(session)]
    assert {"gcs_server", "raylet"} <= set(alive)
    _, parents, children = trial_runs(copy_of)
    assert len(parents) == 1 and len(children) == 2
