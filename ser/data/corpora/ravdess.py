"""RAVDESS: Ryerson Audio-Visual Database of Emotional Speech and Song (speech, audio only).

File names are seven two-digit fields,
``modality-vocal_channel-emotion-intensity-statement-repetition-actor`` (e.g.
``Actor_12/03-01-06-01-02-01-12.wav``); odd actors are male, even actors female.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath

from ser.data.corpora.base import Clip, Corpus, FileNameError, Source, lookup

NAME = "ravdess"
LANGUAGE = "en"
EXPECTED_CLIPS = 1440
ACTORS = tuple(f"{n:02d}" for n in range(1, 25))

SOURCE = Source(
    kind="archive",
    homepage="https://zenodo.org/records/1188976",
    url="https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
    archive_name="Audio_Speech_Actors_01-24.zip",
    md5="bc696df654c87fed845eb13823edef8a",
)

MODALITIES = {"01": "full-AV", "02": "video-only", "03": "audio-only"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
# The corpus's own code -> canonical emotion.
EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
REPETITIONS = ("01", "02")


def parse(path: PurePath | str) -> Clip:
    stem = PurePath(str(path)).stem
    fields = stem.split("-")
    if len(fields) != 7 or not all(len(f) == 2 and f.isdigit() for f in fields):
        raise FileNameError(
            f"{path}: expected seven two-digit fields "
            f"modality-channel-emotion-intensity-statement-repetition-actor, got '{stem}'"
        )
    modality, channel, emotion, intensity, statement, repetition, actor = fields
    lookup(MODALITIES, modality, "modality", path)
    lookup(VOCAL_CHANNELS, channel, "vocal channel", path)
    if repetition not in REPETITIONS:
        raise FileNameError(f"{path}: unknown repetition code '{repetition}' (expected 01 or 02)")
    if actor not in ACTORS:
        raise FileNameError(f"{path}: unknown actor '{actor}' (expected 01 .. 24)")
    if emotion == "01" and intensity != "01":
        raise FileNameError(f"{path}: neutral has no strong intensity, got '{intensity}'")
    return Clip(
        name=stem,
        speaker=actor,
        gender="male" if int(actor) % 2 else "female",
        emotion=lookup(EMOTIONS, emotion, "emotion", path),
        emotion_raw=emotion,
        intensity=lookup(INTENSITIES, intensity, "intensity", path),
        statement=lookup(STATEMENTS, statement, "statement", path),
    )


def expected_names(present: Iterable[str] = ()) -> set[str]:
    """The 1440 stems of the audio-only speech release (60 per actor)."""
    names = set()
    for actor in ACTORS:
        for emotion in EMOTIONS:
            for intensity in (("01",) if emotion == "01" else tuple(INTENSITIES)):
                for statement in STATEMENTS:
                    for repetition in REPETITIONS:
                        names.add(f"03-01-{emotion}-{intensity}-{statement}-{repetition}-{actor}")
    return names


CORPUS = Corpus(
    name=NAME,
    title="Ryerson Audio-Visual Database of Emotional Speech and Song (speech, audio only)",
    language=LANGUAGE,
    expected_clips=EXPECTED_CLIPS,
    source=SOURCE,
    emotions=EMOTIONS,
    parse=parse,
    expected_names=expected_names,
    licence="CC BY-NC-SA 4.0",
    citation="Livingstone SR, Russo FA (2018) PLoS ONE 13(5): e0196391. "
    "https://doi.org/10.1371/journal.pone.0196391",
)
