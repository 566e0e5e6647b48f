"""``ser serve``'s admission and worker rules, request by request: two predictor processes
answering side by side, a full queue refused, a runaway request stopped at its deadline and its
worker replaced, /health; and the served MLflow model's ``path`` column, off by default and
confined when on. Throughput under many clients is a benchmark (benchmarks/bench_serve.py).

The slow requests are long real recordings (about 0.2 s of CPU per 3 s window for the small
model), so they are slow for the same reason a real upload is.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

from tests.serve_support import (long_recording, post_clip, ravdess_clip, ser_serve, shared_bundle_dir,
                                 subprocess_env, train_small_bundle, wait_for_health, wav_bytes)

REGISTERED = "ser-emotion"

pytestmark = pytest.mark.mirror


@pytest.fixture(scope="module")
def small_bundle(real_mirror, tmp_path_factory) -> Path:
    return train_small_bundle(real_mirror, shared_bundle_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def registered(small_bundle, tmp_path_factory) -> dict[str, str]:
    """A fresh MLflow store with the small model as ``ser-emotion`` version 1."""
    import mlflow

    from ser.serving.pyfunc import log_model
    from tests.params_support import params

    store = tmp_path_factory.mktemp("serve_load_mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("serve-load", artifact_location=(store / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_model(small_bundle, params()["predict"], params()["serve"], registered_model_name=REGISTERED)
    finally:
        mlflow.set_tracking_uri(previous)
    return {"tracking_uri": uri, "run_id": run.info.run_id, "version": str(info.registered_model_version)}


@pytest.fixture(scope="module")
def two_workers(registered, tmp_path_factory):
    """``ser serve`` of the registered version with 2 predictor processes and room for 4 requests."""
    env = subprocess_env(MLFLOW_TRACKING_URI=registered["tracking_uri"])
    log_path = tmp_path_factory.mktemp("two_workers") / "serve.log"
    with ser_serve("--model", f"models:/{REGISTERED}/{registered['version']}", "--workers", "2",
                   "--max-queue", "4", "--timeout-s", "60", log_path=log_path, env=env) as (base, _):
        yield base


def test_health_reports_the_model_version_queue_and_workers(two_workers, registered):
    report = requests.get(f"{two_workers}/health", timeout=10).json()
    assert report["status"] == "ok"
    assert report["model"] == f"MLflow model models:/{REGISTERED}/1" and report["version"] == "1"
    assert report["model_info"]["run_id"] == registered["run_id"]
    assert report["queue"] == {"depth": 0, "running": 0, "waiting": 0, "capacity": 4}
    workers = report["workers"]
    assert workers["configured"] == workers["up"] == 2 and len(set(workers["pids"])) == 2
    # one math thread per process: 2 processes use 2 cores, not 2 x 2
    assert workers["threads_per_worker"]["native_pools"] == [1]
    # the encoder's ONNX Runtime session in each worker, read back from the session itself
    assert workers["threads_per_worker"]["onnxruntime"] == [1]
    assert report["timeout_s"] == 60.0

    info = requests.get(f"{two_workers}/api/info", timeout=10).json()
    assert info["version"] == "1" and info["workers"] == 2 and info["max_queue"] == 4
    assert len(info["classes"]) == 8


def test_two_workers_predict_two_clips_at_the_same_time(two_workers, real_mirror):
    recording = wav_bytes(long_recording(real_mirror, 20.0), 16000)  # about 13 windows: seconds of CPU
    with ThreadPoolExecutor(2) as clients:
        answers = list(clients.map(lambda name: post_clip(two_workers, name, recording), ["a.wav", "b.wav"]))
    assert [a.status_code for a in answers] == [200, 200], [a.text[:300] for a in answers]
    spans = [a.json()["served_by"] for a in answers]
    assert spans[0]["worker"] != spans[1]["worker"]
    # each started before the other finished: they ran side by side, not one after the other
    assert max(s["started"] for s in spans) < min(s["finished"] for s in spans)
    assert answers[0].json()["probabilities"] == answers[1].json()["probabilities"]
    assert "queue;dur=" in answers[0].headers["Server-Timing"]


def test_a_full_queue_is_refused_at_once_and_a_runaway_clip_is_stopped(small_bundle, real_mirror, tmp_path):
    """One worker, room for 2: a long recording runs past the 1.5 s deadline (504, worker
    replaced), the clip behind it waits past it (503), a third is refused on arrival (503 +
    Retry-After); then the new worker answers."""
    runaway = wav_bytes(long_recording(real_mirror, 240.0), 16000)  # 159 windows: far past 1.5 s of CPU
    quick = ravdess_clip(real_mirror, 2, "03").read_bytes()
    with ser_serve("--model", str(small_bundle), "--workers", "1", "--max-queue", "2", "--timeout-s", "1.5",
                   log_path=tmp_path / "serve.log") as (base, _):
        with ThreadPoolExecutor(2) as clients:
            first = clients.submit(post_clip, base, "first.wav", runaway)
            wait_for_health(base, lambda h: h["queue"]["running"] == 1)
            second = clients.submit(post_clip, base, "second.flac", quick)
            wait_for_health(base, lambda h: h["queue"]["depth"] == 2)
            third = post_clip(base, "third.flac", quick)
            # refused on arrival: answered while the two before it were still waiting or running
            refused_while_full = not first.done() and not second.done()
            timed_out, waited = first.result(), second.result()

        assert third.status_code == 503 and "serve.max_queue" in third.json()["detail"]
        assert int(third.headers["Retry-After"]) >= 1 and refused_while_full
        assert timed_out.status_code == 504, timed_out.text
        assert "serve.timeout_s = 1.5 s" in timed_out.json()["detail"] and "restarted" in timed_out.json()["detail"]
        assert waited.status_code == 503 and "no predictor process was free" in waited.json()["detail"]
        assert int(waited.headers["Retry-After"]) >= 1

        report = wait_for_health(base, lambda h: h["workers"]["up"] == 1, timeout_s=120)
        assert report["status"] == "ok" and report["workers"]["restarts"] == 1
        assert report["requests"] == {"refused_full": 1, "timed_out": 1, "waited_too_long": 1}
        again = post_clip(base, "again.flac", quick)
        assert again.status_code == 200 and again.json()["served_by"]["worker"] in report["workers"]["pids"]


# ---- the served MLflow model's `path` column ----------------------------------------------------
def served_model(small_bundle, serve_overrides: dict):
    """The pyfunc model as ``log_model`` builds it from params.yaml (plus overrides), loaded."""
    from ser.serving.pyfunc import BUNDLE_ARTIFACT, _model_arguments
    from tests.params_support import typed_params

    params = typed_params(serve=serve_overrides)  # what log_model hands its private helper: the typed sections
    arguments = _model_arguments(small_bundle, params.predict, params.serve)
    model = arguments["python_model"]
    model.load_context(SimpleNamespace(artifacts={BUNDLE_ARTIFACT: str(small_bundle)},
                                       model_config=arguments["model_config"]))
    return model


def refused(model, path: str) -> str:
    import pandas as pd

    with pytest.raises(MlflowException) as caught:
        model.predict(None, pd.DataFrame({"path": [path]}))
    assert caught.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    assert caught.value.get_http_status_code() == 400
    return caught.value.message


def test_path_input_is_off_by_default(small_bundle, real_mirror):
    from tests.params_support import PARAMS

    assert PARAMS["serve"]["allow_path"] is False
    model = served_model(small_bundle, {})
    message = refused(model, str(ravdess_clip(real_mirror, 20, "05")))
    assert "column 'path' is off" in message and "serve.allow_path" in message


def test_path_input_when_on_reads_only_files_under_the_root(small_bundle, real_mirror, tmp_path):
    import mlflow
    import pandas as pd

    from ser.serving.pyfunc import save_model
    from tests.params_support import params, section

    root, outside = tmp_path / "served", tmp_path / "private"
    (root / "clips").mkdir(parents=True)
    outside.mkdir()
    clip = ravdess_clip(real_mirror, 20, "05").read_bytes()
    (root / "clips" / "angry.flac").write_bytes(clip)
    (outside / "secret.flac").write_bytes(clip)
    os.symlink(outside / "secret.flac", root / "clips" / "link.flac")
    os.symlink(outside, root / "door")

    saved = save_model(small_bundle, tmp_path / "pyfunc", params()["predict"],
                       section("serve", allow_path=True, path_root=str(root)))
    model = mlflow.pyfunc.load_model(str(saved))  # the setting survives logging and loading
    inside = model.predict(pd.DataFrame({"path": [str(root / "clips" / "angry.flac"), "clips/angry.flac"]}))
    assert len(inside) == 2 and inside.loc[0, "label"] == inside.loc[1, "label"]

    python_model = model.unwrap_python_model()
    for escape in (str(outside / "secret.flac"), "clips/../../private/secret.flac", "clips/link.flac",
                   "door/secret.flac", "/etc/passwd"):
        assert "outside serve.path_root" in refused(python_model, escape), escape
    assert "not a file" in refused(python_model, "clips/missing.flac")
    assert "not a file" in refused(python_model, "clips")


def test_serving_settings_are_the_model_config_and_a_loader_replaces_them(small_bundle, tmp_path):
    """The pickle holds no setting: ``model_config`` (in MLmodel) gives the defaults, and whoever
    loads the model may replace them without retraining or relogging it."""
    import mlflow.pyfunc
    import yaml

    from ser.serving.loader import logged_predictor
    from ser.serving.pyfunc import save_model
    from tests.params_support import PARAMS

    folder = save_model(small_bundle, tmp_path / "model", PARAMS["predict"], PARAMS["serve"])
    conf = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert conf["config"]["window_s"] == PARAMS["predict"]["window_s"]
    assert conf["config"]["max_bytes"] == PARAMS["serve"]["max_bytes"]
    assert b"window_s" not in (folder / conf["python_model"]).read_bytes()
    assert logged_predictor(folder).window_s == PARAMS["predict"]["window_s"]
    loaded = mlflow.pyfunc.load_model(str(folder), model_config={"window_s": 1.5, "hop_s": 0.5, "max_bytes": 10})
    served = loaded.unwrap_python_model()
    assert (served.ready().window_s, served.ready().hop_s, served.max_bytes) == (1.5, 0.5, 10)


def test_models_logged_before_the_setting_read_no_paths():
    from ser.serving.pyfunc import AudioEmotionModel

    old = AudioEmotionModel.__new__(AudioEmotionModel)
    old.__setstate__({"window_s": 3.0, "hop_s": 1.5, "max_bytes": 1000, "predictor": None})
    assert old.allow_path is False and old.path_root is None


def test_allow_path_without_a_root_is_refused_when_logging(small_bundle):
    with pytest.raises(ValueError, match="serve.path_root"):
        served_model(small_bundle, {"allow_path": True, "path_root": None})
