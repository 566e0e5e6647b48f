"""``ser predict``: real clips in, one answer per clip out; a bad file costs only its own line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ser.predict import Predictor, split_windows, window_starts
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
    assert split_windows(np.zeros(int(3.7 * 16000)), 16000, 3.0, 1.5) == [(0, int(3.7 * 16000))]


def test_windows_of_a_ten_minute_recording_cover_it_edge_to_edge():
    rate, seconds = 16000, 600
    ranges = split_windows(np.zeros(seconds * rate, dtype=np.float32), rate, 3.0, 1.5)
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
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(broken) in error_lines[0]


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


def test_the_default_model_is_the_registered_one_and_its_absence_is_explained(tmp_path, monkeypatch):
    from ser.pyfunc import load_predictor

    from tests.params_support import PARAMS

    with pytest.raises(ValueError, match=r"models:/ser-emotion/latest.*--model"):
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
    from ser.normalize import standardize_groups
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
