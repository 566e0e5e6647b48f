"""The corpora ser knows: one module per corpus, each exporting a uniform ``CORPUS``.

``CORPORA`` maps a corpus name (as used in ``params.yaml`` ``data.corpora``) to its module;
``get_corpus(name)`` returns the module, or a ValueError naming the known corpora.
"""

from __future__ import annotations

from types import ModuleType

from ser.data.corpora import cremad, emodb, emovo, eyase, ravdess, savee, tess
from ser.data.corpora.base import (
    AUDIO_EXTENSIONS,
    CANONICAL_EMOTIONS,
    Clip,
    Corpus,
    FileNameError,
    Source,
    is_audio,
)

CORPORA: dict[str, ModuleType] = {
    module.NAME: module for module in (ravdess, tess, cremad, savee, emodb, emovo, eyase)
}


def get_corpus(name: str) -> ModuleType:
    try:
        return CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus '{name}'; known corpora: {', '.join(CORPORA)}") from None


__all__ = [
    "AUDIO_EXTENSIONS", "CANONICAL_EMOTIONS", "CORPORA", "Clip", "Corpus", "FileNameError",
    "Source", "get_corpus", "is_audio",
]
