"""Serving benchmark: ``ser serve`` under 1, 2, 4 and 8 concurrent clients, and its memory over
2,000 requests.

Starts ``ser serve`` (params.yaml's ``serve:`` settings: every core, bounded queue, timeout) on a
free loopback port, then:

* ``in_process``: the same clip through one Predictor in this process (no HTTP), for reference;
* ``memory``: server RSS (the whole process tree) after warm-up, then after ``--leak-requests``
  requests from as many clients as there are workers (no refusals);
* ``load``: for each client count, closed-loop asyncio clients (aiohttp, one connection each)
  post the clip for ``--duration`` seconds in all, split over ``--rounds`` rounds that cycle
  through the counts (other jobs on a shared machine then weigh on every count alike):
  throughput, latency p50/p95/p99, responses by status, the server's queue/predict split (its
  ``Server-Timing`` header) and the cores the server and everything else used meanwhile. A
  client that gets 503 waits its ``Retry-After`` (as a polite client would) before asking
  again. ``--wait-quiet S`` waits up to S seconds before each round for other jobs to idle.

Everything stays on 127.0.0.1 and is bounded: ``--duration`` per level, ``--max-requests`` per
level, ``--leak-requests`` (at most 2,000 unless raised) with a time limit; the server is
stopped with its workers whatever happens. Writes ``metrics/bench_serve.json``.

    python benchmarks/bench_serve.py                       # data/train/model, else a small model
    python benchmarks/bench_serve.py --model models:/ser-emotion@champion --clients 1 4 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import requests

from tests.local_server import ServerError, free_port, stop_process_group, tree_cpu_seconds, tree_rss_bytes, \
    wait_until_answering

REPO = Path(__file__).resolve().parents[1]
CLIP_SECONDS = 3.0
RATE = 16000
LEAK_TIME_LIMIT_S = 600.0
REQUEST_TIMEOUT_S = 60.0
TARGET_SCALING = 1.7       # throughput at 4 clients over 1 client, on 2 cores
TARGET_P99_MS = 2000.0     # at 8 clients: refuse (503) rather than answer this late
TARGET_RSS_GROWTH_MB = 50.0
QUIET_PERCENT = 10.0       # --wait-quiet: machine CPU busy below this (the server idles between rounds)


def mirror() -> Path:
    return Path(os.environ.get("SER_DATA_MIRROR") or REPO.parent / "shared" / "datasets")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ms = [1000 * s for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "mean_ms": round(statistics.fmean(ms), 1),
            "max_ms": round(max(ms), 1)}


def three_second_clip() -> tuple[bytes, str]:
    """3.0 s of real speech (RAVDESS, silence trimmed, clips back to back) as 16 kHz WAV."""
    import io

    import soundfile as sf

    from ser.audio import decode, resample, to_mono, trim_silence

    clips = sorted((mirror() / "ravdess").glob("Actor_01/03-01-05-*.flac"))
    if not clips:
        raise SystemExit(f"no RAVDESS clips under {mirror()}; set SER_DATA_MIRROR")
    pieces, total = [], 0
    for path in clips:
        samples, rate = decode(path)
        pieces.append(trim_silence(resample(to_mono(samples), rate, RATE), RATE, 40.0))
        total += pieces[-1].size
        if total >= CLIP_SECONDS * RATE:
            break
    y = np.concatenate(pieces)[: int(CLIP_SECONDS * RATE)]
    buffer = io.BytesIO()
    sf.write(buffer, y, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), f"RAVDESS Actor_01 angry clips, trimmed, back to back, {len(y) / RATE:.2f} s, 16 kHz WAV"


def resolve_model(model: str | None, workdir: Path) -> tuple[str, str]:
    """What ``ser serve --model`` gets, and a description: the default bundle, else a small one."""
    if model is not None:
        return model, model
    default = REPO / "data" / "train" / "model"
    if (default / "bundle.json").is_file():
        return str(default), f"ModelBundle {default.relative_to(REPO)} (the pipeline's default model)"
    sys.path.insert(0, str(REPO))
    from tests.serve_support import train_small_bundle

    bundle = train_small_bundle(mirror(), workdir / "small_bundle")
    return str(bundle), "small SVM bundle on 32 RAVDESS clips (tests/serve_support.py; no data/train/model)"


def bench_in_process(model: str, clip: bytes, n: int) -> dict | None:
    if n <= 0 or not (Path(model) / "bundle.json").is_file():
        return None
    from ser import project
    from ser.serving.predict import load_bundle_predictor

    # As `ser predict` runs it: one process, every core for the encoder.
    predictor = load_bundle_predictor(model, project.load_params(REPO / "params.yaml").predict).use_threads(
        os.cpu_count() or 1)
    for _ in range(3):
        predictor.predict_source(clip, "warm-up")
    times = []
    for _ in range(n):
        started = time.perf_counter()
        predictor.predict_source(clip, "clip")
        times.append(time.perf_counter() - started)
    return summary_ms(times)


@contextmanager
def ser_serve(model: str, extra: list[str], log_path: Path) -> Iterator[tuple[str, int]]:
    """``ser serve`` on a free loopback port: yields its URL and pid; always stopped."""
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "ser", "serve", "--model", model, "--host", "127.0.0.1",
                                   "--port", str(port), *extra], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_until_answering(f"http://127.0.0.1:{port}/health", server, timeout_s=300)
            except ServerError as exc:
                raise SystemExit(f"ser serve: {exc}\n{log_path.read_text()[-3000:]}") from None
            yield f"http://127.0.0.1:{port}", server.pid
        finally:
            stop_process_group(server)


# ---- the load generator --------------------------------------------------------------------------
def server_timing(header: str | None) -> dict[str, float]:
    parts = {}
    for item in (header or "").split(","):
        name, _, duration = item.strip().partition(";dur=")
        if duration:
            parts[name] = float(duration)
    return parts


async def one_client(url: str, clip: bytes, deadline: float, budget: list[int], records: list[dict]) -> None:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as session:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            form = aiohttp.FormData()
            form.add_field("file", clip, filename="clip.wav", content_type="audio/wav")
            started = time.perf_counter()
            retry_after, timing = None, {}
            try:
                async with session.post(url, data=form, params={"visuals": "false"}) as response:
                    await response.read()
                    status = str(response.status)
                    retry_after = response.headers.get("Retry-After")
                    timing = server_timing(response.headers.get("Server-Timing"))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = f"exception:{type(exc).__name__}"
            records.append({"status": status, "seconds": time.perf_counter() - started, **timing})
            if status == "503" and retry_after:
                await asyncio.sleep(max(0.0, min(float(retry_after), deadline - time.monotonic())))


async def drive(url: str, clip: bytes, clients: int, duration_s: float, max_requests: int) -> tuple[list[dict], float]:
    records: list[dict] = []
    budget = [max_requests]
    started = time.monotonic()
    await asyncio.gather(*(one_client(url, clip, started + duration_s, budget, records) for _ in range(clients)))
    return records, time.monotonic() - started


def describe(records: list[dict], elapsed: float) -> dict:
    ok = [r for r in records if r["status"] == "200"]
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    return {
        "requests": len(records), "seconds": round(elapsed, 2),
        "throughput_rps": round(len(ok) / elapsed, 2),
        "statuses": dict(sorted(statuses.items())),
        "error_rate": round(1 - len(ok) / len(records), 4) if records else None,
        "latency_ok": summary_ms([r["seconds"] for r in ok]),
        "latency_refused": summary_ms([r["seconds"] for r in records if r["status"] == "503"]),
        "server_queue_ms_p50": round(percentile([r["queue"] for r in ok if "queue" in r], 50), 1),
        "server_predict_ms_p50": round(percentile([r["predict"] for r in ok if "predict" in r], 50), 1),
    }


class CpuMeter:
    """CPU seconds used by the server tree, this process and everything else between two reads."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.last = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        import psutil

        total = psutil.cpu_times()
        return (time.monotonic(), total.user + total.system + total.nice,
                sum(tree_cpu_seconds(self.server_pid).values()), sum(psutil.Process().cpu_times()[:2]))

    def lap(self) -> dict[str, float]:
        now = self._read()
        wall, machine, server, client = (b - a for a, b in zip(self.last, now))
        self.last = now
        return {"wall": wall, "server": server, "load_generator": client, "others": max(0.0, machine - server - client)}


def cores(laps: list[dict[str, float]]) -> dict[str, float]:
    wall = sum(lap["wall"] for lap in laps)
    return {f"{name}_cores": round(sum(lap[name] for lap in laps) / wall, 2)
            for name in ("server", "load_generator", "others")}


def wait_until_quiet(limit_s: float) -> float:
    """Up to ``limit_s`` seconds for the machine to idle (other people's jobs); the seconds waited."""
    import psutil

    started = time.monotonic()
    while time.monotonic() - started < limit_s and psutil.cpu_percent(interval=1.0) > QUIET_PERCENT:
        pass
    return time.monotonic() - started


def run_levels(url: str, clip: bytes, server_pid: int, args: argparse.Namespace) -> list[dict]:
    """Every client count for ``duration / rounds`` seconds, round after round: a change in the
    machine's other load then hits every count alike instead of skewing one."""
    records = {c: [] for c in args.clients}
    laps = {c: [] for c in args.clients}
    rounds_rps = {c: [] for c in args.clients}
    waited = 0.0
    for _ in range(args.rounds):
        for clients in args.clients:
            waited += wait_until_quiet(args.wait_quiet)
            meter = CpuMeter(server_pid)
            batch, seconds = asyncio.run(drive(url, clip, clients, args.duration / args.rounds,
                                               args.max_requests // args.rounds))
            laps[clients].append(meter.lap())
            records[clients] += batch
            rounds_rps[clients].append(round(sum(r["status"] == "200" for r in batch) / seconds, 2))
    levels = []
    for clients in args.clients:
        elapsed = sum(lap["wall"] for lap in laps[clients])
        level = {"clients": clients, **describe(records[clients], elapsed), "rounds_rps": rounds_rps[clients],
                 "cpu": cores(laps[clients])}
        level["rps_per_server_core"] = round(level["throughput_rps"] / max(level["cpu"]["server_cores"], 1e-9), 2)
        levels.append(level)
        print(f"{clients} clients: {level['throughput_rps']} req/s, ok p50/p99 {level['latency_ok'].get('p50_ms')}/"
              f"{level['latency_ok'].get('p99_ms')} ms, {level['statuses']}, cpu {level['cpu']}", file=sys.stderr)
    print(f"waited {waited:.0f} s in all for a quiet machine", file=sys.stderr)
    return levels


def run_memory(url: str, clip: bytes, server_pid: int, clients: int, requests_n: int) -> dict:
    before = tree_rss_bytes(server_pid)
    meter = CpuMeter(server_pid)
    records, elapsed = asyncio.run(drive(url, clip, clients, LEAK_TIME_LIMIT_S, requests_n))
    after = tree_rss_bytes(server_pid)
    result = {"clients": clients, "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
              "rss_growth_mb": round((after - before) / 2**20, 1), **describe(records, elapsed),
              "cpu": cores([meter.lap()])}
    print(f"memory: {result['rss_before_mb']} -> {result['rss_after_mb']} MB over {result['requests']} requests",
          file=sys.stderr)
    return result


# ---- main ------------------------------------------------------------------------------------------
def targets(results: dict) -> dict:
    by_clients = {level["clients"]: level for level in results["load"]}
    phases = [*results["load"], results["memory"]]
    other_5xx = sum(n for level in phases for status, n in level["statuses"].items()
                    if status.startswith("exception") or (status.startswith("5") and status != "503"))
    checks: dict = {"no_5xx_but_503": {"value": other_5xx, "met": other_5xx == 0},
                    "rss_growth_mb": {"value": results["memory"]["rss_growth_mb"],
                                      "met": results["memory"]["rss_growth_mb"] < TARGET_RSS_GROWTH_MB}}
    if 1 in by_clients and 4 in by_clients:
        ratio = by_clients[4]["throughput_rps"] / by_clients[1]["throughput_rps"]
        checks["throughput_4_over_1"] = {"value": round(ratio, 2), "met": ratio >= TARGET_SCALING}
    if 8 in by_clients:
        p99 = by_clients[8]["latency_ok"].get("p99_ms", float("inf"))
        checks["p99_ms_at_8_clients"] = {"value": p99, "refused_503": by_clients[8]["statuses"].get("503", 0),
                                         "met": p99 <= TARGET_P99_MS}
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="what ser serve --model gets (default: data/train/model)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per client count")
    parser.add_argument("--rounds", type=int, default=4, help="the duration is split over this many rounds")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before each round wait up to this many seconds for other jobs to leave the CPU idle")
    parser.add_argument("--max-requests", type=int, default=2000, help="cap per client count")
    parser.add_argument("--leak-requests", type=int, default=2000, help="requests between the two RSS readings")
    parser.add_argument("--in-process", type=int, default=20, help="in-process predictions for reference")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra ser serve argument, e.g. --serve-arg=--workers=1 (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "bench_serve.json")
    args = parser.parse_args(argv)
    if (args.duration > 120 or args.max_requests > 10000 or args.leak_requests > 5000 or max(args.clients) > 64
            or args.wait_quiet > 300 or not 1 <= args.rounds <= 20):
        raise SystemExit("keep it bounded: --duration <= 120, --max-requests <= 10000, --leak-requests <= 5000, "
                         "clients <= 64, --wait-quiet <= 300, 1 <= --rounds <= 20")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as scratch:
        model, model_description = resolve_model(args.model, Path(scratch))
        clip, clip_description = three_second_clip()
        results: dict = {"model": model_description, "clip": clip_description, "clip_bytes": len(clip),
                         "cpu_count": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
                         "visuals": False, "settings": {k: vars(args)[k] for k in
                                                        ("duration", "rounds", "wait_quiet", "leak_requests")},
                         "in_process": bench_in_process(model, clip, args.in_process)}
        print(f"model: {model_description}\nclip: {clip_description}\nin process: {results['in_process']}",
              file=sys.stderr)
        with ser_serve(model, args.serve_arg, Path(scratch) / "serve.log") as (base, pid):
            health = requests.get(f"{base}/health", timeout=10).json()
            results["server"] = {"workers": health["workers"]["configured"],
                                 "max_queue": health["queue"]["capacity"], "timeout_s": health["timeout_s"],
                                 "threads_per_worker": health["workers"]["threads_per_worker"]}
            url = f"{base}/api/predict"
            asyncio.run(drive(url, clip, results["server"]["workers"], 30.0, 10))  # warm-up
            results["memory"] = run_memory(url, clip, pid, results["server"]["workers"], args.leak_requests)
            results["load"] = run_levels(url, clip, pid, args)
            results["rss_after_load_mb"] = round(tree_rss_bytes(pid) / 2**20, 1)
            results["server_outcomes"] = requests.get(f"{base}/health", timeout=10).json()["requests"]
        results["targets"] = targets(results)
    text = json.dumps(results, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
