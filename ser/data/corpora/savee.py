"""SAVEE: Surrey Audio-Visual Expressed Emotion (British English, four male speakers).

File names are ``<DC|JE|JK|KL>_<code><nn>`` (e.g. ``DC_sa03.wav``); the official AudioData
folder instead holds ``<speaker>/<code><nn>.wav``, so the speaker may come from the folder.
Codes: a anger, d disgust, f fear, h happiness, n neutral, sa sadness, su surprise; 30 neutral
and 15 of each other emotion per speaker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePath

from ser.data.corpora.base import Clip, Corpus, FileNameError, Source, lookup

NAME = "savee"
LANGUAGE = "en"
EXPECTED_CLIPS = 480

SOURCE = Source(
    kind="mirror_only",
    homepage="http://kahlan.eps.surrey.ac.uk/savee/",
    note="SAVEE is released only after registration (http://kahlan.eps.surrey.ac.uk/savee/"
    "Register.html), so it cannot be downloaded automatically: put the released AudioData "
    "(or <speaker>_<code><nn>.wav files) under $SER_DATA_MIRROR/savee/",
)

SPEAKERS = ("DC", "JE", "JK", "KL")
EMOTIONS = {
    "a": "angry", "d": "disgust", "f": "fearful", "h": "happy", "n": "neutral", "sa": "sad",
    "su": "surprised",
}
CLIPS_PER_CODE = {code: (30 if code == "n" else 15) for code in EMOTIONS}
FLAT_PATTERN = re.compile(r"^([A-Z]{2})_([a-z]{1,2})(\d{2})$")
FOLDER_PATTERN = re.compile(r"^([a-z]{1,2})(\d{2})$")


def parse(path: PurePath | str) -> Clip:
    path = PurePath(str(path))
    stem = path.stem
    if flat := FLAT_PATTERN.match(stem):
        speaker, code, number = flat.groups()
    elif (nested := FOLDER_PATTERN.match(stem)) and path.parent.name in SPEAKERS:
        speaker, (code, number) = path.parent.name, nested.groups()
    else:
        raise FileNameError(
            f"{path}: expected <DC|JE|JK|KL>_<code><nn> (or <speaker>/<code><nn>), got '{stem}'"
        )
    if speaker not in SPEAKERS:
        raise FileNameError(f"{path}: unknown speaker '{speaker}' (expected one of {', '.join(SPEAKERS)})")
    emotion = lookup(EMOTIONS, code, "emotion", path)
    if not 1 <= int(number) <= CLIPS_PER_CODE[code]:
        raise FileNameError(f"{path}: sentence number {number} is outside 01 .. {CLIPS_PER_CODE[code]:02d}")
    return Clip(
        name=f"{speaker}_{code}{number}",
        speaker=speaker,
        gender="male",
        emotion=emotion,
        emotion_raw=code,
        intensity="unspecified",
        statement=f"{code}{number}",
    )


def expected_names(present: Iterable[str] = ()) -> set[str]:
    return {
        f"{speaker}_{code}{number:02d}"
        for speaker in SPEAKERS for code, count in CLIPS_PER_CODE.items()
        for number in range(1, count + 1)
    }


CORPUS = Corpus(
    name=NAME,
    title="Surrey Audio-Visual Expressed Emotion",
    language=LANGUAGE,
    expected_clips=EXPECTED_CLIPS,
    source=SOURCE,
    emotions=EMOTIONS,
    parse=parse,
    expected_names=expected_names,
    licence="research use after registration",
    citation="Haq S, Jackson PJB (2009) Speaker-dependent audio-visual emotion recognition. AVSP 2009.",
)
