"""EYASE: Egyptian Arabic Semi-natural Emotion speech database.

579 utterances cut from an Egyptian television series: 3 female and 3 male speakers, 4 emotions.
The release keeps one folder per speaker, ``<Speaker>/<prefix>_<emotion> (<n>)`` (e.g.
``Female01/fm01_ang (1).wav``). The folder is the speaker; the prefix is not (Female02's files
also start with ``fm01_``), so the same file name occurs in two folders and the clip name
carries the folder: ``Female02/fm01_ang (1).wav`` is ``Female02_ang_01``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePath

from ser.data.corpora.base import Clip, Corpus, FileNameError, Source, lookup

NAME = "eyase"
LANGUAGE = "ar"
EXPECTED_CLIPS = 579

SOURCE = Source(
    kind="mirror_only",
    homepage="https://www.sciencedirect.com/journal/speech-communication",
    note="EYASE has no official download URL or published checksum to fetch and verify (copies "
    "circulate in third-party repositories), so it cannot be downloaded automatically: put the "
    "release's Female01-03/ and Male01-03/ folders under $SER_DATA_MIRROR/eyase/",
)

SPEAKERS = {
    "Female01": "female", "Female02": "female", "Female03": "female",
    "Male01": "male", "Male02": "male", "Male03": "male",
}
EMOTIONS = {"ang": "angry", "hap": "happy", "neu": "neutral", "sad": "sad"}
# Clips per speaker and emotion in the release, numbered (1) .. (count) without gaps; the
# per-speaker sums are the documented 80, 80, 80, 117, 110, 112.
CLIPS = {
    "Female01": {"ang": 20, "hap": 20, "neu": 20, "sad": 20},
    "Female02": {"ang": 20, "hap": 20, "neu": 20, "sad": 20},
    "Female03": {"ang": 20, "hap": 20, "neu": 20, "sad": 20},
    "Male01": {"ang": 30, "hap": 30, "neu": 30, "sad": 27},
    "Male02": {"ang": 30, "hap": 20, "neu": 30, "sad": 30},
    "Male03": {"ang": 30, "hap": 22, "neu": 30, "sad": 30},
}
# The prefix's letters still tell the gender, which must agree with the folder's.
PREFIX_GENDERS = {"fm": "female", "ml": "male"}
NAME_PATTERN = re.compile(r"^([a-z]+)\d+_([a-z]+) \((\d+)\)$")


def clip_name(speaker: str, emotion_code: str, number: int) -> str:
    return f"{speaker}_{emotion_code}_{number:02d}"


def parse(path: PurePath | str) -> Clip:
    """Labels of one clip; ``path`` must include the speaker folder (relative paths do)."""
    path = PurePath(str(path))
    match = NAME_PATTERN.match(path.stem)
    if not match:
        raise FileNameError(f"{path}: expected <prefix>_<emotion> (<n>) (e.g. 'fm01_ang (1)'), got '{path.stem}'")
    prefix_letters, emotion_code, number = match.groups()
    speaker = path.parent.name
    if speaker not in SPEAKERS:
        raise FileNameError(f"{path}: the folder is the speaker, but '{speaker}' is not one of "
                            f"{', '.join(SPEAKERS)}")
    gender = SPEAKERS[speaker]
    if lookup(PREFIX_GENDERS, prefix_letters, "prefix", path) != gender:
        raise FileNameError(f"{path}: the prefix '{prefix_letters}' is not that of a {gender} speaker "
                            f"like {speaker}")
    emotion = lookup(EMOTIONS, emotion_code, "emotion", path)
    if int(number) < 1:
        raise FileNameError(f"{path}: clip number {number} is below 1")
    return Clip(
        name=clip_name(speaker, emotion_code, int(number)),
        speaker=speaker,
        gender=gender,
        emotion=emotion,
        emotion_raw=emotion_code,
        intensity="unspecified",
    )


def expected_names(present: Iterable[str] = ()) -> set[str]:
    """The 579 clip names of the release."""
    return {
        clip_name(speaker, emotion_code, number)
        for speaker, counts in CLIPS.items() for emotion_code, count in counts.items()
        for number in range(1, count + 1)
    }


CORPUS = Corpus(
    name=NAME,
    title="Egyptian Arabic Semi-natural Emotion speech database",
    language=LANGUAGE,
    expected_clips=EXPECTED_CLIPS,
    source=SOURCE,
    emotions=EMOTIONS,
    parse=parse,
    expected_names=expected_names,
    licence="for research and education",
    citation="Abdel-Hamid L (2020) Egyptian Arabic speech emotion recognition using prosodic, "
    "spectral and wavelet features. Speech Communication 122, 19-30.",
)
