"""Corpus modules: registry, file-name parsers and label mapping for every documented code.

The expected tables below are transcribed from each corpus's documentation, independently of
the modules under test, and the files are laid out by the shared fixtures like each release.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from ser.datasets import CANONICAL_EMOTIONS, CORPORA, FileNameError, get_corpus
from ser.datasets import cremad, emodb, ravdess, savee, tess
from ser.datasets.base import Clip, Source
from tests.corpus_fixtures import make_cremad, make_emodb, make_ravdess, make_savee, make_tess

RAVDESS_DOC = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
               "06": "fearful", "07": "disgust", "08": "surprised"}
TESS_DOC = {"angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
            "neutral": "neutral", "ps": "surprised", "sad": "sad"}
CREMAD_DOC = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral",
              "SAD": "sad"}
SAVEE_DOC = {"a": "angry", "d": "disgust", "f": "fearful", "h": "happy", "n": "neutral", "sa": "sad",
             "su": "surprised"}
EMODB_DOC = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad",
             "N": "neutral"}
EMODB_GENDERS = {"03": "male", "08": "female", "09": "female", "10": "male", "11": "male", "12": "male",
                 "13": "female", "14": "female", "15": "male", "16": "female"}


def relative_files(root: Path) -> list[PurePosixPath]:
    return sorted(PurePosixPath(p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())


def test_registry_lists_every_corpus_with_a_uniform_description():
    assert set(CORPORA) == {"ravdess", "tess", "cremad", "savee", "emodb"}
    for name, module in CORPORA.items():
        description = module.CORPUS
        assert description.name == name == module.NAME
        assert get_corpus(name) is module
        assert set(description.emotions.values()) <= set(CANONICAL_EMOTIONS)
        assert description.expected_clips > 0
        assert isinstance(description.source, Source)
    with pytest.raises(ValueError, match="unknown corpus 'iemocap'.*ravdess"):
        get_corpus("iemocap")


def test_official_sources_are_declared_as_published():
    assert ravdess.SOURCE.archive_name == "Audio_Speech_Actors_01-24.zip"
    assert ravdess.SOURCE.md5 == "bc696df654c87fed845eb13823edef8a"
    assert "1188976" in ravdess.SOURCE.url
    assert (ravdess.EXPECTED_CLIPS, tess.EXPECTED_CLIPS, cremad.EXPECTED_CLIPS, emodb.EXPECTED_CLIPS,
            savee.EXPECTED_CLIPS) == (1440, 2800, 7442, 535, 480)
    assert "CheyneyComputerScience/CREMA-D" in cremad.SOURCE.listing_url
    assert cremad.SOURCE.kind == "files"
    assert emodb.SOURCE.url == "http://emodb.bilderbar.info/download/download.zip"
    assert savee.SOURCE.kind == "mirror_only" and "registration" in savee.SOURCE.note


def test_ravdess_parses_every_code_of_the_release(tmp_path):
    paths = make_ravdess(tmp_path, actors=(1, 2), intensities=("01", "02"), repetitions=("01", "02"),
                         seconds=0.05)
    clips = [ravdess.parse(p) for p in relative_files(tmp_path)]
    assert len(clips) == len(paths) == 2 * 60
    for clip in clips:
        fields = clip.name.split("-")
        assert clip.emotion == RAVDESS_DOC[fields[2]] and clip.emotion_raw == fields[2]
        assert clip.intensity == {"01": "normal", "02": "strong"}[fields[3]]
        assert clip.statement == {"01": "Kids are talking by the door",
                                  "02": "Dogs are sitting by the door"}[fields[4]]
        assert clip.speaker == fields[6]
        assert clip.gender == ("male" if int(fields[6]) % 2 else "female")
    assert {c.emotion for c in clips} == set(RAVDESS_DOC.values())
    assert ravdess.expected_names() >= {c.name for c in clips}
    assert len(ravdess.expected_names()) == 1440


@pytest.mark.parametrize("bad", [
    "03-01-09-01-01-01-01",   # emotion 09 does not exist
    "03-01-01-02-01-01-01",   # neutral has no strong intensity
    "03-01-01-01-01-01-25",   # actor 25
    "03-01-01-01-01-03-01",   # repetition 03
    "03-01-01-01-01-01",      # six fields
    "Actor_01",
])
def test_ravdess_rejects_names_outside_the_documentation(bad):
    with pytest.raises(FileNameError, match=re.escape(f"Actor_01/{bad}.wav: ")):
        ravdess.parse(f"Actor_01/{bad}.wav")


def test_tess_parses_flat_and_foldered_layouts_and_the_misnamed_clip(tmp_path):
    make_tess(tmp_path / "flat", words=("back", "chalk"), seconds=0.05)
    make_tess(tmp_path / "folders", words=("back",), seconds=0.05, folders=True, suffix=".flac")
    for root in (tmp_path / "flat", tmp_path / "folders"):
        for relative in relative_files(root):
            clip = tess.parse(relative)
            speaker, word, code = relative.stem.split("_")
            assert clip.speaker == speaker and clip.gender == "female"
            assert clip.emotion == TESS_DOC[code] and clip.emotion_raw == code
            assert clip.statement == f"Say the word {word}"
    assert len(relative_files(tmp_path / "flat")) == 2 * 2 * 7
    misnamed = tess.parse("OA_bite_neutral.wav")
    assert (misnamed.speaker, misnamed.name, misnamed.emotion) == ("OAF", "OA_bite_neutral", "neutral")
    assert tess.parse("YAF_dog_pleasant_surprise.wav").emotion == "surprised"
    with pytest.raises(FileNameError, match="unknown speaker code 'MAF'"):
        tess.parse("MAF_back_angry.wav")
    with pytest.raises(FileNameError, match="unknown emotion code 'bored'"):
        tess.parse("OAF_back_bored.wav")


def test_tess_names_exactly_the_clip_missing_from_a_combination():
    present = {f"{s}_{w}_{e}" for s in ("OAF", "YAF") for w in ("back", "bite") for e in TESS_DOC}
    present.discard("YAF_bite_sad")
    assert tess.expected_names(present) - present == {"YAF_bite_sad"}
    present.discard("OAF_bite_neutral")
    present.add("OA_bite_neutral")  # the release's misnamed file stands in for it
    assert tess.expected_names(present) - present == {"YAF_bite_sad"}


def test_cremad_parses_every_code_and_takes_gender_from_the_demographics(tmp_path):
    make_cremad(tmp_path, actors=("1001", "1002", "1091"), sentences=tuple(cremad.SENTENCES), seconds=0.05)
    files = relative_files(tmp_path)
    assert all(f.parts[0] == "AudioWAV" for f in files)
    levels = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
    for relative in files:
        actor, sentence, code, level = relative.stem.split("_")
        clip = cremad.parse(relative)
        assert clip.emotion == CREMAD_DOC[code] and clip.intensity == levels[level]
        assert clip.speaker == actor and clip.statement == cremad.SENTENCES[sentence]
    assert [cremad.parse(f"{a}_DFA_ANG_XX.wav").gender for a in ("1001", "1002", "1091", "1034")] == [
        "male", "female", "female", "male"]
    assert len(cremad.SENTENCES) == 12
    genders = [d["gender"] for d in cremad.DEMOGRAPHICS.values()]
    assert (len(genders), genders.count("male"), genders.count("female")) == (91, 48, 43)
    with pytest.raises(FileNameError, match="1092.*demographics"):
        cremad.parse("1092_DFA_ANG_XX.wav")
    with pytest.raises(FileNameError, match="unknown sentence code 'XYZ'"):
        cremad.parse("1001_XYZ_ANG_XX.wav")


@pytest.mark.parametrize("layout", ["flat", "official"])
def test_savee_parses_both_layouts_with_speaker_prefixed_names(tmp_path, layout):
    make_savee(tmp_path, per_emotion=2, seconds=0.05, layout=layout)
    clips = [savee.parse(f) for f in relative_files(tmp_path)]
    assert len(clips) == 4 * 7 * 2
    assert {c.speaker for c in clips} == {"DC", "JE", "JK", "KL"}
    assert all(c.gender == "male" for c in clips)
    for clip in clips:
        code = clip.name.split("_")[1].rstrip("0123456789")
        assert clip.emotion == SAVEE_DOC[code] and clip.emotion_raw == code
    assert len({c.name for c in clips}) == len(clips)  # names stay unique across speakers
    assert len(savee.expected_names()) == 480
    with pytest.raises(FileNameError, match="outside 01 .. 15"):
        savee.parse("DC_sa16.wav")
    assert savee.parse("DC_n30.wav").emotion == "neutral"
    with pytest.raises(FileNameError):
        savee.parse("AudioData/XX/a01.wav")


def test_emodb_parses_every_letter_and_documented_speaker_genders(tmp_path):
    make_emodb(tmp_path, speakers=tuple(EMODB_GENDERS), texts=("a01", "b10"), seconds=0.02)
    clips = [emodb.parse(f) for f in relative_files(tmp_path)]
    assert len(clips) == 10 * 2 * 7
    assert [emodb.parse(f"16{text}Nb.wav").statement for text in emodb.TEXTS] == list(emodb.TEXTS)
    for clip in clips:
        assert clip.emotion == EMODB_DOC[clip.emotion_raw]
        assert clip.gender == EMODB_GENDERS[clip.speaker]
        assert clip.statement == clip.name[2:5]
    assert {c.emotion for c in clips} == set(EMODB_DOC.values())
    with pytest.raises(FileNameError, match="unknown emotion code 'X'"):
        emodb.parse("03a01Xa.wav")
    with pytest.raises(FileNameError, match="unknown speaker '04'"):
        emodb.parse("04a01Fa.wav")


def test_clip_rejects_labels_outside_the_taxonomy():
    with pytest.raises(ValueError, match="not a canonical emotion"):
        Clip(name="x", speaker="1", gender="female", emotion="contempt", emotion_raw="C")
    with pytest.raises(ValueError, match="gender"):
        Clip(name="x", speaker="1", gender="f", emotion="sad", emotion_raw="S")
