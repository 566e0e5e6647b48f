"""``ser predict``: real clips in, one answer per clip out; a bad file costs only its own line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.serving.predict import Predictor, window_ranges, window_starts
from tests.serve_support import (PYTHON, REPO, ravdess_clip, long_recording, shared_bundle_dir, subprocess_env,
                                 train_small_bundle, wav_bytes)


@pytest.fixture(scope="session")
def small_bundle(real_mirror, tmp_path_factory) -> Path:
    return train_small_bundle(real_mirror, shared_bundle_dir(tmp_path_factory))


def run_ser(*args: str, env: dict | None = None, executable: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (executable or [PYTHON, "-m", "ser"]) + list(args)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env or subprocess_env())


# ---- windows ------------------------------------------------------------------------------------
def test_a_clip_up_to_half_a_hop_longer_than_a_window_is_scored_whole():
    assert window_starts(2 * 16000, 3 * 16000, 24000) == [0]
    assert window_starts(3 * 16000, 3 * 16000, 24000) == [0]
    assert window_ranges(int(3.7 * 16000), 16000, 3.0, 1.5) == [(0, int(3.7 * 16000))]


def test_windows_of_a_ten_minute_recording_cover_it_edge_to_edge():
    rate, seconds = 16000, 600
    ranges = window_ranges(seconds * rate, rate, 3.0, 1.5)
    starts = np.array([start for start, _ in ranges])
    assert len(ranges) == 1 + round((seconds - 3.0) / 1.5)
    assert ranges[0][0] == 0 and ranges[-1][1] == seconds * rate
    assert all(end - start == 3 * rate for start, end in ranges)
    steps = np.diff(starts)
    assert steps.min() > 0 and steps.max() <= 1.5 * rate + 1  # no hole, no window skipped


# ---- real clips ---------------------------------------------------------------------------------
@pytest.mark.mirror
def test_ser_predict_json_real_clips_and_one_corrupt_file(small_bundle, real_mirror, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVE but not really audio")
    paths = [ravdess_clip(real_mirror, 12, "05"), broken, ravdess_clip(real_mirror, 14, "04"),
             real_mirror / "tess" / "YAF_germ_angry.wav",  # AIFF named .wav, kept as released
             real_mirror / "tess" / "OAF_back_happy.flac"]
    result = run_ser("predict", *map(str, paths), "--model", str(small_bundle), "--format", "json")

    assert result.returncode == 1, result.stderr  # some file failed
    answers = json.loads(result.stdout)
    assert [a["path"] for a in answers] == [str(p) for p in paths]
    classes = json.loads((small_bundle / "bundle.json").read_text())["classes"]
    for answer in answers[:1] + answers[2:]:
        assert "error" not in answer, answer
        probabilities = answer["probabilities"]
        assert list(probabilities) == classes
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        assert answer["label"] == max(probabilities, key=probabilities.get)
        assert answer["windows"] and answer["duration_s"] > 0.5
    failed = answers[1]
    assert set(failed) == {"path", "error"}
    assert str(broken) in failed["error"] and "cannot decode" in failed["error"]
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("ser predict: 4 files answered, 1 failed: ") and str(broken) in summary, result.stderr


@pytest.mark.mirror
def test_min_confidence_answers_uncertain_and_keeps_the_probabilities(small_bundle, real_mirror):
    clip = str(ravdess_clip(real_mirror, 12, "05"))
    plain = json.loads(run_ser("predict", clip, "--model", str(small_bundle), "--format", "json").stdout)[0]
    top = max(plain["probabilities"].values())
    assert plain["confidence"] == pytest.approx(top) and plain["label"] != "uncertain"
    unsure = json.loads(run_ser("predict", clip, "--model", str(small_bundle), "--format", "json",
                                "--min-confidence", str(min(1.0, top + 0.01))).stdout)[0]
    assert unsure["label"] == "uncertain" and unsure["probabilities"] == plain["probabilities"]
    assert all(window["label"] == "uncertain" for window in unsure["windows"]
               if max(window["probabilities"].values()) < top + 0.01)
    sure = json.loads(run_ser("predict", clip, "--model", str(small_bundle), "--format", "json",
                              "--min-confidence", str(top - 0.01)).stdout)[0]
    assert sure["label"] == plain["label"]
    with pytest.raises(ValueError, match="between 0 and 1"):
        Predictor(None, 3.0, 1.5, min_confidence=1.5)


@pytest.mark.mirror
def test_ser_console_script_reads_folders_as_a_table(small_bundle, real_mirror, tmp_path):
    folder = tmp_path / "recordings"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.flac").symlink_to(ravdess_clip(real_mirror, 16, "03"))
    (folder / "nested" / "b.flac").symlink_to(ravdess_clip(real_mirror, 18, "06"))
    (folder / "notes.txt").write_text("not audio, and not picked up from a folder")
    console_script = Path(sys.executable).parent / "ser"
    result = run_ser("predict", str(folder), "--model", str(small_bundle), executable=[str(console_script)])

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    classes = json.loads((small_bundle / "bundle.json").read_text())["classes"]
    assert lines[0].split() == ["path", "label", *classes]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == [str(folder / "a.flac"), str(folder / "nested" / "b.flac")]
    for row in rows:
        percents = [float(cell.rstrip("%")) for cell in row[2:]]
        assert len(percents) == len(classes)
        assert sum(percents) == pytest.approx(100.0, abs=0.1 * len(classes))
        assert row[1] == classes[int(np.argmax(percents))]


@pytest.mark.mirror
def test_a_folder_with_a_broken_file_gets_its_error_row_in_the_table_and_exit_status_1(small_bundle, real_mirror,
                                                                                      tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    (folder / "a.flac").symlink_to(ravdess_clip(real_mirror, 16, "03"))
    (folder / "b.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE but not really audio")
    result = run_ser("predict", str(folder), "--model", str(small_bundle))

    assert result.returncode == 1, result.stderr
    rows = result.stdout.strip().splitlines()[1:]
    assert len(rows) == 2 and rows[0].split()[0] == str(folder / "a.flac")
    assert rows[1].startswith(str(folder / "b.wav")) and "ERROR:" in rows[1] and "cannot decode" in rows[1]
    assert "ERROR" not in rows[0]


@pytest.mark.mirror
def test_a_folder_without_audio_is_exit_status_2_with_the_reason(small_bundle, tmp_path):
    folder = tmp_path / "nothing-here"
    folder.mkdir()
    (folder / "notes.txt").write_text("not audio")
    result = run_ser("predict", str(folder), "--model", str(small_bundle))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"ser predict: no audio files found in {folder}"


@pytest.mark.mirror
def test_a_long_recording_gets_one_prediction_per_window_and_their_mean(small_bundle, real_mirror, tmp_path):
    predictor = Predictor.from_bundle_dir(small_bundle, window_s=3.0, hop_s=1.5)
    recording = tmp_path / "call.wav"
    recording.write_bytes(wav_bytes(long_recording(real_mirror, 13.0), 16000))
    prediction = predictor.predict_source(recording, str(recording))

    expected_windows = 1 + round((prediction.duration_s - 3.0) / 1.5)
    assert len(prediction.windows) == expected_windows > 4
    window_matrix = np.array([[w.probabilities[c] for c in predictor.classes] for w in prediction.windows])
    aggregate = np.array([prediction.probabilities[c] for c in predictor.classes])
    assert np.allclose(aggregate, window_matrix.mean(axis=0), atol=1e-9)
    assert np.allclose(window_matrix.sum(axis=1), 1.0, atol=1e-6)
    assert prediction.windows[0].start_s == 0.0
    assert prediction.windows[-1].end_s == pytest.approx(prediction.duration_s, abs=1e-3)


def test_without_a_champion_version_the_default_model_lookup_says_to_run_ser_promote(tmp_path, monkeypatch):
    from ser.serving.loader import load_predictor

    from tests.params_support import PARAMS

    with pytest.raises(ValueError, match=r"models:/ser-emotion@champion.*ser promote.*--model"):
        load_predictor(None, tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}",
                       registered_model=PARAMS["mlflow"]["registered_model"], predict_params=PARAMS["predict"])


@pytest.mark.mirror
def test_csv_output_has_a_row_per_clip_and_window_and_the_error(small_bundle, real_mirror, tmp_path):
    import csv
    import io

    from ser.cli import write_csv

    predictor = Predictor.from_bundle_dir(small_bundle, window_s=3.0, hop_s=1.5)
    recording = tmp_path / "long.wav"
    recording.write_bytes(wav_bytes(long_recording(real_mirror, 7.5), 16000))
    missing = tmp_path / "missing.flac"
    predictions = predictor.predict_paths([recording, missing], progress=False)
    out = io.StringIO()
    write_csv(predictions, predictor.classes, windows=True, out=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))

    assert [r["window"] for r in rows] == ["all", *map(str, range(len(predictions[0].windows))), ""]
    assert len(predictions[0].windows) == 1 + round((predictions[0].duration_s - 3.0) / 1.5)
    for row in rows[:-1]:
        assert sum(float(row[c]) for c in predictor.classes) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(predictor.classes, key=lambda c: float(row[c]))
    assert rows[-1]["path"] == str(missing) and "no such file" in rows[-1]["error"]


# ---- speaker normalization (transductive) ----------------------------------------------------------
@pytest.mark.mirror
def test_normalize_by_folder_scores_each_speakers_clips_together(real_mirror, tmp_path):
    import shutil

    from ser.audio import load_audio
    from ser.models import MODELS
    from ser.models.bundle import ModelBundle
    from ser.features.speaker_norm import standardize_groups
    from tests.serve_support import RAVDESS_EMOTIONS, TRAIN_ACTORS, project_params

    params = project_params()
    classes = list(RAVDESS_EMOTIONS.values())
    bundle = ModelBundle("logreg", classes, "egemaps", params["audio"], params["features"], None,
                         speaker_norm="speaker")
    rows, labels, speakers = [], [], []
    for actor in TRAIN_ACTORS:
        for code, emotion in RAVDESS_EMOTIONS.items():
            rows.append(load_audio(ravdess_clip(real_mirror, actor, code), params["audio"]))
            labels.append(classes.index(emotion))
            speakers.append(actor)
    X = standardize_groups(bundle.inputs_from_signals(rows), speakers)
    bundle.estimator = MODELS["logreg"]({**params["model"]["logreg"], "C": 1.0}, X.shape[1:], len(classes), 0)
    bundle.estimator.fit(X, np.asarray(labels))
    bundle.save(tmp_path / "model")
    predictor = Predictor.from_bundle_dir(tmp_path / "model", window_s=3.0, hop_s=1.5)

    speaker = tmp_path / "speaker_a"
    speaker.mkdir()
    sources = [ravdess_clip(real_mirror, 10, code) for code in list(RAVDESS_EMOTIONS)[:5]]
    for source in sources:
        shutil.copy(source, speaker / source.name)
    (speaker / "broken.wav").write_bytes(b"not audio")
    alone = tmp_path / "speaker_b"
    alone.mkdir()
    shutil.copy(sources[0], alone / sources[0].name)

    predictions = predictor.predict_paths([speaker, alone], progress=False, normalize_by="folder")
    by_name = {Path(p.source).name + "@" + Path(p.source).parent.name: p for p in predictions}
    good = [by_name[f"{s.name}@speaker_a"] for s in sorted(sources)]
    assert all(p.ok for p in good)
    expected = bundle.estimator.predict_proba(standardize_groups(
        bundle.inputs_from_signals([load_audio(speaker / s.name, params["audio"]) for s in sorted(sources)]),
        ["a"] * len(sources)))
    got = np.array([[p.probabilities[c] for c in classes] for p in good])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert "cannot decode" in by_name["broken.wav@speaker_a"].error
    assert "at least two" in by_name[f"{sources[0].name}@speaker_b"].error
    # A speaker-normalized model refuses to score a lone clip, and says why.
    single = predictor.try_predict(sources[0], str(sources[0]))
    assert not single.ok and "normalize-by folder" in single.error


# ---- long files: streamed, never held whole ------------------------------------------------------------
def window_matrix(prediction, classes) -> np.ndarray:
    return np.array([[w.probabilities[c] for c in classes] for w in prediction.windows])


@pytest.mark.mirror
def test_a_long_file_is_streamed_and_scored_as_the_whole_file_path_scores_it(small_bundle, real_mirror, tmp_path,
                                                                              monkeypatch):
    predictor = Predictor.from_bundle_dir(small_bundle, window_s=3.0, hop_s=1.5)
    recording = tmp_path / "meeting.flac"
    edge = np.zeros(48000, dtype=np.float32)  # silent edges: the windows start where the trim says
    sf.write(recording, np.concatenate([edge, long_recording(real_mirror, 150.0, 48000), edge[:20000]]), 48000,
             subtype="PCM_16")
    whole = predictor.predict_signal(predictor.load(recording), name=str(recording))

    def refuse(*args, **kwargs):
        raise AssertionError("a streamed file must not be decoded whole")

    monkeypatch.setattr("ser.serving.predict.load_audio", refuse)
    monkeypatch.setattr("ser.audio.decode", refuse)
    assert predictor.streams(recording)
    streamed = predictor.predict_source(recording, str(recording))

    assert streamed.duration_s == whole.duration_s < 150.0 + 1.0  # the edge trim, found in a first pass
    assert [(w.start_s, w.end_s) for w in streamed.windows] == [(w.start_s, w.end_s) for w in whole.windows]
    assert len(streamed.windows) == 1 + round((streamed.duration_s - 3.0) / 1.5) > 64
    # Same samples, trim and gain as load_audio, then the same per-window normalization: the same
    # numbers (bit for bit today; the tolerance leaves room for a multithreaded feature extractor).
    np.testing.assert_allclose(window_matrix(streamed, predictor.classes),
                               window_matrix(whole, predictor.classes), rtol=0, atol=1e-9)
    assert streamed.label == whole.label


@pytest.mark.mirror
def test_only_a_file_longer_than_one_window_is_streamed(small_bundle, real_mirror, tmp_path):
    predictor = Predictor.from_bundle_dir(small_bundle, window_s=3.0, hop_s=1.5)
    clip = ravdess_clip(real_mirror, 12, "05")  # about 3.7 s: one window, scored whole as in training
    recording = tmp_path / "call.wav"
    recording.write_bytes(wav_bytes(long_recording(real_mirror, 7.0), 16000))

    assert not predictor.streams(clip)
    assert not predictor.streams(recording.read_bytes())  # bytes are bounded by serve.max_bytes
    assert predictor.streams(recording)
    missing = predictor.try_predict(tmp_path / "missing.flac", "missing.flac")
    assert not predictor.streams(tmp_path / "missing.flac") and "no such file" in missing.error


def write_talk(path: Path, mirror: Path, seconds: float) -> None:
    """Real speech with pauses, FLAC at the mirror's 16 kHz: RAVDESS clips of unseen actors looped,
    written clip by clip."""
    from ser.audio import decode, to_mono

    clips = sorted((mirror / "ravdess").glob("Actor_1[0-9]/*.flac"))
    rng = np.random.default_rng(0)
    target, written, index = int(seconds * 16000), 0, 0
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, format="FLAC", subtype="PCM_16") as out:
        while written < target:
            samples, rate = decode(clips[index % len(clips)])
            assert rate == 16000, clips[index % len(clips)]
            pause = np.zeros(int(rng.uniform(0.3, 1.5) * rate), dtype=np.float32)
            piece = np.concatenate([to_mono(samples), pause])[:target - written]
            out.write(piece)
            written, index = written + piece.size, index + 1


def peak_rss_of_ser_predict(recording: Path, bundle: Path, answer: Path) -> tuple[int, dict]:
    """Run ``ser predict`` in a subprocess; the peak RSS of its process tree (sampled) and its answer."""
    import time

    import psutil

    command = [PYTHON, "-m", "ser", "predict", str(recording), "--model", str(bundle), "--format", "json",
               "--hop-s", "3.0"]  # half the windows of the default: the same memory, half the test time
    errors = answer.with_suffix(".stderr")
    with open(answer, "w") as stdout, open(errors, "w") as stderr:  # files, not pipes: a full pipe stalls the child
        process = subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr, env=subprocess_env())
        root, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.Error:  # it has just ended
                break
            rss = 0
            for member in members:
                try:
                    rss += member.memory_info().rss
                except psutil.Error:  # it ended between the listing and the reading
                    pass
            peak = max(peak, rss)
            time.sleep(0.05)
        process.wait()
    assert process.returncode == 0, errors.read_text()
    return peak, json.loads(answer.read_text())[0]


@pytest.mark.mirror
def test_memory_of_ser_predict_stays_flat_in_the_recording_length(small_bundle, real_mirror, tmp_path):
    peaks, answers = {}, {}
    for minutes in (2, 10):
        recording = tmp_path / f"talk_{minutes}min.flac"
        write_talk(recording, real_mirror, minutes * 60.0)
        peaks[minutes], answers[minutes] = peak_rss_of_ser_predict(recording, small_bundle,
                                                                    tmp_path / f"answer_{minutes}.json")

    assert len(answers[10]["windows"]) > 4.5 * len(answers[2]["windows"]) and len(answers[2]["windows"]) > 30
    assert answers[10]["duration_s"] > 590
    # Held whole, the 10-minute file cost ~140 MB more than the 2-minute one (its decoded samples,
    # their resampled copy and a copy of every window); streamed, a few MB (window predictions).
    growth_mb = (peaks[10] - peaks[2]) / 2**20
    assert growth_mb < 40, f"peak RSS {peaks[2] / 2**20:.0f} MB at 2 min, {peaks[10] / 2**20:.0f} MB at 10 min"
    assert peaks[10] < 2**30
