"""A long recording as a timeline (``ser predict --timeline``, ``?timeline=true``, the page's strip),
on a recording assembled from real clips of known emotions with pauses between them; and a quiet
terminal: ``ser predict`` over a folder shows progress and a summary, and no library warnings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.serve_support import (PYTHON, REPO, fit_bundle, post_clip, ravdess_clip, ser_serve, shared_bundle_dir,
                                 subprocess_env, train_small_bundle)
from tests.test_web import browser  # noqa: F401  (tests/test_web.py's headless Chromium, a fixture)

pytestmark = pytest.mark.mirror

RATE = 16000
TOLERANCE_S = 0.3
GAPS_S = [1.0, 1.5, 2.0, 1.2, 1.8, 1.0]


@pytest.fixture(scope="module")
def small_bundle(real_mirror, tmp_path_factory) -> Path:
    return train_small_bundle(real_mirror, shared_bundle_dir(tmp_path_factory))


def clips_of_known_emotions(mirror: Path) -> list[Path]:
    """Five real clips of speakers the small model never heard: four RAVDESS actors and TESS."""
    return [ravdess_clip(mirror, 10, "05"), ravdess_clip(mirror, 11, "04", statement="02"),
            ravdess_clip(mirror, 12, "03"), mirror / "tess" / "YAF_dog_happy.flac",
            ravdess_clip(mirror, 13, "06", repetition="02")]


@pytest.fixture(scope="module")
def recording(real_mirror, tmp_path_factory) -> tuple[Path, list[Path], list[tuple[float, float]]]:
    """long.wav: the clips as the front end gives them (trimmed, normalized), with 1.0-2.0 s of
    low noise (-60 dBFS) before, between and after; the truth is where each clip lies."""
    from ser.audio import load_audio
    from ser.serving.timeline import assemble
    from tests.params_support import params

    clips = clips_of_known_emotions(real_mirror)
    y, truth = assemble([load_audio(clip, params()["audio"]) for clip in clips], RATE, GAPS_S, noise_dbfs=-60.0)
    path = tmp_path_factory.mktemp("timeline") / "long.wav"
    sf.write(path, y, RATE, subtype="PCM_16")
    return path, clips, [(start / RATE, end / RATE) for start, end in truth]


def run_ser(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "ser", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env or subprocess_env())


def assert_finds_each_clip(segments: list[dict], truth: list[tuple[float, float]]) -> None:
    assert len(segments) == len(truth), segments
    for segment, (start, end) in zip(segments, truth):
        assert abs(segment["start_s"] - start) <= TOLERANCE_S, (segment, start)
        assert abs(segment["end_s"] - end) <= TOLERANCE_S, (segment, end)


def test_ser_predict_timeline_json_finds_each_clip_with_the_label_the_clip_gets_alone(small_bundle, recording):
    path, clips, truth = recording
    result = run_ser("predict", "--timeline", "--format", "json", str(path), "--model", str(small_bundle))
    assert result.returncode == 0, result.stderr
    [timeline] = json.loads(result.stdout)
    assert timeline["path"] == str(path)
    assert timeline["duration_s"] == pytest.approx(sf.info(str(path)).duration, abs=0.01)
    assert_finds_each_clip(timeline["segments"], truth)

    alone = run_ser("predict", "--format", "json", *map(str, clips), "--model", str(small_bundle))
    assert alone.returncode == 0, alone.stderr
    labels = [answer["label"] for answer in json.loads(alone.stdout)]
    assert [segment["label"] for segment in timeline["segments"]] == labels
    classes = json.loads((small_bundle / "bundle.json").read_text())["classes"]
    for segment in timeline["segments"]:
        assert list(segment["probabilities"]) == classes
        assert sum(segment["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert segment["confidence"] == pytest.approx(max(segment["probabilities"].values()))
        assert segment["windows"] >= 1


def test_table_and_csv_print_the_same_segments(small_bundle, recording):
    path, _, truth = recording
    table = run_ser("predict", "--timeline", str(path), "--model", str(small_bundle))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].startswith(f"{path}  (") and f"{len(truth)} speech segments" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == len(truth)
    as_csv = run_ser("predict", "--timeline", "--format", "csv", str(path), "--model", str(small_bundle))
    records = [line.split(",") for line in as_csv.stdout.strip().splitlines()]
    assert records[0][:6] == ["path", "segment", "start_s", "end_s", "label", "confidence"]
    assert [(r[4], round(float(r[2]), 2)) for r in records[1:]] == [(row[2], float(row[0])) for row in rows]


def test_a_streamed_file_and_the_same_bytes_in_memory_get_one_timeline(small_bundle, recording, monkeypatch):
    from ser.params import load
    from ser.serving import timeline as timeline_module
    from ser.serving.predict import load_bundle_predictor

    path, _, truth = recording
    predict = load(REPO / "params.yaml").predict
    predictor = load_bundle_predictor(small_bundle, predict)
    in_memory = timeline_module.timeline(predictor, path.read_bytes(), predict.segments, "long.wav")

    def whole_file(*args, **kwargs):  # the streamed path must never decode the file in one piece
        raise AssertionError("a file on disk was loaded whole")

    monkeypatch.setattr(timeline_module, "load_audio", whole_file)
    streamed = timeline_module.timeline(predictor, path, predict.segments)
    assert [(s.start_s, s.end_s, s.label) for s in streamed.segments] == \
        [(s.start_s, s.end_s, s.label) for s in in_memory.segments]
    for a, b in zip(streamed.segments, in_memory.segments):
        assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-5)
    assert_finds_each_clip(streamed.to_dict()["segments"], truth)
    assert in_memory.front_end_start_s == pytest.approx(truth[0][0], abs=0.05)  # where the front end's trim starts


def test_pauses_shorter_than_min_silence_stay_inside_a_segment_and_silence_has_none(real_mirror):
    from ser.audio import frame_energies, load_audio
    from ser.serving.timeline import assemble, speech_segments
    from tests.params_support import params

    segments = params()["predict"]["segments"]
    clip = load_audio(ravdess_clip(real_mirror, 15, "05"), params()["audio"])
    short_pause = segments["min_silence_s"] / 2
    y, truth = assemble([clip, clip], RATE, [1.0, short_pause, 1.0], noise_dbfs=-60.0)
    found = speech_segments(frame_energies([y], RATE), y.size, RATE, segments)
    assert len(found) == 1 and abs(found[0][0] - truth[0][0]) / RATE <= TOLERANCE_S
    assert abs(found[0][1] - truth[1][1]) / RATE <= TOLERANCE_S
    silence = np.zeros(5 * RATE, dtype=np.float32)
    assert speech_segments(frame_energies([silence], RATE), silence.size, RATE, segments) == []
    burst = {**segments, "min_speech_s": 10.0}  # longer than the clip: no segment is that long
    assert speech_segments(frame_energies([y], RATE), y.size, RATE, burst) == []


def test_a_timeline_that_fails_keeps_the_clips_answer(small_bundle, recording):
    """The worker's answer to ``?timeline=true``: the segments' error in place of the timeline,
    the label and probabilities of the clip as without it."""
    from ser.params import load
    from ser.serving import workers
    from ser.serving.predict import load_bundle_predictor

    path, _, _ = recording
    predictor = load_bundle_predictor(small_bundle, load(REPO / "params.yaml").predict)
    predictor.segments = None  # a server started without predict.segments cannot find speech
    plain_kind, plain = workers.answer(predictor, path.read_bytes(), "long.wav", False)
    kind, body = workers.answer(predictor, path.read_bytes(), "long.wav", False, True)
    assert plain_kind == kind == "ok", body
    answer, plain = json.loads(body), json.loads(plain)
    assert "predict.segments" in answer["timeline"]["error"], answer["timeline"]
    assert answer["label"] == plain["label"] and answer["probabilities"] == plain["probabilities"]


def test_timeline_refuses_windows(small_bundle, recording):
    result = run_ser("predict", "--timeline", "--windows", str(recording[0]), "--model", str(small_bundle))
    assert result.returncode == 2 and "cannot be combined with --windows" in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_the_api_returns_the_timeline_when_asked(small_bundle, recording, tmp_path):
    path, _, truth = recording
    with ser_serve("--model", str(small_bundle), "--workers", "1", log_path=tmp_path / "serve.log") as (base, _):
        plain = post_clip(base, "long.wav", path.read_bytes())
        asked = post_clip(base, "long.wav", path.read_bytes(), timeline="true")
    assert plain.status_code == 200 and "timeline" not in plain.json()
    assert asked.status_code == 200, asked.text
    answer = asked.json()
    assert_finds_each_clip(answer["timeline"]["segments"], truth)
    assert answer["label"] == plain.json()["label"]


# ---- a quiet, helpful terminal ----------------------------------------------------------------------

def plain_env() -> dict[str, str]:
    """The environment a user has: none of the test helpers' warning filters."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TF_CPP_MIN_LOG_LEVEL")}
    return env


@pytest.fixture(scope="module")
def keras_bundle(real_mirror, tmp_path_factory) -> Path:
    """A small real Keras model (one epoch of a 1-D CNN on log-mel frames): TensorFlow is loaded to score."""
    from tests.serve_support import RAVDESS_EMOTIONS, project_params

    settings = {**project_params()["model"]["cnn1d"], "epochs": 1}
    return fit_bundle(real_mirror, tmp_path_factory.mktemp("keras") / "bundle", (1,), RAVDESS_EMOTIONS, "cnn1d",
                      "logmel", settings)


@pytest.mark.parametrize("model", ["small_bundle", "keras_bundle"])
def test_ser_predict_over_a_folder_shows_progress_and_a_summary_and_no_warnings(model, request, real_mirror,
                                                                                tmp_path):
    bundle = request.getfixturevalue(model)
    folder = tmp_path / "recordings"
    folder.mkdir()
    for index, actor in enumerate((16, 17, 18)):
        (folder / f"{index}.flac").symlink_to(ravdess_clip(real_mirror, actor, "03"))
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE but not really audio")
    result = run_ser("predict", str(folder), "--model", str(bundle), env=plain_env())

    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ser predict: 3 files answered, 1 failed: ") and "broken.wav: cannot decode" in lines[-1]
    assert "predicting: 100%" in result.stderr and "4/4" in result.stderr  # the tqdm bar, on stderr
    noise = [line for line in lines if "warning" in line.lower() or "I0000" in line or "oneDNN" in line]
    assert noise == [], result.stderr
    assert "broken.wav  ERROR:" in result.stdout and "predicting" not in result.stdout


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_draws_the_timeline_strip_under_the_waveform(small_bundle, recording, tmp_path, browser):
    from selenium.webdriver.common.by import By

    from tests.test_web import upload
    path, _, truth = recording
    with ser_serve("--model", str(small_bundle), "--workers", "1", log_path=tmp_path / "serve.log") as (base, _):
        api = post_clip(base, "long.wav", path.read_bytes(), timeline="true").json()
        upload(browser, base, path, "done")
        blocks = browser.find_elements(By.CSS_SELECTOR, "#timeline .timeline-segment")
        assert [b.get_attribute("data-label") for b in blocks] == [s["label"] for s in api["timeline"]["segments"]]
        assert len(blocks) == len(truth)
        strip = browser.find_element(By.CSS_SELECTOR, "#timeline .timeline-strip")
        waveform = browser.find_element(By.ID, "waveform")
        assert strip.location["y"] > waveform.location["y"]  # under the waveform
        assert abs(strip.size["width"] - waveform.size["width"]) <= 2
        offset, shown = api["timeline"]["front_end_start_s"], api["duration_s"]
        for block, segment in zip(blocks, api["timeline"]["segments"]):
            assert float(block.get_attribute("data-confidence")) == pytest.approx(segment["confidence"])
            left = block.location["x"] - strip.location["x"]
            assert left == pytest.approx((segment["start_s"] - offset) / shown * strip.size["width"], abs=2)
            assert segment["label"] in block.get_attribute("textContent")
        colours = {b.value_of_css_property("background-color") for b in blocks}
        assert len(colours) == len({s["label"] for s in api["timeline"]["segments"]})  # a colour per emotion
        # A timeline the server could not find ({"error": reason}): the reason where the strip was.
        browser.execute_script('drawTimeline(document.getElementById("timeline"), '
                               '{error: "ValueError: no predict.segments"}, arguments[0]);', shown)
        assert not browser.find_elements(By.CSS_SELECTOR, "#timeline .timeline-strip")
        note = browser.find_element(By.CSS_SELECTOR, "#timeline .timeline-error")
        assert note.text == "No timeline: ValueError: no predict.segments"


def test_the_report_draws_one_example_timeline_with_each_clip_found(small_bundle, real_mirror, tmp_path):
    import pandas as pd

    from ser.params import load
    from ser.training.report import Report, plot_timeline_example, timeline_example

    clips = {"angry": ravdess_clip(real_mirror, 20, "05"), "sad": ravdess_clip(real_mirror, 21, "04"),
             "happy": ravdess_clip(real_mirror, 22, "03"), "neutral": ravdess_clip(real_mirror, 23, "01")}
    metadata = pd.DataFrame([{"utterance_id": f"ravdess_{i}_{emotion}", "path": str(path), "emotion": emotion,
                              "status": "ok"} for i, (emotion, path) in enumerate(clips.items())])
    predict = load(REPO / "params.yaml").predict
    fig, found, truth = timeline_example(metadata, REPO, small_bundle, predict)
    assert_finds_each_clip(found.to_dict()["segments"], [(start, end) for start, end, _ in truth])
    assert [emotion for *_, emotion in truth] == ["neutral", "happy", "sad", "angry"]  # the report's emotion order
    fig.savefig(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    train = tmp_path / "train"
    (train / "model").mkdir(parents=True)  # a training folder without a final model: a message, no failure
    report = Report(tmp_path)
    assert plot_timeline_example(metadata, REPO, train, predict, report) is not None and report.notes == []
