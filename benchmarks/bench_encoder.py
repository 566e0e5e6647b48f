"""Encoder benchmark: every pooled depth from one ONNX Runtime pass, against the CTranslate2
encoder run once per depth of the previous default (a copy of the encoder cut at each of
depths 2, 4 and 6), side by side in one run.

Both read the same sha256-verified Whisper-base weights and the same inputs: real RAVDESS clips
cut or padded to ``--clip-s`` seconds of signal, then padded as ``features.whisper.pad_seconds``
pads (log-mel computed once, outside the timing). Each configuration runs ``--warmup`` times,
then ``--runs`` timed passes over the clips, on ``--threads`` intra-op threads; the median per
clip is reported. ``batch`` rows time the one-pass graph on several clips per call.

    python benchmarks/bench_encoder.py                 # writes metrics/bench_encoder.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import publish  # noqa: E402
from ser import project  # noqa: E402
from ser.audio import load_audio  # noqa: E402
from ser.features import whisper  # noqa: E402
from ser.features.ct2_layers import write_truncated  # noqa: E402
from ser.params import AudioParams, WhisperParams, override  # noqa: E402


def mirror() -> Path:
    return Path(os.environ.get("SER_DATA_MIRROR") or REPO.parent / "shared" / "datasets")


def inputs(clip_s: float, pad_s: float, count: int, audio_params: AudioParams) -> np.ndarray:
    """(count, 80, frames) log-mels of real clips, each ``clip_s`` of signal padded to ``pad_s``."""
    clips = sorted((mirror() / "ravdess").glob("Actor_0*/*.flac"))[::37][:count]
    signal, padded = int(clip_s * whisper.SAMPLE_RATE), int(pad_s * whisper.SAMPLE_RATE)
    mels = []
    for path in clips:
        y = load_audio(path, audio_params)[:signal]
        mels.append(whisper.log_mel(np.pad(y, (0, padded - len(y)))))
    return np.stack(mels)


OLD_LAYERS = [2, 4, 6]  # the default depths when the encoder ran once per depth


def three_pass_ct2(params: WhisperParams, threads: int, scratch: Path):
    """The encoder before: CTranslate2, a copy of the model cut at each depth of the previous
    default (:data:`OLD_LAYERS`), one run each."""
    import ctranslate2

    folder, digest = whisper.model_folder(params)
    whisper.verify_model(folder, digest)
    models = []
    for depth in OLD_LAYERS:
        target = scratch / f"depth{depth}"
        target.mkdir()
        write_truncated(folder / "model.bin", target / "model.bin", depth)
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / name)
        models.append(ctranslate2.models.Whisper(str(target), device="cpu", compute_type=params.compute_type,
                                                 intra_threads=threads, inter_threads=1))

    def run(mel: np.ndarray) -> None:
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))
        for model in models:
            model.encode(view, to_cpu=True)
    return run


def one_pass_onnx(params: WhisperParams, threads: int):
    encoder = whisper.Encoder(params.model_copy(update={"threads": threads}))

    def run(mel: np.ndarray) -> None:
        encoder.encode(mel if mel.ndim == 3 else mel[None])
    return run


def time_per_clip(run, mels: np.ndarray, warmup: int, runs: int, batch: int = 1) -> float:
    calls = [mels[i:i + batch] if batch > 1 else mels[i] for i in range(0, len(mels), batch)]
    for call in calls[:warmup]:
        run(call)
    passes = []
    for _ in range(runs):
        started = time.perf_counter()
        for call in calls:
            run(call)
        passes.append((time.perf_counter() - started) / len(mels))
    return 1000 * statistics.median(passes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-s", type=float, default=3.0)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[4])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "metrics" / "bench_encoder.json"))
    args = parser.parse_args(argv)

    params = project.load_params(project.params_path())
    audio, wparams = params.audio, params.features.whisper
    mels = inputs(args.clip_s, wparams.pad_seconds, args.clips, audio)
    result = {"clip_s": args.clip_s, "pad_seconds": wparams.pad_seconds, "layers": wparams.layers,
              "old_layers": OLD_LAYERS,
              "compute_type": wparams.compute_type, "clips": len(mels), "cpu": platform.processor() or
              platform.machine(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as scratch:
        for threads in args.threads:
            folder = Path(scratch) / f"t{threads}"
            folder.mkdir()
            old = time_per_clip(three_pass_ct2(wparams, threads, folder), mels, args.warmup, args.runs)
            new = time_per_clip(one_pass_onnx(wparams, threads), mels, args.warmup, args.runs)
            same = time_per_clip(one_pass_onnx(override(wparams, {"layers": OLD_LAYERS}), threads), mels, args.warmup,
                                 args.runs)
            result["rows"].append({"threads": threads, "old_ms_per_clip": round(old, 1),
                                   "new_ms_per_clip": round(new, 1), "ratio": round(new / old, 3),
                                   "new_old_layers_ms_per_clip": round(same, 1)})
            for batch in args.batch:
                batched = time_per_clip(one_pass_onnx(wparams, threads), mels, 1, args.runs, batch)
                result["rows"].append({"threads": threads, "batch": batch, "new_ms_per_clip": round(batched, 1)})
    single = result["rows"][0]
    result.update({key: single[key] for key in ("old_ms_per_clip", "new_ms_per_clip", "ratio")})
    publish(result, args.out, print_table)


def print_table(result: dict) -> None:
    print(f"{result['clips']} clips of {result['clip_s']} s padded to {result['pad_seconds']} s, {result['compute_type']}; "
          f"before: depths {result['old_layers']}, one CTranslate2 pass each; now: depths {result['layers']}, one pass")
    for row in result["rows"]:
        if "batch" in row:
            print(f"  threads {row['threads']}  one pass, batch {row['batch']}: {row['new_ms_per_clip']:7.1f} ms/clip")
        else:
            print(f"  threads {row['threads']}  three passes (CTranslate2) {row['old_ms_per_clip']:7.1f} ms/clip  "
                  f"one pass (ONNX Runtime) {row['new_ms_per_clip']:7.1f} ms/clip  ratio {row['ratio']:.3f}  "
                  f"(one pass, depths {result['old_layers']}: {row['new_old_layers_ms_per_clip']:.1f})")


if __name__ == "__main__":
    main()
