"""TESS: Toronto Emotional Speech Set.

Two actresses (OAF, aged 64; YAF, aged 26) say "Say the word ___" for 200 target words in 7
emotions. File names are ``<OAF|YAF>_<word>_<emotion>`` (e.g. ``OAF_back_ps.wav``); the
official release groups them in folders ``<speaker>_<emotion>``, copies often flatten them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath

from ser.data.corpora.base import Clip, Corpus, FileNameError, Source, lookup

NAME = "tess"
LANGUAGE = "en"
EXPECTED_CLIPS = 2800

SOURCE = Source(
    kind="archive",
    homepage="https://doi.org/10.5683/SP2/E8H2MF",
    # Dataverse zips every file of the dataset; it publishes no checksum for that zip.
    url="https://borealisdata.ca/api/access/dataset/:persistentId/?persistentId=doi:10.5683/SP2/E8H2MF",
    archive_name="TESS.zip",
    note="also at University of Toronto TSpace, handle 1807/24487",
)

# The release ships one OAF clip as "OA_bite_neutral.wav"; the alias keeps it parseable.
SPEAKERS = {"OAF": "OAF", "YAF": "YAF", "OA": "OAF"}
SPEAKER_AGES = {"OAF": 64, "YAF": 26}
EMOTIONS = {
    "angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
    "neutral": "neutral", "ps": "surprised", "sad": "sad",
}
# Spellings found in some re-packaged copies, folded onto the official codes.
EMOTION_ALIASES = {"pleasant_surprise": "ps", "pleasant_surprised": "ps", "surprise": "ps"}

KNOWN_ABSENT = {
    "OAF_bite_neutral": "the release ships this clip misnamed as OA_bite_neutral.wav; copies "
    "that drop the misnamed file (such as the shared mirror) hold 2799 clips",
}


def split_name(path: PurePath | str) -> tuple[str, str, str]:
    """``(speaker code as written, word, emotion code)`` of a TESS file name."""
    stem = PurePath(str(path)).stem
    parts = stem.split("_")
    if len(parts) < 3:
        raise FileNameError(f"{path}: expected <OAF|YAF>_<word>_<emotion>, got '{stem}'")
    speaker, word = parts[0].upper(), parts[1].lower()
    emotion = "_".join(parts[2:]).lower()
    return speaker, word, EMOTION_ALIASES.get(emotion, emotion)


def parse(path: PurePath | str) -> Clip:
    speaker_code, word, emotion = split_name(path)
    speaker = lookup(SPEAKERS, speaker_code, "speaker", path)
    return Clip(
        name=PurePath(str(path)).stem,
        speaker=speaker,
        gender="female",
        emotion=lookup(EMOTIONS, emotion, "emotion", path),
        emotion_raw=emotion,
        intensity="unspecified",
        statement=f"Say the word {word}",
    )


def expected_names(present: Iterable[str]) -> set[str]:
    """Every speaker x word x emotion over the words seen: each word is said in every emotion
    by both speakers, so a clip absent from one combination is named exactly."""
    present_triples, words = set(), set()
    for name in present:
        speaker, word, emotion = split_name(name)
        present_triples.add((SPEAKERS.get(speaker, speaker), word, emotion))
        words.add(word)
    return {
        f"{speaker}_{word}_{emotion}"
        for speaker in ("OAF", "YAF") for word in words for emotion in EMOTIONS
        if (speaker, word, emotion) not in present_triples
    } | set(present)


CORPUS = Corpus(
    name=NAME,
    title="Toronto Emotional Speech Set",
    language=LANGUAGE,
    expected_clips=EXPECTED_CLIPS,
    source=SOURCE,
    emotions=EMOTIONS,
    parse=parse,
    expected_names=expected_names,
    known_absent=KNOWN_ABSENT,
    licence="CC BY-NC-ND 4.0",
    citation="Pichora-Fuller MK, Dupuis K (2020) Toronto emotional speech set (TESS). "
    "Borealis, https://doi.org/10.5683/SP2/E8H2MF",
)
