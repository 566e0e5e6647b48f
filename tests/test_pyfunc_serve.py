"""The registered MLflow model takes audio: in process, through ``ser predict``, and served over HTTP."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from tests.serve_support import (PYTHON, REPO, long_recording, ravdess_clip, shared_bundle_dir,
                                 subprocess_env, train_small_bundle, wav_bytes)
from ser.serving.loader import CHAMPION
from tests.local_server import free_port, stop_process_group, tree_cpu_seconds, wait_until_answering

REGISTERED = "ser-emotion"
MAX_BYTES = 400_000  # small, so the oversized payload of the test stays small

pytestmark = pytest.mark.mirror


@pytest.fixture(scope="module")
def tracking_uri(real_mirror, tmp_path_factory) -> str:
    """A fresh MLflow store holding the small model, registered as ``ser-emotion``."""
    import mlflow

    from ser.serving.pyfunc import log_model

    bundle = train_small_bundle(real_mirror, shared_bundle_dir(tmp_path_factory))
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    previous, previous_global = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serve-test", artifact_location=(store / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        from tests.params_support import params as project_params

        params = project_params()
        # paths on, under the corpus mirror: the test compares a path with the same clip's bytes
        serve = {**params["serve"], "max_bytes": MAX_BYTES, "allow_path": True, "path_root": str(real_mirror)}
        info = log_model(bundle, params["predict"], serve, registered_model_name=REGISTERED)
    assert info.registered_model_version == 1
    # what ser predict/serve load when no --model is given
    mlflow.MlflowClient().set_registered_model_alias(REGISTERED, CHAMPION, "1")
    yield uri
    mlflow.set_tracking_uri(previous_global)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module")
def served_model(tracking_uri):
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{REGISTERED}/latest")


def probability_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("p_")]


def test_pyfunc_gives_the_probabilities_of_ser_predict(served_model, tracking_uri, real_mirror):
    clip = ravdess_clip(real_mirror, 20, "05")
    by_bytes = served_model.predict(pd.DataFrame({"audio": [clip.read_bytes()]}))
    by_path = served_model.predict(pd.DataFrame({"path": [str(clip)]}))
    # ser predict with no --model: the @champion ser-emotion of the store in the env.
    result = subprocess.run([PYTHON, "-m", "ser", "predict", str(clip), "--format", "json"], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env=subprocess_env(MLFLOW_TRACKING_URI=tracking_uri))
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)

    columns = probability_columns(by_bytes)
    assert [c.removeprefix("p_") for c in columns] == list(answer["probabilities"])
    expected = np.array(list(answer["probabilities"].values()))
    assert np.allclose(by_bytes[columns].to_numpy()[0], expected, atol=1e-9)
    assert np.allclose(by_path[columns].to_numpy()[0], expected, atol=1e-9)
    assert by_bytes.loc[0, "label"] == answer["label"] == by_path.loc[0, "label"]
    assert by_bytes.loc[0, "n_windows"] == 1


def test_pyfunc_windows_a_long_recording(served_model, real_mirror):
    audio = wav_bytes(long_recording(real_mirror, 9.0), 16000)
    summary = served_model.predict(pd.DataFrame({"audio": [audio]}))
    windows = served_model.predict(pd.DataFrame({"audio": [audio]}), params={"windows": True})

    columns = probability_columns(summary)
    per_window = windows[windows["window"] >= 0]
    aggregate = windows[windows["window"] == -1]
    assert len(per_window) == summary.loc[0, "n_windows"] == 1 + round((summary.loc[0, "duration_s"] - 3.0) / 1.5)
    assert np.allclose(per_window[columns].mean().to_numpy(), summary[columns].to_numpy()[0], atol=1e-9)
    assert np.allclose(aggregate[columns].to_numpy()[0], summary[columns].to_numpy()[0], atol=1e-12)


def post(url: str, body: bytes | str) -> requests.Response:
    return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)


def audio_payload(data: bytes | str) -> str:
    encoded = data if isinstance(data, str) else base64.b64encode(data).decode("ascii")
    return json.dumps({"dataframe_split": {"columns": ["audio"], "data": [[encoded]]}})


def busy_processes(server_pid: int, before: dict[int, float], min_cpu_s: float) -> list[int]:
    after = tree_cpu_seconds(server_pid)
    return [pid for pid, seconds in after.items() if seconds - before.get(pid, 0.0) >= min_cpu_s]


@pytest.mark.slow
def test_mlflow_models_serve_answers_good_and_bad_payloads(tracking_uri, served_model, real_mirror, tmp_path):
    """The documented command with ``--workers 2`` and one math thread per worker."""
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    env = subprocess_env(MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{Path(PYTHON).parent}:{os.environ['PATH']}",
                         OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    server = subprocess.Popen(
        [str(Path(PYTHON).parent / "mlflow"), "models", "serve", "-m", f"models:/{REGISTERED}/latest",
         "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "--workers", "2"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server)
        url = f"http://127.0.0.1:{port}/invocations"
        clip = ravdess_clip(real_mirror, 22, "06").read_bytes()

        good = post(url, audio_payload(clip))
        assert good.status_code == 200, good.text
        [answer] = good.json()["predictions"]
        local = served_model.predict(pd.DataFrame({"audio": [clip]}))
        columns = probability_columns(local)
        assert answer["label"] == local.loc[0, "label"]
        assert np.allclose([answer[c] for c in columns], local[columns].to_numpy()[0], atol=1e-9)

        noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 13)
        oversized = wav_bytes(noise, 16000)
        assert len(oversized) > MAX_BYTES
        too_big = post(url, audio_payload(oversized))
        assert too_big.status_code == 400 and "over the limit of 400000 bytes" in too_big.json()["message"]

        garbage = post(url, audio_payload(b"these bytes are not any audio format"))
        assert garbage.status_code == 400 and "cannot decode audio" in garbage.json()["message"]

        empty_audio = post(url, audio_payload(""))
        assert empty_audio.status_code == 400 and "empty" in empty_audio.json()["message"]

        empty_body = post(url, b"")
        assert empty_body.status_code == 400

        again = post(url, audio_payload(clip))  # still serving after the bad requests
        assert again.status_code == 200 and again.json()["predictions"][0]["label"] == answer["label"]
        assert server.poll() is None

        # Both uvicorn workers score: concurrent clients on fresh connections keep each busy.
        before = tree_cpu_seconds(server.pid)
        body = audio_payload(wav_bytes(long_recording(real_mirror, 6.0), 16000))
        with ThreadPoolExecutor(4) as clients:
            codes = list(clients.map(lambda _: post(url, body).status_code, range(12)))
        assert codes == [200] * 12
        assert len(busy_processes(server.pid, before, min_cpu_s=0.1)) >= 2  # an idle worker accrues ~0.01 s
    finally:
        stop_process_group(server)
        log.close()
