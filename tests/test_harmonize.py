"""Harmonizing corpora into metadata.parquet: labels, probing, quarantine, duplicates, schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from ser.runtime import make_executor
from ser.data.harmonize import harmonize, pcm_sha256, summarize
from ser.data.metadata import COLUMNS, SchemaError, read_metadata, to_table, validate, write_metadata
from tests.corpus_fixtures import (
    make_emovo,
    make_eyase,
    make_mirror,
    make_ravdess,
    synth_speech,
    write_bad_clip,
    write_clip,
)
from tests.params_support import params as project_params, section

REPO = Path(__file__).resolve().parent.parent
SERIAL = make_executor("serial")


def data_params(corpora, **changes):
    """params.yaml's ``data:`` section on these corpora, serial, with ``changes``."""
    return section("data", **{"corpora": list(corpora), "min_duration_s": 0.25, "silence_peak": 1e-4, "workers": 2,
                              "executor": "serial", **changes})


@pytest.fixture(scope="module")
def fixture_corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    made = make_mirror(root / "data" / "raw", ("ravdess", "tess", "cremad", "savee", "emodb", "emovo", "eyase"),
                       seconds=0.3)
    frame = harmonize(root / "data" / "raw", list(made), data_params(made), root=root, executor=SERIAL)
    return root, made, frame


def test_every_fixture_corpus_becomes_labelled_rows(fixture_corpora):
    root, made, frame = fixture_corpora
    assert list(frame.columns) == list(COLUMNS)
    assert frame.groupby("corpus").size().to_dict() == {c: len(p) for c, p in made.items()}
    assert (frame["status"] == "ok").all() and frame["problem"].isna().all()
    assert frame["utterance_id"].is_unique
    for row in frame.itertuples():
        assert not os.path.isabs(row.path) and (root / row.path).is_file()
        assert row.path.startswith(f"data/raw/{row.corpus}/")
        assert row.speaker.startswith(f"{row.corpus}_")
        assert (row.sample_rate, row.channels) == (16000, 1)
        assert row.duration_s == pytest.approx(0.3, abs=1e-3)
        if row.corpus not in ("savee", "eyase"):  # their ids carry the speaker folder
            assert row.utterance_id == f"{row.corpus}_{Path(row.path).stem}"
    by = frame.set_index("utterance_id")
    assert by.loc["ravdess_03-01-05-01-02-01-03", ["speaker", "gender", "emotion", "statement"]].tolist() == [
        "ravdess_03", "male", "angry", "Dogs are sitting by the door"]
    assert by.loc["tess_YAF_bar_ps", ["speaker", "gender", "emotion", "emotion_raw"]].tolist() == [
        "tess_YAF", "female", "surprised", "ps"]
    assert by.loc["cremad_1007_IEO_FEA_HI", ["gender", "emotion", "intensity"]].tolist() == ["female", "fearful", "high"]
    assert by.loc["savee_KL_su02", ["speaker", "gender", "emotion"]].tolist() == ["savee_KL", "male", "surprised"]
    assert by.loc["emodb_08b01La", ["gender", "emotion", "language"]].tolist() == ["female", "boredom", "de"]
    labels = ["path", "speaker", "gender", "emotion", "statement", "language"]
    assert by.loc["emovo_pau-m1-n1", labels].tolist() == [
        "data/raw/emovo/m1/pau-m1-n1.wav", "emovo_m1", "male", "fearful", "n1", "it"]
    # Female01 and Female02 hold the same file names: one row each, told apart by the folder.
    for speaker in ("Female01", "Female02"):
        assert by.loc[f"eyase_{speaker}_hap_02", labels].tolist() == [
            f"data/raw/eyase/{speaker}/fm01_hap (2).wav", f"eyase_{speaker}", "female", "happy", "", "ar"]
    genders = frame.groupby("corpus")["gender"].agg(lambda g: sorted(set(g))).to_dict()
    assert genders == {"cremad": ["female", "male"], "emodb": ["female", "male"], "emovo": ["female", "male"],
                       "eyase": ["female", "male"], "ravdess": ["female", "male"], "savee": ["male"],
                       "tess": ["female"]}
    validate(to_table(frame))


def test_the_summary_counts_what_the_table_holds(fixture_corpora):
    _, made, frame = fixture_corpora
    summary = summarize(frame)
    assert set(summary) == {*made, "all"}
    ravdess = summary["ravdess"]
    assert (ravdess["clips"], ravdess["ok"], ravdess["quarantined"]) == (64, 64, 0)
    assert (ravdess["speakers"], ravdess["female_speakers"], ravdess["male_speakers"]) == (4, 2, 2)
    assert ravdess["emotions"] == {e: 8 for e in ("angry", "calm", "disgust", "fearful", "happy", "neutral",
                                                  "sad", "surprised")}
    assert summary["savee"]["male_speakers"] == 4 and summary["savee"]["female_speakers"] == 0
    emovo, eyase = summary["emovo"], summary["eyase"]
    assert (emovo["clips"], emovo["speakers"], emovo["female_speakers"], emovo["male_speakers"]) == (28, 2, 1, 1)
    assert emovo["emotions"] == {e: 4 for e in ("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised")}
    assert (eyase["clips"], eyase["speakers"], eyase["female_speakers"], eyase["male_speakers"]) == (24, 3, 2, 1)
    assert eyase["emotions"] == {e: 6 for e in ("angry", "happy", "neutral", "sad")}
    assert summary["all"]["clips"] == len(frame)
    assert summary["all"]["hours"] == pytest.approx(len(frame) * 0.3 / 3600, abs=1e-4)


def test_broken_clips_are_quarantined_with_their_reason_and_the_run_goes_on(tmp_path):
    raw = tmp_path / "raw"
    good = make_ravdess(raw / "ravdess", actors=(9,), emotions=("02", "03"), seconds=0.5)
    names = {
        "truncated": "03-01-04-01-01-01-09", "zero_bytes": "03-01-04-01-02-01-09",
        "random_bytes": "03-01-05-01-01-01-09", "silent": "03-01-05-01-02-01-09",
        "too_short": "03-01-06-01-01-01-09",
    }
    for kind, stem in names.items():
        write_bad_clip(raw / "ravdess" / "Actor_09" / f"{stem}.wav", kind)
    # Quirks of real releases that must stay usable: very quiet, stereo, AIFF named .wav, 96 kHz.
    quiet = raw / "ravdess" / "Actor_09" / "03-01-07-01-01-01-09.wav"
    sf.write(quiet, synth_speech(0.5, 16000, "sad", seed=3)[:, 0] * 0.02, 16000)
    write_clip(raw / "ravdess" / "Actor_09" / "03-01-07-01-02-01-09.wav", channels=2, seconds=0.5)
    write_clip(raw / "ravdess" / "Actor_09" / "03-01-08-01-01-01-09.wav", fmt="AIFF", sample_rate=24414, seconds=0.5)
    write_clip(raw / "ravdess" / "Actor_09" / "03-01-08-01-02-01-09.wav", sample_rate=96000, seconds=0.5)

    params = data_params(["ravdess"], executor="process", workers=2)
    frame = harmonize(raw, ["ravdess"], params, root=tmp_path)  # the parallel path, as the stage runs it
    by = frame.set_index("utterance_id")
    problems = {kind: by.loc[f"ravdess_{stem}", "problem"] for kind, stem in names.items()}
    assert (by.loc[[f"ravdess_{s}" for s in names.values()], "status"] == "quarantined").all()
    assert problems["truncated"].startswith("raw/ravdess/Actor_09/03-01-04-01-01-01-09.wav: cannot decode audio")
    assert "empty file (0 bytes)" in problems["zero_bytes"]
    assert "cannot decode audio" in problems["random_bytes"]
    assert problems["silent"].startswith("all silence: peak 0 < data.silence_peak")
    assert problems["too_short"].startswith("too short: 0.0010 s < data.min_duration_s 0.25")
    assert len(frame) == len(good) + 9
    usable = by[by["status"] == "ok"]
    assert len(usable) == len(good) + 4 and usable["problem"].isna().all()
    assert by.loc["ravdess_03-01-07-01-01-01-09", "status"] == "ok"
    assert by.loc["ravdess_03-01-07-01-02-01-09", "channels"] == 2
    assert by.loc["ravdess_03-01-08-01-01-01-09", ["sample_rate", "status"]].tolist() == [24414, "ok"]
    assert by.loc["ravdess_03-01-08-01-02-01-09", ["sample_rate", "status"]].tolist() == [96000, "ok"]
    # A quarantined row keeps its labels, so a report can say what was lost.
    assert by.loc[f"ravdess_{names['silent']}", "emotion"] == "angry"
    write_metadata(frame, tmp_path / "metadata.parquet")
    assert read_metadata(tmp_path / "metadata.parquet", only_ok=True)["utterance_id"].tolist() == sorted(
        usable.index)


def test_identical_audio_is_linked_whatever_its_container(tmp_path):
    folder = tmp_path / "raw" / "ravdess" / "Actor_07"
    # Integer samples: libsndfile's WAV and FLAC writers round floats differently.
    samples = np.round(synth_speech(0.6, 16000, "happy", seed=7) * 32767).astype(np.int16)
    folder.mkdir(parents=True)
    sf.write(folder / "03-01-03-01-02-01-07.wav", samples, 16000, subtype="PCM_16")
    sf.write(folder / "03-01-03-01-02-02-07.flac", samples, 16000, subtype="PCM_16")
    write_clip(folder / "03-01-03-01-01-01-07.wav", emotion="happy", seconds=0.6, seed=8)
    sf.write(folder / "03-01-04-01-01-01-07.wav", np.zeros(1000, dtype=np.float32), 16000)
    sf.write(folder / "03-01-04-01-01-02-07.wav", np.zeros(1000, dtype=np.float32), 16000)
    frame = harmonize(tmp_path / "raw", ["ravdess"], data_params(["ravdess"]), root=tmp_path, executor=SERIAL)
    by = frame.set_index("utterance_id")
    first, second = "ravdess_03-01-03-01-02-01-07", "ravdess_03-01-03-01-02-02-07"
    assert by.loc[first, "pcm_sha256"] == by.loc[second, "pcm_sha256"]
    assert by.loc[second, "duplicate_of"] == first
    assert frame["duplicate_of"].notna().sum() == 1  # silent twins are quarantined, not linked
    assert by.loc[second, "status"] == "ok"
    decoded, _ = sf.read(folder / "03-01-03-01-02-02-07.flac", dtype="float32", always_2d=True)
    assert by.loc[second, "pcm_sha256"] == pcm_sha256(decoded)


def test_names_outside_the_corpus_naming_are_quarantined_not_dropped(tmp_path):
    make_ravdess(tmp_path / "raw" / "ravdess", actors=(1,), emotions=("01",), seconds=0.3)
    write_clip(tmp_path / "raw" / "ravdess" / "Actor_01" / "take 2 (final).wav", seconds=0.3)
    (tmp_path / "raw" / "ravdess" / "notes.txt").write_text("not audio")
    frame = harmonize(tmp_path / "raw", ["ravdess"], data_params(["ravdess"]), root=tmp_path, executor=SERIAL)
    odd = frame.set_index("utterance_id").loc["ravdess_take 2 (final)"]
    assert odd["status"] == "quarantined" and odd["problem"].startswith("file name: ")
    assert pd.isna(odd["emotion"]) and odd["sample_rate"] == 16000
    assert len(frame) == 3
    validate(to_table(frame))


@pytest.mark.parametrize("corpus, language, make, bad_names", [
    ("emovo", "it", make_emovo, {
        "f1/xyz-f1-b1.wav": "unknown emotion code 'xyz'",
        "f4/gio-f4-b2.wav": "unknown actor code 'f4'",
        "m1/gio-f1-b3.wav": "the name says actor 'f1' but the file is in the folder of 'm1'",
        "f1/gioia f1 b1.wav": "expected <emotion>-<actor>-<sentence>",
    }),
    ("eyase", "ar", make_eyase, {
        "Female01/fm01_fea (1).wav": "unknown emotion code 'fea'",
        "Female04/fm01_ang (2).wav": "the folder is the speaker, but 'Female04' is not one of",
        "Male01/fm01_ang (3).wav": "the prefix 'fm' is not that of a male speaker like Male01",
        "Male01/ml01_ang.wav": "expected <prefix>_<emotion> (<n>)",
    }),
])
def test_misnamed_and_unknown_label_files_are_quarantined_with_their_reason(tmp_path, corpus, language, make,
                                                                           bad_names):
    folder = tmp_path / "raw" / corpus
    good = make(folder, seconds=0.3)
    for relative in bad_names:
        write_clip(folder / relative, seconds=0.3)
    frame = harmonize(tmp_path / "raw", [corpus], data_params([corpus]), root=tmp_path, executor=SERIAL)
    by_path = frame.set_index("path")
    for relative, problem in bad_names.items():
        row = by_path.loc[f"raw/{corpus}/{relative}"]
        assert row["status"] == "quarantined"
        assert row["problem"].startswith(f"file name: {relative}: {problem}")
        assert pd.isna(row["speaker"]) and pd.isna(row["emotion"]) and row["language"] == language
    usable = frame[frame["status"] == "ok"]
    assert len(usable) == len(good) and len(frame) == len(good) + len(bad_names)
    validate(to_table(frame))


def test_parallel_and_serial_probing_give_the_same_table(tmp_path):
    make_mirror(tmp_path / "raw", ("tess",), seconds=0.3)
    params = data_params(["tess"])
    serial = harmonize(tmp_path / "raw", ["tess"], params, root=tmp_path, executor=SERIAL)
    parallel = harmonize(tmp_path / "raw", ["tess"], params, root=tmp_path,
                         executor=make_executor("process", 2, batch_size=3))
    pd.testing.assert_frame_equal(serial, parallel)


def test_a_selected_corpus_that_was_not_downloaded_is_a_clear_error(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus 'tess' is selected but absent.*download"):
        harmonize(tmp_path / "raw", ["tess"], data_params(["tess"]), root=tmp_path, executor=SERIAL)


def test_the_schema_refuses_tables_that_break_the_contract(fixture_corpora):
    _, _, frame = fixture_corpora
    broken = frame.copy()
    broken.loc[1, "utterance_id"] = broken.loc[0, "utterance_id"]
    broken.loc[2, "problem"] = "something"
    broken.loc[3, "emotion"] = "contempt"
    broken.loc[4, "duplicate_of"] = "ravdess_no_such_clip"
    broken.loc[5, "speaker"] = "03"
    with pytest.raises(SchemaError) as failure:
        to_table(broken)
    message = str(failure.value)
    for expected in ("share an utterance_id", "are ok but carry a problem", "non-canonical emotion",
                     "duplicates of a row that is not an ok row", "speaker not prefixed by its corpus"):
        assert expected in message
    quarantined_without_reason = frame.copy()
    quarantined_without_reason.loc[0, "status"] = "quarantined"
    with pytest.raises(SchemaError, match="quarantined without a problem"):
        to_table(quarantined_without_reason)
    with pytest.raises(SchemaError, match=r"lacks columns \['problem'\]"):
        to_table(frame.drop(columns="problem"))


@pytest.mark.slow
def test_the_download_and_harmonize_stages_run_from_the_command_line(tmp_path, tiny_mirror):
    params = project_params(data={**data_params(["ravdess", "tess"], executor="process", workers=2),
                                  "download": {"retries": 0, "backoff_s": 0.0, "timeout_s": 5, "strict": False}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "SER_DATA_MIRROR": str(tiny_mirror), "PYTHONPATH": str(REPO)}
    env.pop("DVC_ROOT", None)
    for command in (["stages/download.py", "--out", "data/raw"],
                    ["stages/harmonize.py", "--raw", "data/raw", "--out", "data/interim/metadata.parquet",
                     "--summary", "metrics/data.json"]):
        done = subprocess.run([sys.executable, str(REPO / command[0]), *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    frame = read_metadata(tmp_path / "data" / "interim" / "metadata.parquet")
    assert len(frame) == 64 + 42 and (frame["status"] == "ok").all()
    assert frame["path"].str.startswith("data/raw/").all()
    summary = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert (summary["ravdess"]["ok"], summary["tess"]["ok"]) == (64, 42)

    strict = yaml.safe_load((tmp_path / "params.yaml").read_text())
    strict["data"]["download"]["strict"] = True
    strict["data"]["corpora"] = ["tess"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(strict))
    done = subprocess.run([sys.executable, str(REPO / "stages/download.py"), "--out", "data/raw"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "tess: 2758 of 2800 clips are missing" in done.stderr
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == ["tess"]
