"""Serving benchmark: latency of one 3 s clip through the served model, and throughput under load.

Starts ``mlflow models serve --env-manager local`` on a free loopback port and measures:

* ``model``: the pyfunc ``predict`` of the loaded model in this process (decode, front end,
  features, classifier; no HTTP): the latency excluding the network;
* ``http``: the same clip as a JSON ``POST /invocations`` from one client, one request at a time;
* ``load``: throughput (requests/s) and latency with 1, 2, 4, ... concurrent clients.

Request counts are bounded (``--requests``, ``--per-client``), everything stays on 127.0.0.1.

    python benchmarks/bench_serve.py                         # models:/ser-emotion/latest, else data/train/model
    python benchmarks/bench_serve.py --model data/train/model --clients 1 2 4 --out bench_serve.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import soundfile as sf

from ser.serve.local import ServerError, free_port, stop_process_group, wait_until_answering

REPO = Path(__file__).resolve().parents[1]
CLIP_SECONDS = 3.0
RATE = 16000
MAX_REQUESTS = 2000


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [1000 * s for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "min_ms": round(min(ms), 2)}


def three_second_clip() -> tuple[bytes, str]:
    """3.0 s of real speech (RAVDESS, silence trimmed, clips back to back) as 16 kHz WAV.

    Without the corpus mirror: a generated voiced glide of the same length.
    """
    from ser.audio import decode, resample, to_mono, trim_silence

    mirror = Path(os.environ.get("SER_DATA_MIRROR") or REPO.parent / "shared" / "datasets") / "ravdess"
    pieces, total, description = [], 0, "generated voiced glide"
    clips = sorted(mirror.glob("Actor_01/03-01-05-*.flac"))
    if clips:
        description = "RAVDESS Actor_01 angry clips, trimmed, back to back"
        for path in clips:
            samples, rate = decode(path)
            piece = trim_silence(resample(to_mono(samples), rate, RATE), RATE, 40.0)
            pieces.append(piece)
            total += piece.size
            if total >= CLIP_SECONDS * RATE:
                break
        y = np.concatenate(pieces)[: int(CLIP_SECONDS * RATE)]
    else:
        from ser.pyfunc import example_clip

        y, _ = sf.read(io.BytesIO(example_clip(RATE, CLIP_SECONDS)), dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, y, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), f"{description}, {len(y) / RATE:.2f} s, 16 kHz WAV"


def resolve_model(model: str | None, workdir: Path) -> tuple[str, str]:
    """An MLflow model URI or folder ``mlflow models serve`` can load, and what it is."""
    from ser import project
    from ser.pyfunc import save_model

    params = project.load_params(REPO / "params.yaml")
    if model is None:
        import mlflow

        mlflow.set_tracking_uri(project.tracking_uri(REPO))
        try:
            mlflow.MlflowClient().get_registered_model("ser-emotion")
            model = "models:/ser-emotion/latest"
        except Exception:
            model = str(REPO / "data" / "train" / "model")
    path = Path(model)
    if path.is_dir() and (path / "bundle.json").is_file():
        saved = save_model(path, workdir / "pyfunc", params["predict"], params["serve"])
        return str(saved), f"ModelBundle {path} (saved as a pyfunc model for serving)"
    if path.is_dir() and (path / "MLmodel").is_file():
        return str(path), f"MLflow model folder {path}"
    is_uri = model.startswith(("models:/", "runs:/")) or "://" in model
    if path.exists() or not is_uri:
        raise SystemExit(f"{model}: not a model (need a ModelBundle folder, an MLflow model folder or a URI); "
                         "train one (dvc repro train) or pass --model")
    return model, f"MLflow model {model}"


def start_server(model_uri: str, port: int, workers: int, log_path: Path) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHONWARNINGS": "ignore"}
    log = log_path.open("wb")
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "-p", str(port), "-w", str(workers)],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server, timeout_s=180)
    except ServerError as exc:
        stop_process_group(server)
        raise SystemExit(f"mlflow models serve: {exc}; see {log_path}") from None
    return server


def timed_post(session: requests.Session, url: str, body: str) -> float:
    started = time.perf_counter()
    response = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return elapsed


def bench_model(model_uri: str, clip: bytes, requests_n: int, warmup: int) -> dict[str, float]:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame({"audio": [clip]})
    for _ in range(warmup):
        model.predict(frame)
    times = []
    for _ in range(requests_n):
        started = time.perf_counter()
        model.predict(frame)
        times.append(time.perf_counter() - started)
    return summary_ms(times)


def bench_load(url: str, body: str, clients: int, per_client: int) -> dict[str, float]:
    def client(_: int) -> list[float]:
        with requests.Session() as session:
            return [timed_post(session, url, body) for _ in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for times in pool.map(client, range(clients)) for t in times]
    elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "throughput_rps": round(len(latencies) / elapsed, 2), **summary_ms(latencies)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="MLflow model URI or folder, or a ModelBundle folder")
    parser.add_argument("--requests", type=int, default=60, help="sequential requests for latency")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--per-client", type=int, default=15, help="requests per concurrent client")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    total = args.requests * 2 + args.warmup * 2 + sum(c * args.per_client for c in args.clients)
    if total > MAX_REQUESTS:
        raise SystemExit(f"{total} requests in all; keep it under {MAX_REQUESTS}")

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as scratch:
        workdir = Path(scratch)
        model_uri, model_description = resolve_model(args.model, workdir)
        clip, clip_description = three_second_clip()
        results: dict = {"model": model_description, "clip": clip_description, "clip_bytes": len(clip),
                         "server_workers": args.workers, "cpu_count": os.cpu_count()}
        print(f"model: {model_description}\nclip: {clip_description}", file=sys.stderr)
        results["model_predict"] = bench_model(model_uri, clip, args.requests, args.warmup)
        print(f"in-process predict: {results['model_predict']}", file=sys.stderr)

        port = free_port()
        server = start_server(model_uri, port, args.workers, workdir / "serve.log")
        try:
            url = f"http://127.0.0.1:{port}/invocations"
            body = json.dumps({"dataframe_split": {"columns": ["audio"],
                                                   "data": [[base64.b64encode(clip).decode("ascii")]]}})
            with requests.Session() as session:
                for _ in range(args.warmup):
                    timed_post(session, url, body)
                results["http_sequential"] = summary_ms([timed_post(session, url, body) for _ in range(args.requests)])
            print(f"HTTP, one client: {results['http_sequential']}", file=sys.stderr)
            results["load"] = []
            for clients in args.clients:
                results["load"].append(bench_load(url, body, clients, args.per_client))
                print(f"load: {results['load'][-1]}", file=sys.stderr)
        finally:
            stop_process_group(server)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
