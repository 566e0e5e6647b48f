"""CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset (audio).

91 actors (48 male, 43 female) say 12 sentences in 6 emotions; file names are
``<actor>_<sentence>_<emotion>_<level>`` (e.g. ``AudioWAV/1001_DFA_ANG_XX.wav``). Only the
sentence IEO is recorded at three emotion levels. Gender is not in the name: it comes from
the corpus's demographics table (``VideoDemographics.csv``), which this module carries.
"""

from __future__ import annotations

import csv
import io
from pathlib import PurePath

from ser.data.corpora.base import Clip, Corpus, FileNameError, Source, lookup

NAME = "cremad"
LANGUAGE = "en"
EXPECTED_CLIPS = 7442

SOURCE = Source(
    kind="files",
    homepage="https://github.com/CheyneyComputerScience/CREMA-D",
    # The clips are Git LFS objects: listed through the tree API, fetched from the LFS media host.
    url="https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master/",
    listing_url="https://api.github.com/repos/CheyneyComputerScience/CREMA-D/git/trees/master?recursive=1",
    listing_pattern=r"^AudioWAV/[^/]+\.wav$",
    note="7442 WAV clips in AudioWAV/; no checksums are published",
)

EMOTIONS = {
    "ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral",
    "SAD": "sad",
}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}

# ActorID, Age, Sex from the release's VideoDemographics.csv (race/ethnicity columns omitted).
DEMOGRAPHICS_CSV = """\
ActorID,Age,Sex
1001,51,Male
1002,21,Female
1003,21,Female
1004,42,Female
1005,29,Male
1006,58,Female
1007,38,Female
1008,46,Female
1009,24,Female
1010,27,Female
1011,32,Male
1012,23,Female
1013,22,Female
1014,24,Male
1015,32,Male
1016,61,Male
1017,42,Male
1018,25,Female
1019,29,Male
1020,61,Female
1021,30,Female
1022,22,Male
1023,22,Male
1024,59,Female
1025,48,Female
1026,33,Male
1027,44,Male
1028,57,Female
1029,33,Female
1030,42,Female
1031,31,Male
1032,30,Male
1033,31,Male
1034,74,Male
1035,48,Male
1036,49,Male
1037,45,Female
1038,21,Male
1039,51,Male
1040,42,Male
1041,42,Male
1042,37,Male
1043,25,Female
1044,40,Male
1045,22,Male
1046,22,Female
1047,22,Female
1048,38,Male
1049,25,Female
1050,62,Male
1051,56,Male
1052,33,Female
1053,35,Female
1054,36,Female
1055,57,Female
1056,52,Female
1057,25,Male
1058,36,Female
1059,21,Male
1060,28,Female
1061,51,Female
1062,56,Male
1063,33,Female
1064,53,Male
1065,38,Male
1066,25,Male
1067,66,Male
1068,34,Male
1069,27,Male
1070,25,Male
1071,41,Male
1072,33,Female
1073,24,Female
1074,31,Female
1075,40,Female
1076,25,Female
1077,20,Male
1078,21,Female
1079,21,Female
1080,21,Male
1081,30,Male
1082,20,Female
1083,45,Male
1084,46,Female
1085,34,Male
1086,33,Male
1087,62,Male
1088,23,Male
1089,24,Female
1090,50,Male
1091,29,Female
"""
DEMOGRAPHICS = {
    row["ActorID"]: {"age": int(row["Age"]), "gender": row["Sex"].lower()}
    for row in csv.DictReader(io.StringIO(DEMOGRAPHICS_CSV))
}


def parse(path: PurePath | str) -> Clip:
    stem = PurePath(str(path)).stem
    parts = stem.split("_")
    if len(parts) != 4:
        raise FileNameError(f"{path}: expected <actor>_<sentence>_<emotion>_<level>, got '{stem}'")
    actor, sentence, emotion, level = parts
    if actor not in DEMOGRAPHICS:
        raise FileNameError(f"{path}: actor '{actor}' is not in the demographics table (1001 .. 1091)")
    return Clip(
        name=stem,
        speaker=actor,
        gender=DEMOGRAPHICS[actor]["gender"],
        emotion=lookup(EMOTIONS, emotion, "emotion", path),
        emotion_raw=emotion,
        intensity=lookup(LEVELS, level, "emotion level", path),
        statement=lookup(SENTENCES, sentence, "sentence", path),
    )


CORPUS = Corpus(
    name=NAME,
    title="Crowd-sourced Emotional Multimodal Actors Dataset",
    language=LANGUAGE,
    expected_clips=EXPECTED_CLIPS,
    source=SOURCE,
    emotions=EMOTIONS,
    parse=parse,
    licence="Open Database License (ODbL) 1.0; contents under the Database Contents License",
    citation="Cao H, Cooper DG, Keutmann MK, Gur RC, Nenkova A, Verma R (2014) CREMA-D. "
    "IEEE Trans. Affective Computing 5(4):377-390. doi:10.1109/TAFFC.2014.2336244",
)
