"""The data layer on the real RAVDESS and TESS mirror (SER_DATA_MIRROR; fails when missing).

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

from ser.datasets import ravdess, tess
from ser.download import verify_corpus
from ser.harmonize import harmonize, summarize
from ser.params import section
from ser.schema import to_table

REPO = Path(__file__).resolve().parent.parent
STEREO = {"03-01-02-01-01-02-01", "03-01-08-01-02-02-01", "03-01-02-01-02-02-05", "03-01-03-01-02-01-20",
          "03-01-06-01-01-02-20"}
TESS_ODD = {"OAF_food_fear": 96000, "YAF_germ_angry": None, "YAF_neat_fear": None}


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
    assert (rows["sample_rate"] == 48000).all()
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
    assert "savee" in params["corpora"]
    rows = harmonize(real_mirror, ["savee"], params, root=real_mirror.parent)
    assert len(rows) == 480 and (rows["status"] == "ok").all()
    assert sorted(rows["speaker"].unique()) == ["savee_DC", "savee_JE", "savee_JK", "savee_KL"]
    assert set(rows["gender"]) == {"male"}
    assert rows["emotion"].value_counts().to_dict() == {"neutral": 120, **{e: 60 for e in (
        "angry", "disgust", "fearful", "happy", "sad", "surprised")}}
