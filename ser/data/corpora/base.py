"""What every corpus module declares, and the helpers their parsers share.

A corpus module (``ser/data/corpora/<name>.py``) describes one emotional speech corpus: where the
official release lives (:class:`Source`), how many clips it holds, how its file names encode
speaker, emotion and text (``parse``), and how its own emotion codes map onto the canonical
taxonomy (``EMOTIONS``, kept next to the parser). Everything else in ser is corpus-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

from ser.audio import AUDIO_EXTENSIONS, is_audio  # noqa: F401  (the corpora's own names for them)

CANONICAL_EMOTIONS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom",
)
GENDERS: tuple[str, ...] = ("female", "male")
INTENSITIES: tuple[str, ...] = ("low", "medium", "normal", "high", "strong", "unspecified")

class FileNameError(ValueError):
    """A file name that does not follow its corpus's documented naming."""


@dataclass(frozen=True)
class Source:
    """Where the official release of a corpus is obtained.

    ``kind`` is ``archive`` (one file to download and extract), ``files`` (a listing URL
    that names every file, each fetched from ``url`` + name) or ``mirror_only`` (the
    release needs a registration, so only ``SER_DATA_MIRROR`` can provide it).
    A checksum is given only where the publisher publishes one.
    """

    kind: str
    homepage: str
    url: str | None = None
    archive_name: str | None = None
    md5: str | None = None
    sha256: str | None = None
    listing_url: str | None = None
    listing_pattern: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("archive", "files", "mirror_only"):
            raise ValueError(f"unknown source kind '{self.kind}'")
        if self.kind == "archive" and not (self.url and self.archive_name):
            raise ValueError("an archive source needs url and archive_name")
        if self.kind == "files" and not (self.url and self.listing_url):
            raise ValueError("a files source needs url (the base) and listing_url")


@dataclass(frozen=True)
class Clip:
    """What a file name says about one clip (``speaker`` is local to the corpus)."""

    name: str
    speaker: str
    gender: str
    emotion: str
    emotion_raw: str
    intensity: str = "unspecified"
    statement: str = ""

    def __post_init__(self) -> None:
        if self.emotion not in CANONICAL_EMOTIONS:
            raise ValueError(f"{self.name}: '{self.emotion}' is not a canonical emotion")
        if self.gender not in GENDERS:
            raise ValueError(f"{self.name}: gender '{self.gender}' is not one of {GENDERS}")
        if self.intensity not in INTENSITIES:
            raise ValueError(f"{self.name}: intensity '{self.intensity}' is not one of {INTENSITIES}")


@dataclass(frozen=True)
class Corpus:
    """The uniform description each corpus module exports as ``CORPUS``."""

    name: str
    title: str
    language: str
    expected_clips: int
    source: Source
    emotions: Mapping[str, str]
    parse: Callable[[PurePath], Clip]
    # Names (canonical stems) the release should hold, computed from the names present so
    # corpora without a closed list can still say which clips are missing; None = count only.
    expected_names: Callable[[Iterable[str]], set[str]] | None = None
    # Clips some faithful copies lack for a documented reason: name -> reason.
    known_absent: Mapping[str, str] = field(default_factory=dict)
    licence: str = ""
    citation: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.emotions.values()) - set(CANONICAL_EMOTIONS))
        if unknown:
            raise ValueError(f"{self.name}: emotion table maps to non-canonical {unknown}")


def lookup(table: Mapping[str, str], code: str, what: str, path: PurePath | str) -> str:
    """``table[code]``, or a FileNameError naming the file, the field and the allowed codes."""
    try:
        return table[code]
    except KeyError:
        raise FileNameError(
            f"{path}: unknown {what} code '{code}' (expected one of {', '.join(sorted(table))})"
        ) from None
