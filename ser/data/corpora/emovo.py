"""EMOVO: an Italian emotional speech corpus (Fondazione Ugo Bordoni).

Six actors (f1, f2, f3 female; m1, m2, m3 male) read 14 sentences in 7 emotions: 588 clips.
File names are ``<emotion>-<actor>-<sentence>``, kept in one folder per actor (e.g.
``f1/gio-f1-b1.wav``). The codes are Italian words: neu neutrale, gio gioia (joy), tri
tristezza, rab rabbia (anger), pau paura (fear), dis disgusto, sor sorpresa.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePath

from ser.data.corpora.base import Clip, Corpus, FileNameError, Source, lookup

NAME = "emovo"
LANGUAGE = "it"
EXPECTED_CLIPS = 588

SOURCE = Source(
    kind="mirror_only",
    homepage="http://lrec-conf.org/proceedings/lrec2014/summaries/591.html",
    note="EMOVO is distributed by the Fondazione Ugo Bordoni without a public download URL or "
    "checksum that could be fetched and verified automatically: put the release's "
    "<actor>/<emotion>-<actor>-<sentence>.wav files under $SER_DATA_MIRROR/emovo/",
)

ACTORS = {"f1": "female", "f2": "female", "f3": "female", "m1": "male", "m2": "male", "m3": "male"}
EMOTIONS = {
    "neu": "neutral", "gio": "happy", "tri": "sad", "rab": "angry", "pau": "fearful",
    "dis": "disgust", "sor": "surprised",
}
SENTENCES = ("b1", "b2", "b3", "d1", "d2", "l1", "l2", "l3", "l4", "n1", "n2", "n3", "n4", "n5")
NAME_PATTERN = re.compile(r"^([a-z]+)-([a-z]+\d+)-([a-z]+\d+)$")
# A folder named like an actor is the release's per-actor folder, so it must agree with the name.
ACTOR_FOLDER = re.compile(r"^[fm]\d+$")


def parse(path: PurePath | str) -> Clip:
    path = PurePath(str(path))
    match = NAME_PATTERN.match(path.stem)
    if not match:
        raise FileNameError(f"{path}: expected <emotion>-<actor>-<sentence> (e.g. gio-f1-b1), got '{path.stem}'")
    emotion_code, actor, sentence = match.groups()
    gender = lookup(ACTORS, actor, "actor", path)
    folder = path.parent.name
    if ACTOR_FOLDER.match(folder) and folder != actor:
        raise FileNameError(f"{path}: the name says actor '{actor}' but the file is in the folder of '{folder}'")
    if sentence not in SENTENCES:
        raise FileNameError(f"{path}: unknown sentence code '{sentence}' (expected one of {', '.join(SENTENCES)})")
    return Clip(
        name=path.stem,
        speaker=actor,
        gender=gender,
        emotion=lookup(EMOTIONS, emotion_code, "emotion", path),
        emotion_raw=emotion_code,
        intensity="unspecified",
        statement=sentence,
    )


def expected_names(present: Iterable[str] = ()) -> set[str]:
    """The 588 stems of the release: every actor reads every sentence in every emotion."""
    return {
        f"{emotion}-{actor}-{sentence}"
        for actor in ACTORS for emotion in EMOTIONS for sentence in SENTENCES
    }


CORPUS = Corpus(
    name=NAME,
    title="EMOVO Corpus: an Italian Emotional Speech Database",
    language=LANGUAGE,
    expected_clips=EXPECTED_CLIPS,
    source=SOURCE,
    emotions=EMOTIONS,
    parse=parse,
    expected_names=expected_names,
    licence="for research use",
    citation="Costantini G, Iaderola I, Paoloni A, Todisco M (2014) EMOVO Corpus: an Italian "
    "Emotional Speech Database. LREC 2014, 3501-3504.",
)
