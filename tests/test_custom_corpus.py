"""A user's labelled recordings as a corpus (``data.custom``): a folder per emotion and a CSV
manifest, built from real mirror clips (RAVDESS, SAVEE) renamed so that only the declaration
says what they are; their official names give the truth the table is checked against."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pandas as pd
import pytest
import soundfile
import yaml

from ser.data.corpora import CORPORA
from ser.data.corpora.base import CANONICAL_EMOTIONS
from ser.data.custom import LABELS_NAME, CustomCorpusError, declared_files
from ser.data.download import DownloadSettings, obtain
from ser.data.harmonize import harmonize, summarize
from ser.data.metadata import read_metadata, write_metadata
from ser.features import compute_features
from ser.params import BuiltinCorpus, Emotion, ParamsError, override, validate
from ser.runtime import make_executor
from ser.training.splits import assign_folds
from ser.training.train import load_model_inputs, train
from tests.params_support import PARAMS, section, typed_params

REPO = Path(__file__).resolve().parent.parent
SERIAL = make_executor("serial")
SETTINGS = DownloadSettings(retries=0, backoff_s=0.0, timeout_s=5, strict=False)

# RAVDESS emotion codes under the user's own (German) labels.
TREE_LABELS = {"01": "ruhig", "03": "freude", "04": "trauer", "05": "wut"}
TREE_EMOTIONS = {"ruhig": "neutral", "freude": "happy", "trauer": "sad", "wut": "angry"}
CSV_EMOTIONS = {"anger": "angry", "happiness": "happy", "sadness": "sad", "neutral": "neutral", "unsure": None}
# The mirror's one RAVDESS pair with identical decoded audio (tests/test_data_mirror.py).
TWINS = ("03-01-03-01-02-02-07", "03-01-03-01-02-01-07")
GARBAGE = b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8


def ravdess_clip(mirror: Path, stem: str) -> Path:
    return mirror / "ravdess" / f"Actor_{stem[-2:]}" / f"{stem}.flac"


def build_tree(mirror: Path, root: Path) -> dict[str, tuple[str, str]]:
    """``<root>/<label>/spk<actor>_take<k>.flac``: 2 actors x 4 emotions x 2 clips, one file whose
    name has no speaker, one garbage file. Returns relative path -> (canonical emotion, actor)."""
    truth = {}
    for actor in ("01", "02"):
        for code, label in TREE_LABELS.items():
            for k, statement in enumerate(("01", "02")):
                stem = f"03-01-{code}-01-{statement}-01-{actor}"
                relative = f"{label}/spk{actor}_take{k}.flac"
                (root / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(ravdess_clip(mirror, stem), root / relative)
                truth[relative] = (TREE_EMOTIONS[label], actor)
    shutil.copy(ravdess_clip(mirror, "03-01-03-01-01-02-01"), root / "freude" / "mystery.flac")
    (root / "wut" / "spk01_broken.wav").write_bytes(GARBAGE)
    (root / "README.txt").write_text("not audio: ignored\n")
    return truth


def build_manifest(mirror: Path, folder: Path) -> dict[str, tuple[str, str]]:
    """``<folder>/labels.csv`` over SAVEE clips renamed ``clips/take_<n>.flac`` (speaker DC, JE),
    the RAVDESS twins, a missing file, a garbage file and a label mapped to null.
    Returns path -> (canonical emotion or None, speaker) for the good rows."""
    savee = {"a": "anger", "h": "happiness", "sa": "sadness", "n": "neutral"}
    rows, truth = [], {}
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    n = 0
    for speaker in ("DC", "JE"):
        for code, label in savee.items():
            for number in ("01", "02"):
                n += 1
                relative = f"clips/take_{n:03d}.flac"
                shutil.copy(mirror / "savee" / "AudioData" / speaker / f"{code}{number}.flac", folder / relative)
                rows.append({"path": relative, "emotion": label, "speaker": speaker, "gender": "male", "language": ""})
                truth[relative] = (CSV_EMOTIONS[label], speaker)
    for k, stem in enumerate(TWINS):
        relative = f"other/twin_{k}.flac"
        (folder / "other").mkdir(exist_ok=True)
        shutil.copy(ravdess_clip(mirror, stem), folder / relative)
        rows.append({"path": relative, "emotion": "happiness", "speaker": "A07", "gender": "", "language": "en"})
        truth[relative] = ("happy", "A07")
    rows.append({"path": "clips/never_recorded.flac", "emotion": "anger", "speaker": "DC", "gender": "male",
                 "language": ""})
    (folder / "clips" / "broken.wav").write_bytes(GARBAGE)
    rows.append({"path": "clips/broken.wav", "emotion": "sadness", "speaker": "JE", "gender": "male", "language": ""})
    shutil.copy(mirror / "savee" / "AudioData" / "KL" / "n05.flac", folder / "clips" / "take_unsure.flac")
    rows.append({"path": "clips/take_unsure.flac", "emotion": "unsure", "speaker": "KL", "gender": "male",
                 "language": ""})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return truth


def tree_spec(root="recordings", pattern=r"^spk(?P<speaker>\d+)_"):
    return {"manifest": None, "root": root, "speaker_pattern": pattern, "emotions": dict(TREE_EMOTIONS),
            "language": "de"}


def csv_spec(manifest="mine/labels.csv"):
    return {"manifest": manifest, "root": None, "speaker_pattern": None, "emotions": dict(CSV_EMOTIONS),
            "language": "en"}


def data_params(corpora, custom, **changes):
    return section("data", corpora=list(corpora), custom=custom, executor="serial", workers=1,
                   download={"retries": 0, "backoff_s": 0.0, "timeout_s": 5, "strict": False}, **changes)


@pytest.fixture(scope="module")
def project(tmp_path_factory, real_mirror):
    """A project folder holding a folder tree (recordings/) and a manifest corpus (mine/)."""
    root = tmp_path_factory.mktemp("project")
    tree = build_tree(real_mirror, root / "recordings")
    table = build_manifest(real_mirror, root / "mine")
    return root, tree, table


@pytest.fixture(scope="module")
def harmonized(project):
    root, _, _ = project
    custom = {"mytree": tree_spec(), "mycsv": csv_spec()}
    reports = obtain(["mytree", "mycsv"], root / "data" / "raw", settings=SETTINGS, custom=custom, base=root)
    frame = harmonize(root / "data" / "raw", ["mytree", "mycsv"], data_params(["mytree", "mycsv"], custom),
                      root=root, executor=SERIAL)
    return reports, frame


def test_the_schema_lists_match_the_library():
    assert get_args(Emotion) == CANONICAL_EMOTIONS
    assert get_args(BuiltinCorpus) == tuple(CORPORA)


def test_the_folder_tree_becomes_rows_with_speakers_from_the_pattern(project, harmonized):
    root, tree, _ = project
    _, frame = harmonized
    rows = frame[frame["corpus"] == "mytree"].set_index("utterance_id")
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == len(tree) == 16
    for relative, (emotion, actor) in tree.items():
        row = rows.loc["mytree_" + relative.removesuffix(".flac").replace("/", "_")]
        assert (row["emotion"], row["speaker"], row["emotion_raw"]) == (emotion, f"mytree_{actor}", relative.split("/")[0])
        assert row["path"] == f"data/raw/mytree/{relative}" and (root / row["path"]).is_file()
        assert row["language"] == "de" and pd.isna(row["gender"]) and row["sample_rate"] == 16000
    broken = rows.loc["mytree_wut_spk01_broken"]
    assert broken["status"] == "quarantined" and "spk01_broken.wav" in broken["problem"]
    mystery = rows.loc["mytree_freude_mystery"]
    assert mystery["status"] == "quarantined" and "does not match data.custom.mytree.speaker_pattern" in mystery["problem"]
    assert len(rows) == 18


def test_the_manifest_becomes_rows_and_its_bad_rows_are_quarantined_with_reasons(project, harmonized):
    _, _, table = project
    reports, frame = harmonized
    rows = frame[frame["corpus"] == "mycsv"].set_index("utterance_id")
    for relative, (emotion, speaker) in table.items():
        row = rows.loc["mycsv_" + relative.removesuffix(".flac").replace("/", "_")]
        assert (row["status"], row["emotion"], row["speaker"]) == ("ok", emotion, f"mycsv_{speaker}")
    assert rows.loc["mycsv_clips_take_001", "gender"] == "male" and pd.isna(rows.loc["mycsv_other_twin_0", "gender"])
    missing = rows.loc["mycsv_clips_never_recorded"]
    assert missing["status"] == "quarantined"
    assert missing["problem"] == "missing: clips/never_recorded.flac (labels.csv row 20) does not exist"
    broken = rows.loc["mycsv_clips_broken"]
    assert broken["status"] == "quarantined" and "clips/broken.wav" in broken["problem"]
    excluded = rows.loc["mycsv_clips_take_unsure"]
    assert excluded["status"] == "quarantined" and "maps label 'unsure' to null" in excluded["problem"]
    # The same recording under two names is linked, so the splits keep the pair together.
    assert rows.loc["mycsv_other_twin_0", "duplicate_of"] == "mycsv_other_twin_1" or \
        rows.loc["mycsv_other_twin_1", "duplicate_of"] == "mycsv_other_twin_0"
    assert (rows["status"] == "ok").sum() == len(table) == 18
    # The download stage said what will be quarantined, and why.
    notes = "\n".join(next(r for r in reports if r.corpus == "mycsv").verification.warnings())
    assert "labels.csv row 20: clips/never_recorded.flac" in notes and "clips/broken.wav: unreadable audio" in notes


def test_the_table_keeps_its_contract_and_the_summary_counts_the_user_corpora(project, harmonized, tmp_path):
    _, frame = harmonized
    write_metadata(frame, tmp_path / "metadata.parquet")
    assert read_metadata(tmp_path / "metadata.parquet", only_ok=True)["corpus"].value_counts().to_dict() == {
        "mytree": 16, "mycsv": 18}
    summary = summarize(frame)
    assert (summary["mycsv"]["clips"], summary["mycsv"]["quarantined"], summary["mycsv"]["duplicates"]) == (21, 3, 1)
    assert summary["mytree"]["emotions"] == {"angry": 4, "happy": 4, "neutral": 4, "sad": 4}
    assert summary["mycsv"]["male_speakers"] == 2  # DC and JE; A07's gender was not given


def test_an_unknown_label_fails_naming_row_and_label_before_anything_is_copied(project, tmp_path):
    root, _, _ = project
    bad = pd.read_csv(root / "mine" / "labels.csv", keep_default_na=False)
    bad.loc[2, "emotion"] = "contempt"
    bad.loc[5, "emotion"] = "Anger"
    bad.to_csv(root / "mine" / "bad.csv", index=False)
    out = tmp_path / "raw"
    with pytest.raises(CustomCorpusError) as caught:
        obtain(["ravdess", "mycsv"], out, settings=SETTINGS, custom={"mycsv": csv_spec("mine/bad.csv")}, base=root)
    message = str(caught.value)
    assert "bad.csv row 4: label 'contempt'" in message and "bad.csv row 7: label 'Anger'" in message
    assert "anger, happiness, neutral, sadness, unsure" in message
    assert not out.exists()  # nothing fetched, nothing copied

    tree = tmp_path / "tree"
    shutil.copytree(root / "recordings", tree)
    (tree / "sarcasm").mkdir()
    shutil.copy(tree / "wut" / "spk01_take0.flac", tree / "sarcasm" / "spk02_take9.flac")
    with pytest.raises(CustomCorpusError, match=r"tree/sarcasm/spk02_take9\.flac: label 'sarcasm'"):
        declared_files("mytree", tree_spec(str(tree)), root)


def test_harmonize_checks_the_labels_against_the_mapping_before_probing(project, harmonized, tmp_path):
    root, _, _ = project
    narrower = csv_spec()
    del narrower["emotions"]["sadness"]
    params = data_params(["mycsv"], {"mycsv": narrower})

    class Refusing:  # an executor that fails the test if any clip is probed
        def map(self, *args, **kwargs):
            raise AssertionError("probed although a label has no mapping")

    with pytest.raises(CustomCorpusError, match=r"labels\.csv row 6: label 'sadness'"):
        harmonize(root / "data" / "raw", ["mycsv"], params, root=root, executor=Refusing())


def test_a_manifest_row_without_speaker_or_with_a_climbing_path_is_named(project, tmp_path):
    root, _, _ = project
    (tmp_path / "m.csv").write_text("path,emotion,speaker,gender\n"
                                    "a.wav,anger,,male\n../b.wav,anger,DC,male\nc.wav,anger,DC,robot\n")
    with pytest.raises(CustomCorpusError) as caught:
        declared_files("x", csv_spec(str(tmp_path / "m.csv")), root)
    message = str(caught.value)
    assert "m.csv row 2: no speaker" in message and "m.csv row 3: path '../b.wav' leaves" in message
    assert "m.csv row 4: gender 'robot'" in message
    (tmp_path / "n.csv").write_text("path,emotion,speaker,transcript\na.wav,anger,DC,hello\n")
    with pytest.raises(CustomCorpusError, match=r"n\.csv: the header .*unknown transcript"):
        declared_files("x", csv_spec(str(tmp_path / "n.csv")), root)


def test_one_speaker_per_folder_when_no_pattern(project, tmp_path, real_mirror):
    root, _, _ = project
    tree = tmp_path / "by_speaker"
    for actor in ("03", "04"):
        for code, label in TREE_LABELS.items():
            (tree / label / f"actor{actor}").mkdir(parents=True)
            shutil.copy(ravdess_clip(real_mirror, f"03-01-{code}-01-01-01-{actor}"),
                        tree / label / f"actor{actor}" / "take.flac")
    entries = declared_files("spk", tree_spec(str(tree), pattern=None), root)
    assert sorted({e.speaker for e in entries}) == ["actor03", "actor04"]
    flat = tmp_path / "one_voice"
    (flat / "wut").mkdir(parents=True)
    shutil.copy(ravdess_clip(real_mirror, "03-01-05-01-01-01-03"), flat / "wut" / "a.flac")
    assert [e.speaker for e in declared_files("one", tree_spec(str(flat), pattern=None), root)] == ["one_voice"]


MIXED = ["savee", "mycsv", "mytree"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, project, real_mirror):
    """The two user corpora beside the built-in SAVEE (16 clips from a mirror, flat names, the
    same recordings the manifest corpus copies in part), downloaded and harmonized in one run."""
    root, _, _ = project
    work = tmp_path_factory.mktemp("mixed")
    mirror = work / "mirror"
    (mirror / "savee").mkdir(parents=True)
    for speaker in ("DC", "JE", "JK", "KL"):
        for code in ("a", "h", "sa", "n"):
            shutil.copy(real_mirror / "savee" / "AudioData" / speaker / f"{code}01.flac",
                        mirror / "savee" / f"{speaker}_{code}01.flac")
    custom = {"mycsv": csv_spec(), "mytree": tree_spec()}
    reports = obtain(MIXED, work / "data" / "raw", settings=SETTINGS, mirror=mirror, custom=custom, base=root)
    frame = harmonize(work / "data" / "raw", MIXED, data_params(MIXED, custom), root=work, executor=SERIAL)
    return work, mirror, custom, reports, frame


def test_a_user_corpus_mixes_with_a_built_in_one_and_speaker_folds_work(project, mixed, tmp_path):
    root, _, _ = project
    work, mirror, custom, reports, frame = mixed
    assert [(r.corpus, r.action) for r in reports] == [("savee", "mirror"), ("mycsv", "copied"), ("mytree", "copied")]
    ok = frame[frame["status"] == "ok"]
    assert ok["corpus"].value_counts().to_dict() == {"mycsv": 18, "savee": 16, "mytree": 16}
    speakers = ok.groupby("corpus")["speaker"].agg(lambda s: sorted(set(s))).to_dict()
    assert speakers["savee"] == ["savee_DC", "savee_JE", "savee_JK", "savee_KL"]
    assert speakers["mycsv"] == ["mycsv_A07", "mycsv_DC", "mycsv_JE"]
    # The user's copies of SAVEE clips are the built-in's clips: linked across corpora.
    linked = ok[ok["duplicate_of"].notna() & (ok["corpus"] == "savee")]
    assert len(linked) == 8 and linked["duplicate_of"].str.startswith("mycsv_clips_take_").all()
    folds = assign_folds(ok, "speaker_kfold", n_folds=3, seed=0).join(ok.set_index("utterance_id")[["speaker"]])
    assert (folds.groupby("speaker")["fold"].nunique() == 1).all()
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    # Dropping a user corpus from data.corpora removes its copy at the next download.
    raw = tmp_path / "raw"
    shutil.copytree(work / "data" / "raw", raw)
    again = obtain(["savee", "mycsv"], raw, settings=SETTINGS, mirror=mirror, custom=custom, base=root)
    assert [(r.corpus, r.action) for r in again] == [("savee", "kept"), ("mycsv", "kept")]
    assert sorted(p.name for p in raw.iterdir()) == ["mycsv", "savee"]


def test_the_mixed_table_feeds_the_features_and_the_speaker_independent_training(mixed, tmp_path):
    """Downstream stages take the user corpora like any other: features from data/raw/<name>/,
    then cross-validation by speaker (unknown genders included)."""
    work, _, _, _, frame = mixed
    params = typed_params(features={"sets": ["functionals"], "executor": "serial", "workers": 1},
                          split={"protocol": "speaker_kfold", "n_folds": 3, "val_speakers_fraction": 0.2, "seed": 1},
                          train={**PARAMS["train"], "use_augmented": False, "workers": 1})
    params = override(params, {"model.type": "logreg", "model.logreg.input": "functionals"})
    summary = compute_features(frame, tmp_path / "features", params.audio, params.features, root=work,
                               cache_dir=tmp_path / "cache", progress=False)
    assert (summary["clips"], summary["failed"]) == (50, 0)
    result = train(frame, load_model_inputs(tmp_path / "features", "functionals"), None, params,
                   tmp_path / "train", fit_final_model=False)
    ok = frame[frame["status"] == "ok"].set_index("utterance_id")
    assert sorted(result.oof["utterance_id"]) == sorted(ok.index)
    by_speaker = result.oof.assign(speaker=ok.loc[result.oof["utterance_id"], "speaker"].values)
    assert (by_speaker.groupby("speaker")["fold"].nunique() == 1).all()
    assert result.classes == ["angry", "happy", "neutral", "sad"]


def test_params_name_what_is_wrong_with_a_declaration():
    params = copy.deepcopy(PARAMS)
    for name, problem in (("tess", "'tess' is a built-in corpus"), ("Mine", "'Mine': a corpus name is lower-case")):
        params["data"]["custom"] = {name: csv_spec()}
        with pytest.raises(ParamsError, match=problem):
            validate(params, "params.yaml")
    params["data"]["custom"] = {"both": {**csv_spec(), "root": "x", "speaker_pattern": "(", "language": "eng"}}
    with pytest.raises(ParamsError) as caught:
        validate(params, "params.yaml")
    message = str(caught.value)
    assert "data.custom.both: Value error, give exactly one of manifest" in message
    assert "speaker_pattern '(' is not a regular expression" in message and "'eng' is not an ISO 639-1" in message
    params["data"]["custom"] = {"mine": csv_spec()}
    params["data"]["corpora"] = ["ravdess", "mine", "theirs"]
    with pytest.raises(ParamsError, match=r"data\.corpora\.2: 'theirs' is neither a built-in corpus .* \(mine\)"):
        validate(params, "params.yaml")


@pytest.mark.slow
def test_the_download_and_harmonize_stages_take_a_user_corpus_from_params_yaml(project, tmp_path):
    root, tree, _ = project
    work = tmp_path / "work"
    shutil.copytree(root / "recordings", work / "recordings")
    params = copy.deepcopy(PARAMS)
    params["data"] = data_params(["mytree"], {"mytree": tree_spec()})
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DVC_ROOT", None)

    def stage(*command):
        return subprocess.run([sys.executable, str(REPO / command[0]), *command[1:]], cwd=work, env=env, check=False,
                              capture_output=True, text=True, timeout=300)

    harmonize_stage = ("stages/harmonize.py", "--raw", "data/raw", "--out", "data/interim/metadata.parquet",
                       "--summary", "metrics/data.json")
    first = stage("stages/download.py", "--out", "data/raw")
    assert first.returncode == 0, first.stderr
    assert "mytree: copied from" in first.stdout and "spk01_broken.wav: unreadable audio" in first.stderr
    done = stage(*harmonize_stage)
    assert done.returncode == 0, done.stderr
    frame = read_metadata(work / "data" / "interim" / "metadata.parquet")
    assert (frame["status"] == "ok").sum() == len(tree) and len(frame) == len(tree) + 2
    assert json.loads((work / "metrics" / "data.json").read_text())["mytree"]["ok"] == len(tree)
    assert (work / "data" / "raw" / "mytree" / LABELS_NAME).is_file()
    second = stage("stages/download.py", "--out", "data/raw")
    assert second.returncode == 0 and "mytree: kept" in second.stdout
    # A new recording under a label with no mapping: the stage stops, naming file and label.
    (work / "recordings" / "ekel").mkdir()
    shutil.copy(work / "recordings" / "wut" / "spk01_take0.flac", work / "recordings" / "ekel" / "spk01_x.flac")
    failed = stage("stages/download.py", "--out", "data/raw")
    assert failed.returncode == 1 and "recordings/ekel/spk01_x.flac: label 'ekel'" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_the_readme_example_declares_a_working_corpus(tmp_path, real_mirror):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Your labelled data as a corpus"):]
    snippet = section[section.index("```yaml") + len("```yaml"):section.index("```\n", section.index("```yaml") + 7)]
    corpora = section[section.index("data.corpora=[") + len("data.corpora=["):].split("]")[0].split(",")
    params = copy.deepcopy(PARAMS)
    params["data"].update(yaml.safe_load(snippet), corpora=corpora)
    custom = validate(params, "README").data.custom
    assert "mine" in corpora
    for label, code in (("wut", "05"), ("trauer", "04")):
        (tmp_path / "recordings" / label).mkdir(parents=True)
        for actor in ("11", "12"):
            shutil.copy(ravdess_clip(real_mirror, f"03-01-{code}-01-01-01-{actor}"),
                        tmp_path / "recordings" / label / f"anna{actor}_take1.flac")
    entries = declared_files("mine", custom["mine"], tmp_path)
    assert sorted((e.emotion, e.speaker) for e in entries) == [
        ("trauer", "anna11"), ("trauer", "anna12"), ("wut", "anna11"), ("wut", "anna12")]


def harmonize_tree(root: Path, name: str, spec: dict) -> pd.DataFrame:
    """Download (copy) and harmonize one folder-tree corpus; the table is written, so it keeps its contract."""
    custom = {name: spec}
    obtain([name], root / "data" / "raw", settings=SETTINGS, custom=custom, base=root)
    frame = harmonize(root / "data" / "raw", [name], data_params([name], custom), root=root, executor=SERIAL)
    write_metadata(frame, root / "metadata.parquet")
    return frame.set_index("utterance_id")


def test_a_speaker_pattern_matching_an_empty_speaker_quarantines_that_file(tmp_path, real_mirror):
    tree = tmp_path / "empty_speaker"
    (tree / "wut").mkdir(parents=True)
    for stem, actor in (("spk01_a", "01"), ("spk_b", "02"), ("other_c", "03")):
        shutil.copy(ravdess_clip(real_mirror, f"03-01-05-01-01-01-{actor}"), tree / "wut" / f"{stem}.flac")
    # speaker group empty (spk_b) or not taking part (other_c)
    rows = harmonize_tree(tmp_path, "emp", tree_spec(str(tree), pattern=r"^(?:spk(?P<speaker>\d*)_|other)"))
    assert rows.loc["emp_wut_spk01_a", "status"] == "ok" and rows.loc["emp_wut_spk01_a", "speaker"] == "emp_01"
    for stem in ("spk_b", "other_c"):
        row = rows.loc[f"emp_wut_{stem}"]
        assert row["status"] == "quarantined" and pd.isna(row["speaker"])
        assert row["problem"].startswith(f"file name '{stem}': data.custom.emp.speaker_pattern")
        assert row["problem"].endswith("matched an empty speaker")


def test_clip_ids_stay_unique_when_a_suffixed_id_is_also_a_file_name(tmp_path, real_mirror):
    tree = tmp_path / "suffixes"
    (tree / "wut").mkdir(parents=True)
    (tree / "wut_x").mkdir(parents=True)
    clips = {"wut/spk01_a.flac": "01", "wut/spk01_a.wav": "02", "wut/spk01_a__2.wav": "03",
             "wut/x_spk01_b.flac": "04", "wut_x/spk01_b.flac": "05"}
    for relative, actor in clips.items():
        source = ravdess_clip(real_mirror, f"03-01-05-01-01-01-{actor}")
        if relative.endswith(".wav"):
            audio, rate = soundfile.read(source)
            soundfile.write(tree / relative, audio, rate)
        else:
            shutil.copy(source, tree / relative)
    spec = tree_spec(str(tree), pattern=r"spk(?P<speaker>\d+)_")
    spec["emotions"]["wut_x"] = "angry"
    rows = harmonize_tree(tmp_path, "m", spec)
    assert rows.index.is_unique and len(rows) == len(clips)
    assert rows.loc["m_wut_spk01_a", "status"] == "ok"
    # spk01_a.wav takes the suffix __2; the file spk01_a__2.wav (whose own id that is) moves on
    assert rows.loc["m_wut_spk01_a__2", "path"].endswith("wut/spk01_a.wav")
    assert rows.loc["m_wut_spk01_a__2", "problem"] == "the same clip id as suffixes/wut/spk01_a.flac"
    moved = rows[rows["path"].str.endswith("wut/spk01_a__2.wav")].iloc[0]
    assert moved.name == "m_wut_spk01_a__2__2" and moved["status"] == "quarantined"
    # two different recordings whose paths give one id are not "the same file"
    assert rows.loc["m_wut_x_spk01_b", "path"].endswith("wut/x_spk01_b.flac")
    other = rows[rows["path"].str.endswith("wut_x/spk01_b.flac")].iloc[0]
    assert other["problem"] == "the same clip id as suffixes/wut/x_spk01_b.flac" and other.name == "m_wut_x_spk01_b__2"


def test_a_manifest_that_is_not_utf8_or_not_csv_is_named(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,emotion,speaker\nclips/ä.wav,anger,Jürgen\n".encode("latin-1"))
    with pytest.raises(CustomCorpusError, match=r"latin\.csv: not UTF-8 text .*save it as UTF-8 CSV"):
        declared_files("x", csv_spec(str(latin)), tmp_path)
    huge = tmp_path / "huge.csv"
    huge.write_text('path,emotion,speaker\n"' + "x" * 200_000 + '",anger,DC\n')
    with pytest.raises(CustomCorpusError, match=r"huge\.csv: not a CSV file that can be read .*save it as UTF-8 CSV"):
        declared_files("x", csv_spec(str(huge)), tmp_path)


def test_a_file_listed_twice_is_the_same_file(tmp_path, real_mirror):
    (tmp_path / "clips").mkdir()
    shutil.copy(ravdess_clip(real_mirror, "03-01-05-01-01-01-01"), tmp_path / "clips" / "a.flac")
    (tmp_path / "twice.csv").write_text("path,emotion,speaker\nclips/a.flac,anger,DC\nclips/a.flac,anger,DC\n")
    custom = {"twice": csv_spec(str(tmp_path / "twice.csv"))}
    obtain(["twice"], tmp_path / "data" / "raw", settings=SETTINGS, custom=custom, base=tmp_path)
    frame = harmonize(tmp_path / "data" / "raw", ["twice"], data_params(["twice"], custom), root=tmp_path,
                      executor=SERIAL).set_index("utterance_id")
    assert frame.loc["twice_clips_a__2", "problem"] == "the same file as twice.csv row 2"
