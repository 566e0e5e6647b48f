"""Faults during the pipeline: a worker process that dies, a run stopped half-way, two
experiments run at once. Each run must account for every clip (done, or failed with its
reason), never leave a half-written cache entry or an output folder that looks complete and is
not, and finish on a rerun."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from ser.runtime import make_executor
from ser.runtime.executor import WORKER_DIED, ProcessExecutor
from ser.features import compute_features, load_failures, load_sequences, load_table
from ser.features.cache import FeatureCache
from ser.features.extraction import KINDS_OF_SET
from tests.corpus_fixtures import write_clip
from tests.params_support import REPO, params as project_params
from tests.test_features import AUDIO, FEATURES, clip_row

FAST = {**FEATURES, "sets": ["functionals"]}


def short_clips(folder: Path, count: int) -> pd.DataFrame:
    """``count`` one-second clips and their metadata table (as harmonize writes it)."""
    emotions = ("neutral", "happy", "sad", "angry")
    rows = []
    for i in range(count):
        path = write_clip(folder / f"clip{i:03d}.wav", seconds=1.0, emotion=emotions[i % 4], seed=i)
        rows.append(clip_row(f"toy_{i:03d}", path, f"toy_{i % 3}", emotions[i % 4]))
    return pd.DataFrame(rows)


# ---- a worker process that dies -------------------------------------------------------------

def die_on(victim: str, marker: str | None, fn, job):
    """``fn(job)``, except that the worker given clip ``victim`` kills itself with SIGKILL, as
    a crash in native code or the OOM killer would: every time, or only the first time when
    ``marker`` names a file to leave behind."""
    if job.key == victim and not (marker and os.path.exists(marker)):
        if marker:
            Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(job)


class FaultyExecutor(ProcessExecutor):
    """The stage's two-worker process pool, with ``die_on`` slipped around the job function."""

    def __init__(self, victim: str, marker: Path | None = None):
        super().__init__(workers=2)
        self.victim, self.marker = victim, str(marker) if marker else None

    def map(self, fn, items, **kwargs):
        return super().map(functools.partial(die_on, self.victim, self.marker, fn), items, **kwargs)


def run_features(metadata, out, cache, executor):
    return compute_features(metadata, out, AUDIO, FAST, root=REPO, cache_dir=cache, executor=executor,
                            progress=False)


def test_a_clip_that_kills_its_worker_twice_is_failed_with_its_reason_and_the_rest_complete(tmp_path):
    metadata = short_clips(tmp_path / "audio", 20)
    victim = metadata.iloc[9]
    out, cache = tmp_path / "features", tmp_path / "cache"
    summary = run_features(metadata, out, cache, FaultyExecutor(victim["pcm_sha256"]))

    failures = load_failures(out)
    assert failures["utterance_id"].tolist() == [victim["utterance_id"]]
    problem = failures["problem"].iloc[0]
    assert WORKER_DIED in problem and "SIGKILL" in problem and "retried" in problem, problem
    others = sorted(set(metadata["utterance_id"]) - {victim["utterance_id"]})
    assert load_table(out, "functionals").index.tolist() == others
    assert summary["clips"] == 19 and summary["failed"] == 1
    assert json.loads((out / "info.json").read_text())["failed"] == 1

    # The cache kept every clip but the one that died: a rerun computes only that one.
    again = run_features(metadata, out, cache, make_executor("process", 2))
    assert (again["computed"], again["from_cache"], again["failed"]) == (1, 19, 0)


def test_a_worker_that_dies_once_is_replaced_and_the_clips_it_took_down_are_retried(tmp_path, capsys):
    metadata = short_clips(tmp_path / "audio", 20)
    marker = tmp_path / "died"
    executor = FaultyExecutor(metadata.iloc[3]["pcm_sha256"], marker)
    summary = run_features(metadata, tmp_path / "pooled", None, executor)

    assert marker.exists(), "the worker was meant to die"
    assert f"{WORKER_DIED}; retrying" in capsys.readouterr().out
    assert summary["clips"] == 20 and summary["failed"] == 0
    assert load_failures(tmp_path / "pooled").empty
    serial = run_features(metadata, tmp_path / "serial", None, make_executor("serial"))
    assert serial["clips"] == 20
    pd.testing.assert_frame_equal(load_table(tmp_path / "pooled", "functionals"),
                                  load_table(tmp_path / "serial", "functionals"))


# A worker killed while it writes a large result leaves half a message in the pool's result
# pipe. These run in a child interpreter, since the failure they guard against is a hang: of
# the pool's wait, or of the interpreter's exit, which joins the pool's manager thread.
BIG_RESULTS = """
import os, signal, sys, threading, time
from ser.runtime.executor import WORKER_DIED, ProcessExecutor

MB = 1 << 20

def big(item):
    if item == "victim":  # dies once it has started to hand back its 512 MB
        threading.Thread(target=kill_when_sending, args=(threading.get_ident(),), daemon=True).start()
        return bytes(512 * MB)
    return bytes(64 * MB)

def kill_when_sending(sender):
    while not any(frame.f_code.co_name == "send_bytes" for frame in stack(sys._current_frames().get(sender))):
        time.sleep(0.001)
    time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGKILL)

def stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back

if __name__ == "__main__":
    items = ["victim", *range(6)] if sys.argv[1] == "victim" else list(range(40))
    for outcome in ProcessExecutor(workers=2, batch_size=1).map(big, items):
        if sys.argv[1] == "interrupt":  # the consumer stops while workers are mid-send
            raise KeyboardInterrupt
        print(outcome.item, "ok" if outcome.ok else outcome.error, flush=True)
"""


def run_big_results(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "big_results.py"
    script.write_text(BIG_RESULTS)
    return subprocess.run([sys.executable, str(script), mode], cwd=REPO, capture_output=True, text=True,
                          timeout=150, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_an_interrupted_pool_exits_even_when_workers_are_writing_results(tmp_path):
    done = run_big_results(tmp_path, "interrupt")  # a hang here raises TimeoutExpired
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr, done.stderr[-2000:]


def test_a_worker_killed_while_writing_its_result_fails_its_item_and_the_rest_complete(tmp_path):
    done = run_big_results(tmp_path, "victim")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if not line.startswith("warning:"))
    assert sorted(lines) == sorted(["victim", *map(str, range(6))]), done.stdout
    problem = lines.pop("victim")
    assert WORKER_DIED in problem and "SIGKILL" in problem and set(lines.values()) == {"ok"}, done.stdout


# ---- a run stopped half-way -----------------------------------------------------------------

def committed_clips(cache_file: Path) -> int:
    """Clips with a committed functionals entry (0 while the cache is not created yet)."""
    if not cache_file.exists():
        return 0
    try:
        with sqlite3.connect(cache_file, timeout=0.05) as db:
            return db.execute("SELECT COUNT(*) FROM entries WHERE kind = 'functionals'").fetchone()[0]
    except sqlite3.OperationalError:  # the table is being created
        return 0


def assert_cache_is_whole(folder: Path, sets: list[str]) -> None:
    """Every entry decodes to its recorded shape, and every clip has all the kinds of a set or none."""
    with sqlite3.connect(folder / FeatureCache.FILENAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        clips_of_kind = {}
        for kind, clip, dtype, shape, data in db.execute("SELECT kind, clip, dtype, shape, data FROM entries"):
            assert len(data) == np.dtype(dtype).itemsize * int(np.prod(json.loads(shape))), (kind, clip)
            clips_of_kind.setdefault(kind, set()).add(clip)
    for name in sets:
        kinds = KINDS_OF_SET[name]
        assert all(clips_of_kind.get(k, set()) == clips_of_kind.get(kinds[0], set()) for k in kinds), name


def stage_command(tmp_path: Path, metadata: pd.DataFrame, sets: list[str]) -> list[str]:
    metadata.to_parquet(tmp_path / "metadata.parquet")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(project_params(audio=AUDIO, features={
        **FEATURES, "sets": sets, "executor": "process", "workers": 2, "cache_dir": str(tmp_path / "cache")})))
    return [sys.executable, str(REPO / "stages" / "features.py"), "--metadata", str(tmp_path / "metadata.parquet"),
            "--out", str(tmp_path / "features"), "--params", str(params)]


def as_a_shell_starts_it() -> None:
    """SIGINT at its default in the stage, as a shell starts a job. A child inherits an ignored
    signal, and Python turns SIGINT into KeyboardInterrupt only when it was not ignored at start:
    when something in this test process had ignored it, the stage never saw the ctrl-c."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_once_clips_are_committed(stage: subprocess.Popen, cache_file: Path, how: str) -> list[psutil.Process]:
    """Waits for the first committed clips, then stops the stage as ``how`` says; returns its workers."""
    deadline = time.monotonic() + 240
    while stage.poll() is None and committed_clips(cache_file) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stage.poll() is None, "the stage ended before it could be interrupted"
    workers = psutil.Process(stage.pid).children(recursive=True)
    if how == "ctrl-c":  # SIGINT to the whole process group, as a terminal sends it
        os.killpg(stage.pid, signal.SIGINT)
    else:  # SIGTERM to the stage process alone (dvc, a job scheduler or `kill` stopping it)
        stage.send_signal(signal.SIGTERM)
    stage.wait(timeout=120)
    return workers


# Enough clips that the stage is still busy when the signal lands: once warm it computes about
# 100 one-second clips a second, and with 96 it sometimes finished before a ctrl-c arrived.
INTERRUPTED_RUN_CLIPS = 480


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_features_run_leaves_no_partial_output_and_a_rerun_completes(tmp_path, how):
    sets = ["functionals", "sequences"]
    metadata = short_clips(tmp_path / "audio", INTERRUPTED_RUN_CLIPS)
    command = stage_command(tmp_path, metadata, sets)
    out, cache = tmp_path / "features", tmp_path / "cache"
    with open(tmp_path / "stage.log", "w") as log:  # a file, not a pipe: orphans could hold a pipe open
        stage = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True,
                                 preexec_fn=as_a_shell_starts_it)
    workers = []
    try:
        workers = interrupt_once_clips_are_committed(stage, cache / FeatureCache.FILENAME, how)
        assert stage.returncode != 0, (f"the stage finished as if never interrupted (SIGINT here: "
                                       f"{signal.getsignal(signal.SIGINT)})")
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"worker processes outlived the stopped stage: {alive}"
    finally:
        for process in [stage, *workers]:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                process.kill()
        stage.wait()

    # Nothing looks finished: no output folder at all, and the cache holds only whole clips.
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert_cache_is_whole(cache, sets)
    committed = committed_clips(cache / FeatureCache.FILENAME)
    assert 0 < committed < INTERRUPTED_RUN_CLIPS

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    from_cache = int(re.search(r"(\d+) from cache", rerun.stdout).group(1))
    assert f"{INTERRUPTED_RUN_CLIPS} clips" in rerun.stdout and from_cache >= committed, rerun.stdout
    assert not list(tmp_path.glob(".features.*")), "staging folders were left behind"
    assert_cache_is_whole(cache, sets)

    # The resumed outputs are exactly those of one uninterrupted run of the same stage (its own
    # processes: BLAS kernels differ in the last float32 bit between a worker and this process).
    (tmp_path / "uninterrupted").mkdir()
    whole = subprocess.run(stage_command(tmp_path / "uninterrupted", metadata, sets), cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    reference_dir = tmp_path / "uninterrupted" / "features"
    pd.testing.assert_frame_equal(load_table(out, "functionals"), load_table(reference_dir, "functionals"))
    for kind in KINDS_OF_SET["sequences"]:
        ids, array = load_sequences(out, kind)
        reference_ids, reference = load_sequences(reference_dir, kind)
        assert ids == reference_ids
        np.testing.assert_array_equal(array, reference)


# ---- two queued experiments at once ---------------------------------------------------------

def queue_states(root: Path, env: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """Status ("Queued", "Running", "Success", "Failed") of the named tasks, from ``dvc queue status``."""
    shown = subprocess.run(["dvc", "queue", "status"], cwd=root, env=env, capture_output=True, text=True).stdout
    return {line.split()[1]: line.split()[-1] for line in shown.splitlines()
            if len(line.split()) >= 3 and line.split()[1] in names}


def run_queue(root: Path, env: dict[str, str], names: tuple[str, ...], timeout_s: float) -> dict[str, str]:
    """``dvc queue start -j 2``, then the tasks' final states (or the last seen at the deadline)."""
    from tests.test_experiments import run

    run(["dvc", "queue", "start", "-j", "2"], root, env)
    try:
        deadline = time.monotonic() + timeout_s
        states = queue_states(root, env, names)
        while time.monotonic() < deadline and not (
                len(states) == len(names) and all(s in ("Success", "Failed") for s in states.values())):
            time.sleep(5)
            states = queue_states(root, env, names)
    finally:  # never leave queue workers behind, whatever happened
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True)
    return states


def queue_project(root: Path) -> dict[str, str]:
    """The tiny project of tests/test_experiments.py, committed; returns the environment for dvc."""
    from tests.test_experiments import run, scratch_project

    root.mkdir()
    scratch_project(root)
    # Queued experiments run in temporary copies of the commit: the generated inputs go into git.
    (root / ".gitignore").write_text("/data/train\n/mlflow.db\n/mlartifacts/\n")
    env = {**os.environ, "PYTHONPATH": str(root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for variable in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        env.pop(variable, None)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "scratch"]):
        run(command, root, env)
    return env


@pytest.mark.slow
def test_two_queued_experiments_run_at_once_both_record_a_finished_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.test_experiments import run

    root = tmp_path / "project"
    env = queue_project(root)
    names = ("queued-a", "queued-b")
    for name, alpha in zip(names, ("0.001", "0.01")):
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", "model.type=mlp", "-S", f"model.mlp.alpha={alpha}"],
            root, env)
    states = run_queue(root, env, names, timeout_s=600)
    logs = {name: subprocess.run(["dvc", "queue", "logs", name], cwd=root, env=env, capture_output=True,
                                 text=True).stdout[-2000:] for name in names if states.get(name) != "Success"}
    assert states == {name: "Success" for name in names}, f"queue ended as {states}; logs:\n{logs}"

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ser-exp-test")
    parents = {}
    for name in names:
        runs = [r for r in client.search_runs([experiment.experiment_id], f"tags.dvc_exp_name = '{name}'")
                if "mlflow.parentRunId" not in r.data.tags]
        assert len(runs) == 1, f"{name}: {len(runs)} parent runs"
        info, data = runs[0].info, runs[0].data
        parents[name] = info
        assert info.status == "FINISHED", f"{name}: run {info.run_id} is {info.status}"
        assert 0.0 <= data.metrics["uar"] <= 1.0 and data.params["model.type"] == "mlp"
        folds = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{info.run_id}'")
        assert folds and all(f.info.status == "FINISHED" for f in folds), f"{name}: fold runs not all finished"
    first, second = (parents[name] for name in names)
    assert first.start_time < second.end_time and second.start_time < first.end_time, "the runs did not overlap"
