"""The Ray executor keeps the process pool's promises: every item comes back once, with its value
or its error; a bounded window of work in flight; a clip that kills its worker fails alone, the
others complete. On a real two-node Ray cluster started on this machine with ``ray start``, the
harmonize probe and the features stage give exactly the process pool's outputs, also when one
node is killed in the middle of the stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from ser.runtime import make_executor
from ser.runtime.executor import WORKER_DIED
from ser.features import compute_features, load_failures, load_sequences, load_table
from ser.features.extraction import KINDS_OF_SET
from ser.data.harmonize import harmonize
from ser.runtime.ray_executor import IN_FLIGHT_PER_CPU, RayExecutor
from tests.params_support import PARAMS
from tests.ray_support import AUTH, ONE_THREAD, LocalCluster, Node

# The toy functions below live in this test module, which Ray workers cannot import by name
# (pytest puts tests/ on the driver's sys.path only): ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---- a local Ray instance, toy functions ----------------------------------------------------

def square_unless_3_mod_7(x: int) -> dict:
    """x squared, or an error for x = 3 mod 7; with what the worker process was."""
    import ray

    time.sleep(0.05)  # long enough for both CPUs to get work
    if x % 7 == 3:
        raise ValueError(f"item {x} is bad")
    return {"square": x * x, "pid": os.getpid(), "numba_cache": os.environ.get("NUMBA_CACHE_DIR"),
            "gcs": ray.get_runtime_context().gcs_address}


def slow_square(x: int) -> int:
    time.sleep(0.01)
    return x * x


def die_on_13(x: int) -> int:
    """The worker given item 13 kills itself, as a crash in native code or the OOM killer would."""
    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    return -x


@pytest.fixture()
def no_cluster(monkeypatch):
    """No RAY_ADDRESS: the executor starts (and stops) a Ray instance of its own. Ray sets
    RAY_AUTH_MODE in this process when it starts one; it is put back as it was afterwards."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    import ray

    assert not ray.is_initialized()
    yield
    ray.shutdown()  # only if a failed test left it connected


def test_ray_is_imported_only_when_its_executor_runs():
    check = ("import sys; from ser.runtime import make_executor; import ser.features.compute, ser.data.augment, "
             "ser.data.harmonize; list(make_executor('serial').map(abs, [-1])); make_executor('ray', 2); "
             "assert 'ray' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_on_a_local_instance_every_item_comes_back_once_with_its_value_or_its_error(no_cluster):
    import ray

    executor = make_executor("ray", 2, batch_size=3)
    outcomes = list(executor.map(square_unless_3_mod_7, range(40)))

    assert sorted(o.item for o in outcomes) == list(range(40))
    for outcome in outcomes:
        if outcome.item % 7 == 3:
            assert not outcome.ok and outcome.error.startswith(f"ValueError: item {outcome.item} is bad")
        else:
            assert outcome.ok and outcome.value["square"] == outcome.item ** 2
    values = [o.value for o in outcomes if o.ok]
    # Loopback only: Ray would otherwise advertise, and listen on, the machine's outward address.
    assert {v["gcs"].rsplit(":", 1)[0] for v in values} == {"127.0.0.1"}
    # Each worker process compiles into a numba cache of its own (see ser.runtime.executor).
    caches = {v["pid"]: v["numba_cache"] for v in values}
    assert all(cache and Path(cache).name.startswith("slot-") for cache in caches.values())
    assert len(set(caches.values())) == len(caches)
    assert not ray.is_initialized(), "the instance the executor started was left running"


def test_items_are_read_no_further_ahead_than_the_window(no_cluster):
    batch, cpus = 4, 2
    window = IN_FLIGHT_PER_CPU * cpus * batch
    read = 0

    def items():
        nonlocal read
        for i in range(300):
            read += 1
            yield i

    ahead = []
    outcomes = []
    for outcome in RayExecutor(cpus, batch_size=batch).map(slow_square, items()):
        outcomes.append(outcome)
        ahead.append(read - len(outcomes))
    assert sorted(o.value for o in outcomes) == [i * i for i in range(300)]
    assert batch <= max(ahead) <= window, f"items read ahead of the outcomes: up to {max(ahead)}, window {window}"


def test_a_clip_that_kills_its_worker_fails_alone_with_the_reason_and_the_others_complete(no_cluster, capsys):
    outcomes = list(RayExecutor(2, batch_size=4, max_retries=1).map(die_on_13, range(24)))

    assert sorted(o.item for o in outcomes) == list(range(24))
    failed = [o for o in outcomes if not o.ok]
    assert [o.item for o in failed] == [13]
    assert WORKER_DIED in failed[0].error and "WorkerCrashedError" in failed[0].error
    assert "retried alone" in failed[0].error
    assert all(o.value == -o.item for o in outcomes if o.ok)
    assert "retrying the 4 item(s)" in capsys.readouterr().out


def test_workers_that_cannot_import_the_function_stop_the_run_instead_of_failing_every_item(no_cluster, tmp_path,
                                                                                           monkeypatch):
    # A module only this process can import, as `ser` would be on a node without the project's
    # environment.
    (tmp_path / "only_on_the_driver.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from only_on_the_driver import double

    seen = []
    with pytest.raises(RuntimeError, match=r"5 Ray tasks in a row failed outside the per-clip function.*"
                                           r"No module named 'only_on_the_driver'.*every node"):
        for outcome in RayExecutor(2, batch_size=1).map(double, range(100)):
            seen.append(outcome)
    assert 1 <= len(seen) <= 5 and not any(o.ok for o in seen)
    assert "No module named 'only_on_the_driver'" in seen[0].error


# ---- a real cluster of `ray start` nodes on this machine -----------------------------------

@pytest.fixture(scope="module")
def cluster():
    """A head and one more node, 1 CPU each; stopped whatever the tests did."""
    with LocalCluster() as cluster:
        cluster.start_head()
        cluster.add_node()
        yield cluster


@pytest.fixture()
def on_cluster(cluster, monkeypatch):
    """This process as a driver of ``cluster``, through RAY_ADDRESS as a user would point at it."""
    for key, value in {**ONE_THREAD, **AUTH, "RAY_ADDRESS": cluster.address}.items():
        monkeypatch.setenv(key, value)
    yield cluster
    import ray

    ray.shutdown()


def alive_nodes(address: str) -> int:
    """Nodes the cluster at ``address`` counts as alive, asked from a separate driver process."""
    check = f"import ray; ray.init(address={address!r}); print(sum(n['Alive'] for n in ray.nodes()))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1])


class TaskWatch(threading.Thread):
    """Samples which nodes run a task now; ``on_first`` is called once a task runs on ``target``."""

    def __init__(self, nodes: list[Node], target: Node | None = None, on_first=None):
        super().__init__(daemon=True)
        self.nodes, self.target, self.on_first = nodes, target, on_first
        self.seen: set[int] = set()  # indexes into nodes
        self.fired = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for index, node in enumerate(self.nodes):
                if node.process.poll() is None and node.running_tasks():
                    self.seen.add(index)
                    if node is self.target and not self.fired.is_set():
                        self.on_first(node)
                        self.fired.set()
            self.stopped.wait(0.05)

    def __enter__(self) -> TaskWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.join()


# ---- real clips, the process pool's outputs as the reference --------------------------------

RAVDESS_CLIPS, TESS_CLIPS = 20, 12
STAGE_FEATURES = {**PARAMS["features"], "cache_dir": None, "workers": 2,
                  "sets": ["functionals", "egemaps", "sequences", "whisper"]}  # every set through Ray


@pytest.fixture(scope="module")
def real_repo(tmp_path_factory, real_mirror) -> Path:
    """A repository folder whose data/raw holds 32 real clips (links into the mirror)."""
    root = tmp_path_factory.mktemp("ray_repo")
    picks = {"ravdess": sorted((real_mirror / "ravdess").glob("Actor_*/*.flac")),
             "tess": sorted((real_mirror / "tess").glob("*.*"))}
    for corpus, count in (("ravdess", RAVDESS_CLIPS), ("tess", TESS_CLIPS)):
        files = picks[corpus]
        for index in np.linspace(0, len(files) - 1, count).round().astype(int):
            source = files[index]
            link = root / "data" / "raw" / corpus / source.relative_to(real_mirror / corpus)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
    return root


@pytest.fixture(scope="module")
def reference(real_repo) -> tuple[pd.DataFrame, Path]:
    """The harmonize table and the default features (every set, Whisper included) of the real
    clips through the two-worker process pool."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ONE_THREAD.items():
            patch.setenv(key, value)
        metadata = harmonize(real_repo / "data" / "raw", ["ravdess", "tess"],
                             {**PARAMS["data"], "executor": "process", "workers": 2}, root=real_repo)
        out = real_repo / "reference_features"
        compute_features(metadata, out, PARAMS["audio"], {**STAGE_FEATURES, "executor": "process"},
                         root=real_repo, progress=False)
    return metadata, out


def assert_same_features(folder: Path, reference: Path) -> list[str]:
    """Every clip of ``folder`` has, in every set, exactly the values it has in ``reference``
    (bit for bit); returns the clips."""
    uids = load_table(folder, "functionals").index.tolist()
    for name in ("functionals", "egemaps", "whisper"):
        pd.testing.assert_frame_equal(load_table(folder, name), load_table(reference, name).loc[uids],
                                      check_exact=True)
    for kind in (*KINDS_OF_SET["sequences"], "whisper_frames"):
        ids, values = load_sequences(folder, kind)
        ref_ids, ref_values = load_sequences(reference, kind)
        assert ids == uids
        np.testing.assert_array_equal(values, ref_values[[ref_ids.index(uid) for uid in ids]], err_msg=kind)
    return uids


@pytest.mark.mirror
@pytest.mark.slow
def test_on_a_two_node_cluster_probe_and_features_equal_the_process_pool(on_cluster, real_repo, reference,
                                                                          tmp_path):
    ref_metadata, ref_features = reference
    data = {**PARAMS["data"], "executor": "ray", "workers": 2}
    with TaskWatch(on_cluster.nodes) as watch:
        metadata = harmonize(real_repo / "data" / "raw", ["ravdess", "tess"], data, root=real_repo)
        summary = compute_features(metadata, tmp_path / "features", PARAMS["audio"],
                                   {**STAGE_FEATURES, "executor": "ray"}, root=real_repo, progress=False)

    # Where Ray places each task is its scheduler's business: the cluster offered both nodes, and
    # the work ran on the cluster's nodes.
    assert alive_nodes(on_cluster.address) == 2
    assert watch.seen and watch.seen <= {0, 1}
    pd.testing.assert_frame_equal(metadata, ref_metadata, check_exact=True)
    assert (summary["clips"], summary["failed"]) == (RAVDESS_CLIPS + TESS_CLIPS, 0)
    # Not a value differs, and neither does any byte of the output files.
    assert assert_same_features(tmp_path / "features", ref_features) == sorted(metadata["utterance_id"])
    files = {path.relative_to(tmp_path / "features") for path in (tmp_path / "features").rglob("*") if path.is_file()}
    assert files == {path.relative_to(ref_features) for path in ref_features.rglob("*") if path.is_file()}
    assert [name for name in sorted(files)
            if (tmp_path / "features" / name).read_bytes() != (ref_features / name).read_bytes()] == []


@pytest.mark.mirror
@pytest.mark.slow
def test_a_node_killed_mid_stage_loses_no_clip_and_changes_no_value(on_cluster, real_repo, reference, tmp_path):
    metadata, ref_features = reference
    doomed = on_cluster.add_node()
    # Small batches: work is left for the surviving nodes when the doomed one dies.
    executor = RayExecutor(address=on_cluster.address, batch_size=2)
    killed_with = []

    def kill(node: Node) -> None:
        killed_with.append(node.running_tasks())
        node.kill()

    with TaskWatch(on_cluster.nodes, target=doomed, on_first=kill) as watch:
        summary = compute_features(metadata, tmp_path / "features", PARAMS["audio"],
                                   {**STAGE_FEATURES, "executor": "ray"}, root=real_repo, executor=executor,
                                   progress=False)

    assert watch.fired.is_set() and killed_with and killed_with[0] >= 1, "the node was not killed mid-task"
    assert doomed.process.poll() is not None
    # Every clip is accounted for, with the values the process pool gave it or a clear reason.
    done = assert_same_features(tmp_path / "features", ref_features)
    failures = load_failures(tmp_path / "features")
    assert sorted(done + failures["utterance_id"].tolist()) == sorted(metadata["utterance_id"])
    assert (metadata["status"] == "ok").all()
    assert all(WORKER_DIED in problem for problem in failures["problem"]), failures["problem"].tolist()
    # And Ray re-ran the lost tasks on the surviving nodes, so none failed.
    assert summary["failed"] == 0, failures.to_dict("records")
