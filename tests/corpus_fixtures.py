"""Synthetic corpora for tests: short speech-like clips named and laid out like each release.

``write_clip`` makes a voiced harmonic tone with a syllable-like amplitude envelope and an F0
contour; pitch level, pitch movement, loudness, speaking rate and brightness depend on the
emotion (and gender), so even a tiny model can learn something from a few clips. The
``make_<corpus>`` functions lay files out with the official names and folders; ``make_mirror``
builds a small ``<root>/<corpus>/`` mirror usable as ``SER_DATA_MIRROR``. Every function is
deterministic given its arguments.

Import as ``from tests.corpus_fixtures import make_mirror, write_clip``.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ser.data.corpora import cremad, emodb, emovo, eyase, ravdess, savee, tess


@dataclass(frozen=True)
class Voice:
    """Prosody of one emotion: F0 scale, F0 movement (semitones over the clip), F0 wobble
    (semitones), syllables per second, level (peak), brightness (harmonic roll-off)."""

    f0_scale: float
    glide_st: float
    wobble_st: float
    syllable_hz: float
    level: float
    brightness: float


VOICES: dict[str, Voice] = {
    "neutral": Voice(1.00, -1.0, 0.3, 4.0, 0.30, 0.55),
    "calm": Voice(0.95, -1.5, 0.2, 3.0, 0.25, 0.45),
    "happy": Voice(1.30, 3.0, 1.5, 5.5, 0.60, 0.80),
    "sad": Voice(0.85, -3.0, 0.2, 2.5, 0.20, 0.30),
    "angry": Voice(1.25, 1.0, 1.0, 6.0, 0.85, 0.95),
    "fearful": Voice(1.45, 2.0, 2.5, 6.5, 0.45, 0.70),
    "disgust": Voice(0.90, -4.0, 0.8, 3.0, 0.45, 0.60),
    "surprised": Voice(1.50, 6.0, 1.0, 4.5, 0.60, 0.75),
    "boredom": Voice(0.80, -0.5, 0.1, 2.5, 0.22, 0.35),
}
BASE_F0 = {"female": 210.0, "male": 120.0}
EMOTIONS = tuple(VOICES)


def stable_seed(*parts: object) -> int:
    """A seed derived from names (stable across runs and processes, unlike ``hash``)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def synth_speech(seconds: float = 1.0, sample_rate: int = 16000, emotion: str = "neutral",
                 gender: str = "female", seed: int = 0, channels: int = 1) -> np.ndarray:
    """Speech-like float32 samples ``[n, channels]`` (peak = the emotion's level)."""
    if emotion not in VOICES:
        raise ValueError(f"unknown emotion '{emotion}'; choose one of {EMOTIONS}")
    voice, rng = VOICES[emotion], np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n) / sample_rate
    progress = t / max(seconds, 1e-9)
    f0_base = BASE_F0[gender] * voice.f0_scale * rng.uniform(0.93, 1.07)
    semitones = (voice.glide_st * progress
                 + voice.wobble_st * np.sin(2 * np.pi * rng.uniform(3, 7) * t + rng.uniform(0, 2 * np.pi)))
    f0 = f0_base * 2 ** (semitones / 12)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    signal = np.zeros(n)
    for harmonic in range(1, 16):
        if harmonic * f0.max() >= sample_rate / 2:
            break
        signal += voice.brightness ** (harmonic - 1) * np.sin(harmonic * phase)
    syllables = np.clip(np.sin(np.pi * voice.syllable_hz * t + rng.uniform(0, np.pi)), 0, None) ** 1.5
    edges = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)  # 50 ms fade in and out
    signal = signal * (0.15 + 0.85 * syllables) * np.clip(edges, 0, 1)
    signal += 0.003 * rng.standard_normal(n)  # breath noise, so no clip is digitally silent
    signal *= voice.level / max(np.max(np.abs(signal)), 1e-9)
    if channels == 1:
        return signal.astype(np.float32)[:, None]
    # Slightly different channels, like a real stereo recording.
    gains = np.linspace(1.0, 0.8, channels)
    return (signal[:, None] * gains[None, :]).astype(np.float32)


FORMATS = {".wav": "WAV", ".flac": "FLAC", ".aif": "AIFF", ".aiff": "AIFF", ".ogg": "OGG"}


def write_clip(path: str | os.PathLike, *, seconds: float = 1.0, sample_rate: int = 16000,
               channels: int = 1, emotion: str = "neutral", gender: str = "female", seed: int = 0,
               fmt: str | None = None, subtype: str | None = None) -> Path:
    """Write one synthetic clip; ``fmt`` (WAV, FLAC, AIFF, OGG) defaults to the suffix's, so
    ``fmt="AIFF"`` on a ``.wav`` name makes a TESS-style AIFF named .wav."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the format from the suffix; pass fmt=")
    if subtype is None:
        subtype = "VORBIS" if fmt.upper() == "OGG" else "PCM_16"
    samples = synth_speech(seconds, sample_rate, emotion, gender, seed, channels)
    sf.write(str(path), samples, sample_rate, format=fmt, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------------
# Broken audio, for quarantine and error-path tests

BAD_KINDS = ("truncated", "zero_bytes", "random_bytes", "silent", "too_short")


def write_bad_clip(path: str | os.PathLike, kind: str, *, sample_rate: int = 16000, seed: int = 0) -> Path:
    """A clip broken in one way: ``truncated`` (header promises more than the file holds; a
    cut inside the header), ``zero_bytes``, ``random_bytes``, ``silent`` (1 s of zeros),
    ``too_short`` (1 ms of sound)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        write_clip(path, seconds=1.0, sample_rate=sample_rate, seed=seed, fmt="WAV")
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "silent":
        sf.write(str(path), np.zeros(sample_rate, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    elif kind == "too_short":
        write_clip(path, seconds=0.001, sample_rate=sample_rate, seed=seed, fmt="WAV")
    else:
        raise ValueError(f"unknown kind '{kind}'; choose one of {BAD_KINDS}")
    return path


# ---------------------------------------------------------------------------------------------
# Corpora laid out like their releases


def _write(root: Path, relative: str, emotion: str, gender: str, seconds: float, sample_rate: int,
           fmt: str | None, channels: int = 1) -> Path:
    return write_clip(root / relative, seconds=seconds, sample_rate=sample_rate, channels=channels,
                      emotion=emotion, gender=gender, seed=stable_seed(relative), fmt=fmt)


def make_ravdess(root: str | os.PathLike, *, actors: Iterable[int] = (1, 2, 3, 4),
                 emotions: Iterable[str] = tuple(ravdess.EMOTIONS), intensities: Iterable[str] = ("01",),
                 statements: Iterable[str] = ("01", "02"), repetitions: Iterable[str] = ("01",),
                 seconds: float = 1.0, sample_rate: int = 16000, suffix: str = ".wav",
                 stereo: Iterable[str] = ()) -> list[Path]:
    """``Actor_XX/03-01-EE-II-SS-RR-XX<suffix>``; ``emotions`` are RAVDESS codes ("01".."08");
    neutral gets intensity 01 only, as in the release; names in ``stereo`` get 2 channels."""
    root, stereo = Path(root), set(stereo)
    paths = []
    for actor in actors:
        for code in emotions:
            for intensity in (("01",) if code == "01" else intensities):
                for statement in statements:
                    for repetition in repetitions:
                        stem = f"03-01-{code}-{intensity}-{statement}-{repetition}-{actor:02d}"
                        paths.append(_write(root, f"Actor_{actor:02d}/{stem}{suffix}", ravdess.EMOTIONS[code],
                                            "male" if actor % 2 else "female", seconds, sample_rate, None,
                                            2 if stem in stereo else 1))
    return paths


def make_tess(root: str | os.PathLike, *, speakers: Iterable[str] = ("OAF", "YAF"),
              words: Iterable[str] = ("back", "bar", "base"), emotions: Iterable[str] = tuple(tess.EMOTIONS),
              seconds: float = 1.0, sample_rate: int = 16000, suffix: str = ".wav",
              folders: bool = False) -> list[Path]:
    """``<speaker>_<word>_<emotion><suffix>`` flat, or in ``<speaker>_<emotion>/`` folders."""
    root = Path(root)
    paths = []
    for speaker in speakers:
        for emotion in emotions:
            for word in words:
                name = f"{speaker}_{word}_{emotion}{suffix}"
                relative = f"{speaker}_{emotion}/{name}" if folders else name
                paths.append(_write(root, relative, tess.EMOTIONS[emotion], "female", seconds, sample_rate, None))
    return paths


def make_cremad(root: str | os.PathLike, *, actors: Iterable[str] = ("1001", "1002", "1005", "1007"),
                sentences: Iterable[str] = ("IEO", "DFA"), emotions: Iterable[str] = tuple(cremad.EMOTIONS),
                seconds: float = 1.0, sample_rate: int = 16000) -> list[Path]:
    """``AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav``; IEO at LO/MD/HI (XX for NEU),
    the other sentences at XX, as in the release."""
    root = Path(root)
    paths = []
    for actor in actors:
        gender = cremad.DEMOGRAPHICS[actor]["gender"]
        for sentence in sentences:
            for emotion in emotions:
                levels = ("LO", "MD", "HI") if sentence == "IEO" and emotion != "NEU" else ("XX",)
                for level in levels:
                    paths.append(_write(root, f"AudioWAV/{actor}_{sentence}_{emotion}_{level}.wav",
                                        cremad.EMOTIONS[emotion], gender, seconds, sample_rate, None))
    return paths


def make_savee(root: str | os.PathLike, *, speakers: Iterable[str] = savee.SPEAKERS,
               emotions: Iterable[str] = tuple(savee.EMOTIONS), per_emotion: int = 2,
               seconds: float = 1.0, sample_rate: int = 16000, layout: str = "flat") -> list[Path]:
    """``AudioData/<speaker>_<code><nn>.wav`` (flat) or ``AudioData/<speaker>/<code><nn>.wav``
    (``layout="official"``)."""
    root = Path(root)
    paths = []
    for speaker in speakers:
        for code in emotions:
            for number in range(1, per_emotion + 1):
                name = f"{code}{number:02d}.wav"
                relative = f"AudioData/{speaker}/{name}" if layout == "official" else f"AudioData/{speaker}_{name}"
                paths.append(_write(root, relative, savee.EMOTIONS[code], "male", seconds, sample_rate, None))
    return paths


def make_emodb(root: str | os.PathLike, *, speakers: Iterable[str] = ("03", "08", "09", "10"),
               texts: Iterable[str] = ("a01", "b01"), emotions: Iterable[str] = tuple(emodb.EMOTIONS),
               seconds: float = 1.0, sample_rate: int = 16000) -> list[Path]:
    """``wav/<speaker><text><emotion letter>a.wav``."""
    root = Path(root)
    paths = []
    for speaker in speakers:
        for text in texts:
            for letter in emotions:
                paths.append(_write(root, f"wav/{speaker}{text}{letter}a.wav", emodb.EMOTIONS[letter],
                                    emodb.SPEAKERS[speaker][0], seconds, sample_rate, None))
    return paths


def make_emovo(root: str | os.PathLike, *, actors: Iterable[str] = tuple(emovo.ACTORS),
               emotions: Iterable[str] = tuple(emovo.EMOTIONS), sentences: Iterable[str] = ("b1", "n1"),
               seconds: float = 1.0, sample_rate: int = 16000, suffix: str = ".wav") -> list[Path]:
    """``<actor>/<emotion>-<actor>-<sentence><suffix>`` (e.g. ``f1/gio-f1-b1.wav``)."""
    root = Path(root)
    paths = []
    for actor in actors:
        for code in emotions:
            for sentence in sentences:
                paths.append(_write(root, f"{actor}/{code}-{actor}-{sentence}{suffix}", emovo.EMOTIONS[code],
                                    emovo.ACTORS[actor], seconds, sample_rate, None))
    return paths


# The release's file prefix of each speaker folder: Female02 reuses Female01's, so the same file
# names occur in two folders.
EYASE_PREFIXES = {"Female01": "fm01", "Female02": "fm01", "Female03": "fm03", "Male01": "ml01",
                  "Male02": "ml02", "Male03": "ml03"}


def make_eyase(root: str | os.PathLike, *, speakers: Iterable[str] = tuple(EYASE_PREFIXES),
               emotions: Iterable[str] = tuple(eyase.EMOTIONS), per_emotion: int = 2,
               seconds: float = 1.0, sample_rate: int = 16000, suffix: str = ".wav") -> list[Path]:
    """``<Speaker>/<prefix>_<emotion> (<n>)<suffix>`` (e.g. ``Female02/fm01_ang (1).wav``)."""
    root = Path(root)
    paths = []
    for speaker in speakers:
        for code in emotions:
            for number in range(1, per_emotion + 1):
                relative = f"{speaker}/{EYASE_PREFIXES[speaker]}_{code} ({number}){suffix}"
                paths.append(_write(root, relative, eyase.EMOTIONS[code], eyase.SPEAKERS[speaker], seconds,
                                    sample_rate, None))
    return paths


MAKERS = {"ravdess": make_ravdess, "tess": make_tess, "cremad": make_cremad, "savee": make_savee,
          "emodb": make_emodb, "emovo": make_emovo, "eyase": make_eyase}


def make_mirror(root: str | os.PathLike, corpora: Sequence[str] = ("ravdess", "tess"), *, small: bool = True,
                seconds: float = 1.0, sample_rate: int = 16000) -> dict[str, list[Path]]:
    """A mirror ``<root>/<corpus>/...`` with speakers of both genders (where the corpus has
    them) and every emotion. ``small`` keeps a handful of clips per speaker and emotion
    (RAVDESS 64, TESS 42 clips); ``small=False`` makes a few times more. Use it with
    ``data.download.strict: false``, since it holds fewer clips than the releases."""
    root = Path(root)
    sizes = {
        "ravdess": dict(actors=(1, 2, 3, 4) if small else tuple(range(1, 9)),
                        intensities=("01",) if small else ("01", "02")),
        "tess": dict(words=("back", "bar", "base") if small else ("back", "bar", "base", "bath", "bean", "beg")),
        "cremad": dict(sentences=("IEO", "DFA") if small else ("IEO", "DFA", "TIE", "IOM")),
        "savee": dict(per_emotion=2 if small else 4),
        "emodb": dict(texts=("a01", "b01") if small else ("a01", "a02", "b01", "b02")),
        "emovo": dict(actors=("f1", "m1") if small else tuple(emovo.ACTORS),
                      sentences=("b1", "n1") if small else ("b1", "d1", "l1", "n1")),
        # Female01 and Female02 both, so even a small mirror holds the release's shared file names.
        "eyase": dict(speakers=("Female01", "Female02", "Male01") if small else tuple(EYASE_PREFIXES),
                      per_emotion=2 if small else 4),
    }
    made = {}
    for corpus in corpora:
        if corpus not in MAKERS:
            raise ValueError(f"unknown corpus '{corpus}'; choose from {', '.join(MAKERS)}")
        made[corpus] = MAKERS[corpus](root / corpus, seconds=seconds, sample_rate=sample_rate, **sizes[corpus])
    return made


# ---------------------------------------------------------------------------------------------
# Archives


def make_archive(folder: str | os.PathLike, archive: str | os.PathLike, *,
                 extra_members: dict[str, bytes] | None = None, symlinks: dict[str, str] | None = None) -> Path:
    """Pack ``folder`` into a .zip or .tar(.gz) named ``archive``; ``extra_members`` adds raw
    member names (e.g. ``../evil.wav``) and ``symlinks`` link members (name -> target)."""
    folder, archive = Path(folder), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for path in files:
                zf.write(path, path.relative_to(folder).as_posix())
            for name, payload in (extra_members or {}).items():
                zf.writestr(name, payload)
            for name, target in (symlinks or {}).items():
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o120777 << 16)
                zf.writestr(info, target)
    else:
        import io

        with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as tf:
            for path in files:
                tf.add(path, path.relative_to(folder).as_posix())
            for name, payload in (extra_members or {}).items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            for name, target in (symlinks or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
    return archive
