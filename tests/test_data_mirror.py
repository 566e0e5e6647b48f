"""The data layer on the real mirror (SER_DATA_MIRROR; fails when missing): RAVDESS, TESS, SAVEE,
EMOVO and EYASE.

Numbers asserted here are the corpora's documented facts (README of the mirror and the
corpus papers), not outputs copied from a run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ser.data.corpora import emovo, eyase, ravdess, tess
from ser.data.download import DownloadSettings, obtain_corpus, verify_corpus
from ser.data.harmonize import harmonize, summarize
from ser.params import section
from ser.data.metadata import to_table

REPO = Path(__file__).resolve().parent.parent
STEREO = {"03-01-02-01-01-02-01", "03-01-08-01-02-02-01", "03-01-02-01-02-02-05", "03-01-03-01-02-01-20",
          "03-01-06-01-01-02-20"}
TESS_ODD = {"OAF_food_fear": 96000, "YAF_germ_angry": None, "YAF_neat_fear": None}
EYASE_SPEAKER_CLIPS = {"eyase_Female01": 80, "eyase_Female02": 80, "eyase_Female03": 80, "eyase_Male01": 117,
                       "eyase_Male02": 110, "eyase_Male03": 112}


@pytest.fixture(scope="module")
def real_metadata(real_mirror):
    params = section("data", REPO / "params.yaml")
    return harmonize(real_mirror, ["ravdess", "tess"], params, root=real_mirror.parent)


@pytest.mark.mirror
def test_the_real_mirror_verifies_as_complete(real_mirror):
    ravdess_check = verify_corpus(ravdess, real_mirror / "ravdess")
    assert (ravdess_check.clips, ravdess_check.shortfall, ravdess_check.missing) == (1440, 0, [])
    assert ravdess_check.complete and not ravdess_check.unparseable and not ravdess_check.unreadable
    tess_check = verify_corpus(tess, real_mirror / "tess")
    # The release's misnamed OAF_bite_neutral is the one documented absence.
    assert (tess_check.clips, tess_check.shortfall, tess_check.missing) == (2799, 0, [])
    assert tess_check.complete and not tess_check.unparseable and not tess_check.unreadable


@pytest.mark.mirror
def test_real_ravdess_rows(real_metadata):
    rows = real_metadata[real_metadata["corpus"] == "ravdess"].set_index("utterance_id")
    # All ok: the very quiet clips of Actor_09 and Actor_20 (peak under 1% FS) stay usable.
    assert len(rows) == 1440 and (rows["status"] == "ok").all()
    speakers = rows.drop_duplicates("speaker")
    assert len(speakers) == 24 and speakers["gender"].value_counts().to_dict() == {"female": 12, "male": 12}
    counts = rows["emotion"].value_counts().to_dict()
    assert counts == {"neutral": 96, **{e: 192 for e in ("calm", "happy", "sad", "angry", "fearful", "disgust",
                                                         "surprised")}}
    stereo = {uid.removeprefix("ravdess_") for uid in rows.index[rows["channels"] == 2]}
    assert stereo == STEREO
    # The release is 48 kHz; the mirror stores it resampled to 16 kHz (its README).
    assert (rows["sample_rate"] == 16000).all()
    linked = rows[rows["duplicate_of"].notna()]
    assert linked["duplicate_of"].to_dict() == {"ravdess_03-01-03-01-02-02-07": "ravdess_03-01-03-01-02-01-07"}


@pytest.mark.mirror
def test_real_tess_rows_including_the_odd_files(real_metadata, real_mirror):
    rows = real_metadata[real_metadata["corpus"] == "tess"].set_index("utterance_id")
    assert len(rows) == 2799 and (rows["status"] == "ok").all()
    assert sorted(rows["speaker"].unique()) == ["tess_OAF", "tess_YAF"] and (rows["gender"] == "female").all()
    assert sorted(rows["emotion"].unique()) == ["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]
    for stem, rate in TESS_ODD.items():
        row = rows.loc[f"tess_{stem}"]
        assert row["status"] == "ok" and row["duration_s"] > 1.0 and row["channels"] == 1
        if rate:
            assert row["sample_rate"] == rate
        else:  # AIFF named .wav: read as AIFF, at the release's own rate
            assert (real_mirror / "tess" / f"{stem}.wav").read_bytes()[:4] == b"FORM"
            assert row["sample_rate"] == 24414
    to_table(real_metadata)  # the whole table satisfies the schema
    summary = summarize(real_metadata)
    assert (summary["tess"]["speakers"], summary["tess"]["female_speakers"]) == (2, 2)
    assert summary["all"]["clips"] == 1440 + 2799


def _copy_project(target: Path) -> None:
    """The files dvc needs (tracked or not yet committed), without data, caches or the venv."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for relative in listed:
        source = REPO / relative
        if source.is_file() and not relative.startswith(("data/", "metrics/", "reports/", "tests/")):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
    for name in ("config", ".gitignore"):
        if (REPO / ".dvc" / name).is_file():
            (target / ".dvc").mkdir(exist_ok=True)
            shutil.copy2(REPO / ".dvc" / name, target / ".dvc" / name)
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, target / name)
    (target / "data").mkdir(exist_ok=True)
    (target / "metrics").mkdir(exist_ok=True)


@pytest.mark.mirror
@pytest.mark.slow
def test_dvc_repro_harmonize_on_the_real_mirror_then_nothing_to_do(real_mirror, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    _copy_project(project)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "SER_DATA_MIRROR": str(real_mirror), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DVC_ROOT", None)

    def dvc(*args: str) -> str:
        done = subprocess.run([str(bin_dir / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    first = dvc("repro", "harmonize")
    assert "Running stage 'download'" in first and "Running stage 'harmonize'" in first
    assert (project / "data" / "raw" / "ravdess" / "manifest.csv").is_file()
    assert (project / "data" / "interim" / "metadata.parquet").is_file()
    second = dvc("repro", "harmonize")
    assert "Running stage" not in second and "up to date" in second
    metrics = dvc("metrics", "show")
    assert "metrics/data.json" in metrics and "1440" in metrics


@pytest.mark.mirror
def test_real_savee_rows(real_mirror):
    """SAVEE is a default corpus: all 480 clips of the official AudioData layout, 4 male speakers."""
    params = section("data", REPO / "params.yaml")
    assert "savee" in params.corpora
    rows = harmonize(real_mirror, ["savee"], params, root=real_mirror.parent)
    assert len(rows) == 480 and (rows["status"] == "ok").all()
    assert sorted(rows["speaker"].unique()) == ["savee_DC", "savee_JE", "savee_JK", "savee_KL"]
    assert set(rows["gender"]) == {"male"}
    assert rows["emotion"].value_counts().to_dict() == {"neutral": 120, **{e: 60 for e in (
        "angry", "disgust", "fearful", "happy", "sad", "surprised")}}


@pytest.mark.mirror
def test_real_emovo_rows(real_mirror):
    """EMOVO: all 588 clips, 6 actors (3 women, 3 men), 84 per emotion, mono 16 kHz as the mirror stores it."""
    params = section("data", REPO / "params.yaml")
    rows = harmonize(real_mirror, ["emovo"], params, root=real_mirror.parent)
    assert len(rows) == 588 and (rows["status"] == "ok").all()
    assert rows["utterance_id"].is_unique and (rows["language"] == "it").all()
    speakers = rows.drop_duplicates("speaker").set_index("speaker")["gender"].to_dict()
    assert speakers == {"emovo_f1": "female", "emovo_f2": "female", "emovo_f3": "female", "emovo_m1": "male",
                        "emovo_m2": "male", "emovo_m3": "male"}
    assert rows["emotion"].value_counts().to_dict() == {e: 84 for e in (
        "neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")}
    assert (rows["statement"].value_counts() == 42).all() and rows["statement"].nunique() == 14
    assert (rows["sample_rate"] == 16000).all() and (rows["channels"] == 1).all()


@pytest.mark.mirror
def test_real_eyase_rows(real_mirror):
    """EYASE: all 579 clips, the speaker taken from the folder (Female02's files carry Female01's prefix)."""
    params = section("data", REPO / "params.yaml")
    rows = harmonize(real_mirror, ["eyase"], params, root=real_mirror.parent)
    assert len(rows) == 579 and (rows["status"] == "ok").all()
    assert rows["utterance_id"].is_unique and (rows["language"] == "ar").all()
    assert rows["speaker"].value_counts().to_dict() == EYASE_SPEAKER_CLIPS
    genders = rows.drop_duplicates("speaker").set_index("speaker")["gender"]
    assert genders.to_dict() == {s: "female" if "Female" in s else "male" for s in EYASE_SPEAKER_CLIPS}
    assert set(rows["emotion"]) == {"angry", "happy", "neutral", "sad"}
    female02 = rows[rows["speaker"] == "eyase_Female02"]
    assert female02["path"].str.contains("/Female02/fm01_").all()


@pytest.mark.mirror
@pytest.mark.parametrize("module, clips", [(emovo, 588), (eyase, 579)])
def test_the_download_stage_takes_emovo_and_eyase_from_the_mirror_as_complete(real_mirror, tmp_path, module, clips):
    """Strict: every expected name present, and the copy matches the mirror's SHA256SUMS."""
    strict = DownloadSettings(retries=0, backoff_s=0.0, timeout_s=5, strict=True)
    report = obtain_corpus(module.NAME, tmp_path / "raw", settings=strict, mirror=real_mirror)
    check = report.verification
    assert report.action == "mirror"
    assert (check.clips, check.shortfall, check.missing, check.known_absent) == (clips, 0, [], [])
    assert not check.unparseable and not check.unreadable and not check.duplicate_names
