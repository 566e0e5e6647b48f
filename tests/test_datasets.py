"""Corpus modules: registry, file-name parsers and label mapping for every documented code.

The expected tables below are transcribed from each corpus's documentation, independently of
the modules under test, and the files are laid out by the shared fixtures like each release.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from ser.data.corpora import CANONICAL_EMOTIONS, CORPORA, FileNameError, get_corpus
from ser.data.corpora import cremad, emodb, emovo, eyase, ravdess, savee, tess
from ser.data.corpora.base import Clip, Source
from tests.corpus_fixtures import (
    make_cremad,
    make_emodb,
    make_emovo,
    make_eyase,
    make_ravdess,
    make_savee,
    make_tess,
)

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
EMOVO_DOC = {"neu": "neutral", "gio": "happy", "tri": "sad", "rab": "angry", "pau": "fearful", "dis": "disgust",
             "sor": "surprised"}
EMOVO_SENTENCES = ["b1", "b2", "b3", "d1", "d2", "l1", "l2", "l3", "l4", "n1", "n2", "n3", "n4", "n5"]
EYASE_DOC = {"ang": "angry", "hap": "happy", "neu": "neutral", "sad": "sad"}
EYASE_SPEAKER_CLIPS = {"Female01": 80, "Female02": 80, "Female03": 80, "Male01": 117, "Male02": 110, "Male03": 112}


def relative_files(root: Path) -> list[PurePosixPath]:
    return sorted(PurePosixPath(p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())


def test_registry_lists_every_corpus_with_a_uniform_description():
    assert set(CORPORA) == {"ravdess", "tess", "cremad", "savee", "emodb", "emovo", "eyase"}
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
            savee.EXPECTED_CLIPS, emovo.EXPECTED_CLIPS, eyase.EXPECTED_CLIPS) == (1440, 2800, 7442, 535, 480, 588, 579)
    assert "CheyneyComputerScience/CREMA-D" in cremad.SOURCE.listing_url
    assert cremad.SOURCE.kind == "files"
    assert emodb.SOURCE.url == "http://emodb.bilderbar.info/download/download.zip"
    assert savee.SOURCE.kind == "mirror_only" and "registration" in savee.SOURCE.note
    for module in (emovo, eyase):
        assert module.SOURCE.kind == "mirror_only" and module.SOURCE.url is None
        assert f"$SER_DATA_MIRROR/{module.NAME}/" in module.SOURCE.note and "download URL" in module.SOURCE.note
    assert (emovo.LANGUAGE, eyase.LANGUAGE) == ("it", "ar")


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


def test_emovo_parses_every_code_of_the_release(tmp_path):
    make_emovo(tmp_path, actors=("f1", "m3"), sentences=EMOVO_SENTENCES, seconds=0.02)
    files = relative_files(tmp_path)
    clips = [emovo.parse(f) for f in files]
    assert len(clips) == 2 * 7 * 14
    for relative, clip in zip(files, clips):
        code, actor, sentence = relative.stem.split("-")
        assert relative.parent.name == actor == clip.speaker
        assert clip.gender == {"f": "female", "m": "male"}[actor[0]]
        assert clip.emotion == EMOVO_DOC[code] and clip.emotion_raw == code
        assert clip.statement == sentence and clip.name == relative.stem
    assert {c.emotion for c in clips} == set(EMOVO_DOC.values())
    expected = emovo.expected_names()
    assert len(expected) == 588 and {c.name for c in clips} <= expected
    assert sum(name.startswith("gio-") for name in expected) == 84
    assert sum(name.endswith("-n5") for name in expected) == 42
    # Copies that flatten the actor folders still say everything in the name.
    assert emovo.parse("sor-m2-l4.wav").speaker == "m2"


@pytest.mark.parametrize("bad, problem", [
    ("f1/xyz-f1-b1.wav", "unknown emotion code 'xyz'"),
    ("f4/gio-f4-b1.wav", "unknown actor code 'f4'"),
    ("f1/gio-f1-b4.wav", "unknown sentence code 'b4'"),
    ("f2/gio-f1-b1.wav", "the name says actor 'f1' but the file is in the folder of 'f2'"),
    ("f1/gio_f1_b1.wav", "expected <emotion>-<actor>-<sentence>"),
])
def test_emovo_rejects_names_outside_the_documentation(bad, problem):
    with pytest.raises(FileNameError, match=re.escape(f"{bad}: {problem}")):
        emovo.parse(bad)


def test_eyase_takes_the_speaker_from_the_folder_not_the_prefix(tmp_path):
    make_eyase(tmp_path, per_emotion=3, seconds=0.02)
    files = relative_files(tmp_path)
    clips = [eyase.parse(f) for f in files]
    assert len(clips) == 6 * 4 * 3
    for relative, clip in zip(files, clips):
        code = relative.stem.split("_")[1].split(" ")[0]
        assert clip.speaker == relative.parent.name
        assert clip.gender == ("female" if clip.speaker.startswith("Female") else "male")
        assert clip.emotion == EYASE_DOC[code] and clip.emotion_raw == code
    # Female01 and Female02 hold the same file names; their clips must stay apart.
    assert {f.name for f in files if f.parent.name == "Female01"} == {
        f.name for f in files if f.parent.name == "Female02"}
    assert len({c.name for c in clips}) == len(clips)
    assert eyase.parse("Female02/fm01_ang (1).wav").name == "Female02_ang_01"
    assert {c.name for c in clips} <= eyase.expected_names()


def test_eyase_names_every_clip_of_the_release():
    expected = eyase.expected_names()
    assert len(expected) == 579
    per_speaker = {speaker: sum(name.startswith(f"{speaker}_") for name in expected) for speaker in EYASE_SPEAKER_CLIPS}
    assert per_speaker == EYASE_SPEAKER_CLIPS
    assert {name.split("_")[1] for name in expected} == set(EYASE_DOC)


@pytest.mark.parametrize("bad, problem", [
    ("Female01/fm01_fea (1).wav", "unknown emotion code 'fea'"),
    ("Female04/fm01_ang (1).wav", "the folder is the speaker, but 'Female04' is not one of"),
    ("fm01_ang (1).wav", "the folder is the speaker, but '' is not one of"),
    ("Male01/fm01_ang (1).wav", "the prefix 'fm' is not that of a male speaker like Male01"),
    ("Male01/xx01_ang (1).wav", "unknown prefix code 'xx'"),
    ("Female01/fm01_ang (0).wav", "clip number 0 is below 1"),
    ("Female01/fm01_ang 1.wav", "expected <prefix>_<emotion> (<n>)"),
])
def test_eyase_rejects_names_outside_the_documentation(bad, problem):
    with pytest.raises(FileNameError, match=re.escape(f"{bad}: {problem}")):
        eyase.parse(bad)


def test_clip_rejects_labels_outside_the_taxonomy():
    with pytest.raises(ValueError, match="not a canonical emotion"):
        Clip(name="x", speaker="1", gender="female", emotion="contempt", emotion_raw="C")
    with pytest.raises(ValueError, match="gender"):
        Clip(name="x", speaker="1", gender="f", emotion="sad", emotion_raw="S")
