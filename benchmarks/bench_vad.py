"""Which segmenter finds the clips of an assembled recording: the front end's energy envelope
with hysteresis (``ser.serving.timeline.speech_segments``) or WebRTC's VAD (``webrtcvad-wheels``).

Recordings are assembled (``ser.serving.timeline.assemble``) from real clips of unseen RAVDESS
actors and both TESS speakers, front-end processed (trimmed, peak-normalized), five per recording
with pauses of 1.0 to 2.0 s of white noise (-60 and -45 dBFS) or zeros between them. The truth
is each clip's place: its trimmed extent. Both methods get the same joining (pauses under
``min_silence_s``) and the same shortest segment (``min_speech_s``) from params.yaml. Scored:
recordings whose segment count is exact, and the boundary errors over those recordings.
Results go to ``metrics/bench_vad.json``.

WebRTC's VAD is not a dependency of ser: ``pip install webrtcvad-wheels==2.0.14`` to run this.

    python benchmarks/bench_vad.py [--recordings 150]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import publish  # noqa: E402

RATE = 16000
NOISES = (-60.0, -45.0, None)  # dBFS RMS of the pauses; None = digital silence


def clip_pool(mirror: Path) -> list[Path]:
    ravdess = sorted(p for p in (mirror / "ravdess").rglob("*.flac") if int(p.parent.name[-2:]) >= 10)
    tess = sorted((mirror / "tess").glob("*.flac"))
    return ravdess + tess


def webrtc_segments(y: np.ndarray, aggressiveness: int, segments) -> list[tuple[int, int]]:
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    frame = int(0.03 * RATE)
    pcm = (np.clip(y, -1, 1) * 32767).astype(np.int16)
    voiced = np.array([vad.is_speech(pcm[i:i + frame].tobytes(), RATE)
                       for i in range(0, pcm.size - frame + 1, frame)])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    runs = [(int(a) * frame, int(b) * frame) for a, b in zip(edges[::2], edges[1::2])]
    joined: list[tuple[int, int]] = []
    for a, b in runs:
        if joined and a - joined[-1][1] < segments.min_silence_s * RATE:
            joined[-1] = (joined[-1][0], b)
        else:
            joined.append((a, b))
    return [(a, b) for a, b in joined if b - a >= segments.min_speech_s * RATE]


def energy_segments(y: np.ndarray, segments) -> list[tuple[int, int]]:
    from ser.audio import frame_energies
    from ser.serving.timeline import speech_segments

    return speech_segments(frame_energies([y], RATE), y.size, RATE, segments)


def score(found: list[tuple[int, int]], truth: list[tuple[int, int]]) -> tuple[bool, list[float]]:
    if len(found) != len(truth):
        return False, []
    return True, [abs(f - t) / RATE for pair_f, pair_t in zip(found, truth) for f, t in zip(pair_f, pair_t)]


def summary(exact: list[bool], errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors) if errors else np.asarray([np.nan])
    return {"count_exact": float(np.mean(exact)), "boundary_median_s": float(np.median(e)),
            "boundary_p95_s": float(np.percentile(e, 95)), "boundary_max_s": float(np.max(e)),
            "within_0_3_s": float(np.mean(e <= 0.3))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recordings", type=int, default=150)
    parser.add_argument("--mirror", default=None, help="default: $SER_DATA_MIRROR")
    parser.add_argument("--out", default=str(REPO / "metrics" / "bench_vad.json"))
    args = parser.parse_args()
    import os

    from tqdm import tqdm

    from ser import project
    from ser.audio import load_audio
    from ser.serving.timeline import assemble

    params = project.load_params(REPO / "params.yaml")
    segments = params.predict.segments
    pool = clip_pool(Path(args.mirror or os.environ["SER_DATA_MIRROR"]))
    rng = np.random.default_rng(0)
    methods = ["energy", *(f"webrtc_{a}" for a in range(4))]
    exact = {m: [] for m in methods}
    errors = {m: [] for m in methods}
    for index in tqdm(range(args.recordings), desc="recordings", unit="recording"):
        clips = [load_audio(pool[i], params.audio) for i in rng.choice(len(pool), 5, replace=False)]
        y, truth = assemble(clips, RATE, list(rng.uniform(1.0, 2.0, 6)), NOISES[index % len(NOISES)], seed=index)
        for method in methods:
            found = (energy_segments(y, segments) if method == "energy"
                     else webrtc_segments(y, int(method[-1]), segments))
            ok, errs = score(found, truth)
            exact[method].append(ok)
            errors[method].extend(errs)
    result = {"recordings": args.recordings, "clips_per_recording": 5, "segments": segments.as_dict(),
              "methods": {m: summary(exact[m], errors[m]) for m in methods}}

    def table(r):
        print(f"{'method':<10} {'count exact':>11} {'median s':>9} {'p95 s':>7} {'max s':>7} {'<=0.3 s':>8}")
        for m, s in r["methods"].items():
            print(f"{m:<10} {s['count_exact']:>11.2f} {s['boundary_median_s']:>9.3f} {s['boundary_p95_s']:>7.3f} "
                  f"{s['boundary_max_s']:>7.3f} {s['within_0_3_s']:>8.2f}")

    publish(result, args.out, table)


if __name__ == "__main__":
    main()
