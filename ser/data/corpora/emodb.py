"""EMO-DB: Berlin Database of Emotional Speech (German).

Ten actors (5 female, 5 male) say ten German sentences in 7 emotions. File names are
``<speaker 2 digits><text 3 chars><emotion letter><version letter>`` (e.g. ``wav/03a01Fa.wav``);
the letters are the initials of the German emotion words.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from ser.data.corpora.base import Clip, Corpus, FileNameError, Source, lookup

NAME = "emodb"
LANGUAGE = "de"
EXPECTED_CLIPS = 535

SOURCE = Source(
    kind="archive",
    homepage="http://emodb.bilderbar.info/",
    url="http://emodb.bilderbar.info/download/download.zip",
    archive_name="download.zip",
    note="no checksum is published; the clips are in wav/",
)

# Speaker -> (gender, age) as the corpus documentation lists them.
SPEAKERS = {
    "03": ("male", 31), "08": ("female", 34), "09": ("female", 21), "10": ("male", 32),
    "11": ("male", 26), "12": ("male", 30), "13": ("female", 32), "14": ("female", 35),
    "15": ("male", 25), "16": ("female", 31),
}
# W Wut/Aerger, L Langeweile, E Ekel, A Angst, F Freude, T Trauer, N neutral.
EMOTIONS = {
    "W": "angry", "L": "boredom", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad",
    "N": "neutral",
}
TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")
NAME_PATTERN = re.compile(r"^(\d{2})([ab]\d{2})([A-Z])([a-z])$")


def parse(path: PurePath | str) -> Clip:
    stem = PurePath(str(path)).stem
    match = NAME_PATTERN.match(stem)
    if not match:
        raise FileNameError(
            f"{path}: expected <speaker 2 digits><text e.g. a01><emotion letter><version>, got '{stem}'"
        )
    speaker, text, emotion, _version = match.groups()
    if speaker not in SPEAKERS:
        raise FileNameError(f"{path}: unknown speaker '{speaker}' (expected one of {', '.join(SPEAKERS)})")
    if text not in TEXTS:
        raise FileNameError(f"{path}: unknown text code '{text}' (expected one of {', '.join(TEXTS)})")
    return Clip(
        name=stem,
        speaker=speaker,
        gender=SPEAKERS[speaker][0],
        emotion=lookup(EMOTIONS, emotion, "emotion", path),
        emotion_raw=emotion,
        intensity="unspecified",
        statement=text,
    )


CORPUS = Corpus(
    name=NAME,
    title="Berlin Database of Emotional Speech",
    language=LANGUAGE,
    expected_clips=EXPECTED_CLIPS,
    source=SOURCE,
    emotions=EMOTIONS,
    parse=parse,
    licence="free for research (see emodb.bilderbar.info)",
    citation="Burkhardt F, Paeschke A, Rolfes M, Sendlmeier W, Weiss B (2005) A database of "
    "German emotional speech. Interspeech 2005.",
)
