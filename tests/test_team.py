"""The team's set-up against the real thing: PostgreSQL and MLflow's tracking server behind its
login, started by ``tools/team.py`` on loopback ports, and a shared DVC remote between two clones.

One cluster and server serve the module (started once, stopped at the end even on failure); the
tests that stop parts of it bring them back before they end.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.local_server import free_port, process_tree
from tests.serve_support import ravdess_clip, shared_bundle_dir, train_small_bundle

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PASSWORD = "team-test-password-0123"  # >= 12 characters; this test's own cluster only
TRAIN = ["stages/train.py", "--metadata", "data/interim/metadata.parquet", "--features", "data/features",
         "--augmented", "data/augmented"]


def team_module():
    spec = importlib.util.spec_from_file_location("team_tool", REPO / "tools" / "team.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class TeamServers:
    folder: Path
    url: str
    env: dict[str, str]  # what tools/team.py reads
    client_env: dict[str, str]  # what a pipeline process pointed at the server gets

    def tool(self, command: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, str(REPO / "tools" / "team.py"), command], env={**self.env, **extra},
                              capture_output=True, text=True, timeout=300)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg2

        team = team_module().Team(self.folder, self.env)
        with psycopg2.connect(team.db_uri("mlflow"), connect_timeout=10) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()

    def running_pids(self) -> list[int]:
        """Every process started for this team folder: PostgreSQL's and the MLflow server's trees."""
        found = subprocess.run(["pgrep", "-f", str(self.folder)], capture_output=True, text=True).stdout.split()
        return sorted({p.pid for pid in found for p in process_tree(int(pid))})


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SER_TEAM_", "DVC_"))}
    return {**env, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1"}


@pytest.fixture(scope="module")
def team():
    # Under /tmp, not pytest's folder: that one is closed to the unprivileged user PostgreSQL runs as.
    folder = Path(tempfile.mkdtemp(prefix="ser-team-test-"))
    port = free_port()
    env = {**base_env(), "SER_TEAM_DIR": str(folder), "SER_TEAM_PORT": str(port), "SER_TEAM_DB_PORT": str(free_port()),
           "SER_TEAM_ADMIN_PASSWORD": PASSWORD, "SER_TEAM_WORKERS": "2"}
    url = f"http://127.0.0.1:{port}"
    servers = TeamServers(folder, url, env, {**base_env(), "MLFLOW_TRACKING_URI": url,
                                             "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD})
    try:
        started = servers.tool("up")
        assert started.returncode == 0, f"team up failed:\n{started.stdout}\n{started.stderr}"
        assert f"export MLFLOW_TRACKING_URI={url}" in started.stdout and "MLFLOW_TRACKING_PASSWORD=\"$SER_TEAM_ADMIN_PASSWORD\"" in started.stdout
        yield servers
    finally:
        stopped = servers.tool("down")
        left = servers.running_pids()
        shutil.rmtree(folder, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not left, f"team down left processes running: {left}"


def scratch_project(root: Path) -> Path:
    from tests.test_experiments import scratch_project as make

    root.mkdir(parents=True)
    make(root)
    return root


def run_stage(root: Path, env: dict[str, str], *args: str, out: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, *args, "--out", out], cwd=root, env={**env, "PYTHONPATH": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- the servers ---------------------------------------------------------------------------------
def test_team_up_refuses_a_missing_or_short_password(tmp_path):
    folder = Path(tempfile.gettempdir()) / f"ser-team-refused-{os.getpid()}"
    env = {**base_env(), "SER_TEAM_DIR": str(folder), "SER_TEAM_PORT": str(free_port()),
           "SER_TEAM_DB_PORT": str(free_port()), "SER_TEAM_ADMIN_PASSWORD_FILE": str(tmp_path / "absent")}
    command = [PYTHON, str(REPO / "tools" / "team.py"), "up"]
    missing = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no admin password" in missing.stderr and "SER_TEAM_ADMIN_PASSWORD" in missing.stderr
    (tmp_path / "short").write_text("hunter2\n")
    short = subprocess.run(command, env={**env, "SER_TEAM_ADMIN_PASSWORD_FILE": str(tmp_path / "short")},
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "7 characters; at least 12" in short.stderr
    assert "hunter2" not in short.stdout + short.stderr
    port = subprocess.run(command, env={**env, "SER_TEAM_ADMIN_PASSWORD": PASSWORD, "SER_TEAM_PORT": "50x5"},
                          capture_output=True, text=True, timeout=60)
    assert port.returncode == 2 and "SER_TEAM_PORT='50x5'" in port.stderr and "Traceback" not in port.stderr
    # nothing was created or started
    assert not folder.exists()
    assert subprocess.run(["pgrep", "-f", str(folder)], capture_output=True).returncode == 1


def test_secrets_are_never_readable_by_others_and_the_folder_is_closed(tmp_path, monkeypatch):
    module = team_module()
    previous = os.umask(0)  # the widest a file could be made: the mode comes from the open itself
    try:
        team = module.Team(tmp_path / "team", {"SER_TEAM_ADMIN_PASSWORD": PASSWORD})
        monkeypatch.setattr(module.Team, "start_db", lambda self: None)
        monkeypatch.setattr(module.Team, "start_server", lambda self, password: None)
        team.up()
        assert (team.folder.stat().st_mode & 0o777) == 0o700
        secret = team.secret("db_password")
        assert len(secret) > 30 and ((team.folder / "db_password").stat().st_mode & 0o777) == 0o600
        assert team.secret("db_password") == secret
        opened = team.folder / "basic_auth.ini"
        opened.write_text("old")
        opened.chmod(0o644)
        module.write_private(opened, "new")
        assert opened.read_text() == "new" and (opened.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(previous)


def test_an_empty_pid_file_or_a_failing_step_is_one_line(tmp_path, monkeypatch, capsys):
    import psycopg2

    module = team_module()
    folder = tmp_path / "team"
    folder.mkdir()
    (folder / "mlflow.pid").write_text("")
    team = module.Team(folder, {"SER_TEAM_ADMIN_PASSWORD": PASSWORD})
    assert team.server_pid() is None
    team.stop_server()  # nothing to stop; the stale file goes
    assert not (folder / "mlflow.pid").exists()
    monkeypatch.setenv("SER_TEAM_DIR", str(folder))
    monkeypatch.setenv("SER_TEAM_ADMIN_PASSWORD", PASSWORD)
    stopped = []
    monkeypatch.setattr(module.Team, "down", lambda self: stopped.append(True))
    for error in (psycopg2.OperationalError('connection to server at "127.0.0.1", port 5433 failed:\n'
                                            "Connection refused\n"),
                  subprocess.TimeoutExpired(["pg_ctl", "start"], 90)):
        def failing(self, error=error):
            raise error

        monkeypatch.setattr(module.Team, "start_db", failing)
        assert module.main(["up"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("team up: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert type(error).__name__ in err
    assert "Connection refused" in err or "timed out after 90 seconds" in err
    assert stopped == [True, True]  # up() stopped what it had started each time


def test_evaluate_asks_the_training_runs_store_whatever_the_environment_says(tmp_path, monkeypatch):
    from ser import project

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the environment names the local store now
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(project.TrackingUnavailable, match=r"(?s)" + down + r" \(the training run's tracking URI\) "
                       "does not answer.*train again"):
        project.checked_tracking_uri(uri=down, timeout_s=2)
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert project.checked_tracking_uri(uri=local) == local
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "run.json").write_text(json.dumps({"run_id": "0" * 32, "tracking_uri": down,
                                                              "registered_model": "ser-emotion"}))
    evaluate = subprocess.run([PYTHON, str(REPO / "stages" / "evaluate.py"), "--train", str(tmp_path / "train"),
                               "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots"),
                               "--params", str(REPO / "params.yaml")], cwd=tmp_path, env=base_env(),
                              capture_output=True, text=True, timeout=120)
    assert evaluate.returncode == 1 and f"evaluate: the MLflow tracking server {down}" in evaluate.stderr
    assert "Traceback" not in evaluate.stderr and not (tmp_path / "m.json").exists()


def test_a_run_logged_through_the_server_lands_in_postgresql_and_its_artifacts_download(team, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, team.client_env[key])
    client = MlflowClient(tracking_uri=team.url)
    experiment = client.create_experiment("team-artifacts")
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "model.type", "logreg")
    client.log_metric(run.info.run_id, "uar", 0.7125)
    report = tmp_path / "report.json"
    report.write_bytes(os.urandom(4096))
    client.log_artifact(run.info.run_id, str(report), "evaluation")
    client.set_terminated(run.info.run_id)

    assert team.query("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)) == [("FINISHED",)]
    assert team.query("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'uar'", (run.info.run_id,)) == [(0.7125,)]
    assert team.query("SELECT value FROM params WHERE run_uuid = %s", (run.info.run_id,)) == [("logreg",)]
    # proxied: the client never sees the store, the server wrote the file under its artifacts folder
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list((team.folder / "artifacts").rglob("report.json"))
    assert len(stored) == 1 and stored[0].read_bytes() == report.read_bytes()
    fetched = download_artifacts(run_id=run.info.run_id, artifact_path="evaluation/report.json", tracking_uri=team.url,
                                 dst_path=str(tmp_path / "fetched"))
    assert Path(fetched).read_bytes() == report.read_bytes()


def test_no_or_wrong_credentials_get_401_and_log_nothing(team):
    def count() -> int:
        return team.query("SELECT count(*) FROM runs")[0][0]

    before = count()
    create = f"{team.url}/api/2.0/mlflow/runs/create"
    body = {"experiment_id": "0", "start_time": int(time.time() * 1000)}
    assert requests.post(create, json=body, timeout=30).status_code == 401
    assert requests.post(create, json=body, auth=("admin", "not-the-password"), timeout=30).status_code == 401
    assert requests.post(create, json=body, auth=("nobody-here", PASSWORD), timeout=30).status_code == 401
    search = f"{team.url}/api/2.0/mlflow/experiments/search?max_results=5"
    assert requests.get(search, timeout=30).status_code == 401
    assert count() == before
    # the pipeline's entry points say so in one line before any work
    root_env = {**team.client_env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    refused = subprocess.run([PYTHON, "-m", "ser", "promote", "1"], cwd=REPO, env=root_env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and f"{team.url} refused the login" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert requests.post(create, json=body, auth=("admin", PASSWORD), timeout=30).status_code == 200
    assert count() == before + 1


@pytest.mark.slow
def test_two_training_runs_in_parallel_lose_nothing(team, tmp_path):
    """Two train stages of the same params at once (as two `dvc exp run` would): both runs, each
    with its fold runs, every metric, and the same numbers, since the data and seed are the same."""
    root = scratch_project(tmp_path / "project")
    stages = [run_stage(root, {**team.client_env, "DVC_EXP_NAME": name}, *TRAIN, out=f"data/train-{name}")
              for name in ("par-a", "par-b")]
    for stage in stages:
        stdout, stderr = stage.communicate(timeout=300)
        assert stage.returncode == 0, f"{stdout[-2000:]}\n{stderr[-3000:]}"
    run_ids = [json.loads((root / f"data/train-{name}" / "run.json").read_text())["run_id"] for name in ("par-a", "par-b")]

    def logged(run_id: str) -> dict:
        metrics = dict(team.query("SELECT key, value FROM latest_metrics WHERE run_uuid = %s AND key != 'cv_seconds'",
                                  (run_id,)))  # wall time: the one number two identical runs do not share
        children = team.query("SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = %s", (run_id,))
        folds = sorted(tuple(sorted(team.query("SELECT key, value FROM latest_metrics WHERE run_uuid = %s", (c,))))
                       for (c,) in children)
        history = team.query("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run_id,))[0][0]
        status = team.query("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))[0][0]
        return {"metrics": metrics, "folds": folds, "history": history, "status": status}

    a, b = (logged(run_id) for run_id in run_ids)
    assert a["status"] == b["status"] == "FINISHED"
    assert len(a["folds"]) == 3 and all(fold for fold in a["folds"])  # n_folds: 3 in the scratch params
    assert "cv_uar_mean" in a["metrics"] and a["history"] >= len(a["metrics"])
    assert a == b
    tags = dict(team.query("SELECT value, run_uuid FROM tags WHERE key = 'dvc_exp_name' AND run_uuid IN %s",
                           (tuple(run_ids),)))
    assert tags == {"par-a": run_ids[0], "par-b": run_ids[1]}


@pytest.mark.slow
def test_a_down_database_stops_the_stage_with_one_line_naming_the_uri(team, tmp_path):
    root = scratch_project(tmp_path / "project")
    inputs = sorted(p for p in (root / "data").rglob("*") if p.is_file())
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    team_module().Team(team.folder, team.env).stop_db()
    try:
        stage = run_stage(root, team.client_env, *TRAIN, out="data/train")
        stdout, stderr = stage.communicate(timeout=120)
        assert stage.returncode == 1
        assert f"train: the MLflow tracking server {team.url} answers 503" in stderr
        assert "database may be down" in stderr and "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) <= 3, stderr
        assert not (root / "data" / "train").exists()  # no work started, nothing local written
        assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs} == digests
    finally:
        restarted = team.tool("up")  # brings the database back (the server never stopped)
    assert restarted.returncode == 0, restarted.stderr
    # back up: the same stages, then registering and promoting through the server, as on the local store
    stage = run_stage(root, team.client_env, *TRAIN, out="data/train")
    stdout, stderr = stage.communicate(timeout=300)
    assert stage.returncode == 0, stderr[-3000:]
    env = {**team.client_env, "PYTHONPATH": str(root)}
    evaluate = subprocess.run([PYTHON, "stages/evaluate.py", "--train", "data/train", "--metrics", "metrics/evaluate.json",
                               "--plots", "metrics/plots"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "ser-emotion-exp-test version 1 registered" in evaluate.stdout
    promoted = subprocess.run([PYTHON, "-m", "ser", "promote", "1"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=120)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "ser-emotion-exp-test version 1" in promoted.stdout and "is now @champion" in promoted.stdout


def test_the_server_and_database_restarted_keep_every_run(team, monkeypatch):
    from mlflow import MlflowClient

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, team.client_env[key])
    client = MlflowClient(tracking_uri=team.url)
    experiment = client.create_experiment("team-restart")
    for index in range(3):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "uar", index / 10)
        client.set_terminated(run.info.run_id)

    def every_run() -> dict:
        experiments = [e.experiment_id for e in client.search_experiments()]
        return {r.info.run_id: (r.info.status, r.data.metrics) for r in client.search_runs(experiments, max_results=1000)}

    before = every_run()
    pids = team.running_pids()
    assert pids
    stopped = team.tool("down")
    assert stopped.returncode == 0, stopped.stderr
    assert not team.running_pids(), "team down left processes running"
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()
                and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    started = team.tool("up")
    assert started.returncode == 0, started.stderr
    after = every_run()
    assert after == before and len(before) >= 3


# ---- the shared DVC remote -----------------------------------------------------------------------
def git_dvc(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**base_env(), "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def tree_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.mirror
def test_dvc_push_then_pull_into_a_fresh_clone_restores_the_model_bit_for_bit(tmp_path, real_mirror,
                                                                              tmp_path_factory):
    bundle = train_small_bundle(real_mirror, shared_bundle_dir(tmp_path_factory))
    # The project's layout: clones side by side with shared/ (the corpus mirror's parent, the remote's folder)
    first, second = tmp_path / "alice", tmp_path / "bob"
    first.mkdir()
    git_dvc(["git", "init", "-q"], first)
    git_dvc(["dvc", "init", "-q"], first)
    shutil.copy(REPO / ".dvc" / "config", first / ".dvc" / "config")  # the remote as the project declares it
    shutil.copytree(bundle, first / "data" / "train" / "model")
    git_dvc(["dvc", "add", "data/train/model"], first)
    git_dvc(["git", "add", "-A"], first)
    git_dvc(["git", "commit", "-q", "-m", "a trained model"], first)
    git_dvc(["dvc", "push"], first)
    remote = tmp_path / "shared" / "dvc-remote"
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*"))

    git_dvc(["git", "clone", "-q", str(first), str(second)], tmp_path)
    assert not (second / "data" / "train" / "model").exists()
    git_dvc(["dvc", "pull"], second)
    restored = second / "data" / "train" / "model"
    assert tree_digests(restored) == tree_digests(bundle)

    clip = ravdess_clip(real_mirror, 12, "05")
    answer = subprocess.run([PYTHON, "-m", "ser", "predict", "--model", str(restored), "--format", "json", str(clip)],
                            cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-3000:]
    (prediction,) = json.loads(answer.stdout)
    classes = json.loads((restored / "bundle.json").read_text())["classes"]
    assert prediction["label"] in classes and abs(sum(prediction["probabilities"].values()) - 1) < 1e-4
