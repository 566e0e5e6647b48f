"""A user's labelled recordings as a corpus: ``data.custom.<name>`` in params.yaml.

Two layouts. A CSV manifest (columns ``path, emotion, speaker``, optionally ``gender`` and
``language``; paths relative to the manifest's folder), or a folder per emotion
(``<root>/<label>/<files>``): the speaker comes from ``speaker_pattern`` on the file stem, else
from a folder below the label (``<root>/<label>/<speaker>/<files>``), else the whole tree is one
speaker (named after the root folder).

:func:`declared_files` reads the declaration and checks it whole before anything is copied or
probed: every label outside the declared mapping, every row without a path, emotion or speaker,
is named in one :class:`CustomCorpusError`. A listed file that does not exist is not an error:
it is quarantined as missing, and the rest goes on.

The download stage copies the files into ``data/raw/<name>/`` and writes :data:`LABELS_NAME`
there (each file's path inside that folder, label, speaker, gender, language, where it was
declared); harmonize reads that table back (:func:`label_rows`) and maps the labels through the
mapping of params.yaml, so ``data/raw/<name>/`` is all it needs, like a built-in corpus.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ser.data.corpora.base import GENDERS, is_audio
from ser.data.metadata import COLUMNS, keep_ids_unique
from ser.params import CustomCorpusParams, typed

LABELS_NAME = "labels.csv"
LABEL_COLUMNS = ("path", "emotion", "speaker", "gender", "language", "origin", "problem")
MANIFEST_REQUIRED = ("path", "emotion", "speaker")
MANIFEST_OPTIONAL = ("gender", "language")
SHOWN = 20


class CustomCorpusError(ValueError):
    """A user corpus's declaration that cannot be used as it is (the message names every row)."""


@dataclass(frozen=True)
class Declared:
    """One file of a user corpus as declared."""

    path: str               # inside data/raw/<name>/ (posix, relative)
    emotion: str            # the user's own label
    speaker: str            # local to the corpus; "" when unknown (``problem`` says why)
    gender: str | None
    language: str
    origin: str             # where it was declared: "<manifest> row <n>" or its path in the tree
    problem: str | None = None
    source: Path | None = None  # the user's file; None when read back from LABELS_NAME


def spec_of(name: str, spec: CustomCorpusParams | dict[str, Any]) -> CustomCorpusParams:
    return typed(CustomCorpusParams, spec, f"data.custom.{name}")


def _located(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _fail(name: str, what: str, problems: list[str]) -> None:
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise CustomCorpusError(f"data.custom.{name}: {what}:\n  " + "\n  ".join(problems[:SHOWN]) + more)


def unknown_labels(spec: CustomCorpusParams, entries: Iterable[Declared]) -> list[str]:
    return [f"{e.origin}: label '{e.emotion}' is not in emotions (which maps {', '.join(sorted(spec.emotions))})"
            for e in entries if e.emotion not in spec.emotions]


def check_labels(name: str, spec: CustomCorpusParams | dict[str, Any], entries: Iterable[Declared]) -> None:
    """Every label is a key of ``emotions``; else one error naming each row and its label."""
    _fail(name, "labels with no mapping (nothing was probed)", unknown_labels(spec_of(name, spec), entries))


def _relative(cell: str) -> str | None:
    """The manifest's path as a safe relative posix path, or None when it leaves its folder."""
    text = cell.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        return None
    normal = os.path.normpath(text).replace("\\", "/")
    if normal == ".." or normal.startswith("../") or normal == ".":
        return None
    return PurePosixPath(normal).as_posix()


def _from_manifest(name: str, spec: CustomCorpusParams, base: Path) -> tuple[list[Declared], list[str]]:
    manifest = _located(base, spec.manifest)
    if not manifest.is_file():
        raise CustomCorpusError(f"data.custom.{name}.manifest: {manifest} does not exist")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [column.strip() for column in reader.fieldnames or []]
            missing = [c for c in MANIFEST_REQUIRED if c not in header]
            unknown = [c for c in header if c not in MANIFEST_REQUIRED + MANIFEST_OPTIONAL]
            if missing or unknown:
                raise CustomCorpusError(
                    f"{manifest}: the header must name {', '.join(MANIFEST_REQUIRED)} (and may name "
                    f"{', '.join(MANIFEST_OPTIONAL)}); " + "; ".join(
                        ([f"missing {', '.join(missing)}"] if missing else [])
                        + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
            reader.fieldnames = header
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise CustomCorpusError(f"{manifest}: not UTF-8 text (byte {exc.start} cannot be decoded: {exc.reason}); "
                                "save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise CustomCorpusError(f"{manifest}: not a CSV file that can be read ({exc}); save it as UTF-8 CSV "
                                "(comma-separated, one row per line)") from None
    entries, problems = [], []
    # Row numbers as a spreadsheet shows them: the header is row 1.
    for number, row in enumerate(rows, start=2):
        origin = f"{manifest.name} row {number}"
        cells = {key: (value or "").strip() for key, value in row.items() if key is not None}
        if not any(cells.values()):
            continue
        relative = _relative(cells["path"]) if cells["path"] else None
        gender = cells.get("gender", "").lower() or None
        language = cells.get("language", "") or spec.language
        wrong = [what for what, bad in (
            ("no path" if not cells["path"] else f"path '{cells['path']}' leaves the manifest's folder",
             relative is None),
            ("no emotion", not cells["emotion"]),
            ("no speaker", not cells["speaker"]),
            (f"gender '{cells.get('gender')}' is not one of {', '.join(GENDERS)} (or empty)",
             gender is not None and gender not in GENDERS),
            (f"language '{language}' is not an ISO 639-1 code", not re.fullmatch(r"[a-z]{2}", language)),
        ) if bad]
        if wrong:
            problems.append(f"{origin}: " + "; ".join(wrong))
            continue
        entries.append(Declared(path=relative, emotion=cells["emotion"], speaker=cells["speaker"], gender=gender,
                                language=language, origin=origin, source=manifest.parent / relative))
    if not entries and not problems:
        raise CustomCorpusError(f"data.custom.{name}.manifest: {manifest} lists no files")
    return entries, problems


def _from_tree(name: str, spec: CustomCorpusParams, base: Path) -> tuple[list[Declared], list[str]]:
    root = _located(base, spec.root)
    if not root.is_dir():
        raise CustomCorpusError(f"data.custom.{name}.root: {root} is not a folder")
    pattern = re.compile(spec.speaker_pattern) if spec.speaker_pattern is not None else None
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and is_audio(p))
    if loose:
        raise CustomCorpusError(f"data.custom.{name}.root: {root} holds audio outside an emotion folder "
                                f"(<root>/<label>/<files>): {', '.join(loose[:SHOWN])}")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_audio(p)):
            relative = path.relative_to(root)
            speaker, problem = "", None
            if pattern is not None:
                found = pattern.search(relative.stem)
                if found is None:
                    problem = (f"file name: '{relative.stem}' does not match data.custom.{name}.speaker_pattern "
                               f"'{spec.speaker_pattern}'")
                else:
                    if "speaker" in pattern.groupindex:
                        speaker = found.group("speaker")
                    else:
                        speaker = found.group(1) if pattern.groups else found.group(0)
                    if not speaker:  # the group matched nothing, or did not take part in the match
                        speaker, problem = "", (f"file name '{relative.stem}': data.custom.{name}.speaker_pattern "
                                                f"'{spec.speaker_pattern}' matched an empty speaker")
            else:
                # One speaker per folder: the folder below the label, else the whole tree.
                speaker = relative.parts[1] if len(relative.parts) > 2 else root.name
            entries.append(Declared(path=relative.as_posix(), emotion=folder.name, speaker=speaker, gender=None,
                                    language=spec.language, origin=f"{root.name}/{relative.as_posix()}",
                                    problem=problem, source=path))
    if not entries:
        raise CustomCorpusError(f"data.custom.{name}.root: {root} holds no audio in <root>/<label>/ folders")
    return entries, []


def declared_files(name: str, spec: CustomCorpusParams | dict[str, Any], base: str | os.PathLike) -> list[Declared]:
    """The files ``data.custom.<name>`` declares, checked whole (rows, labels) before any work.

    ``base`` is the folder a relative ``manifest`` or ``root`` is relative to (the repo root).
    """
    spec = spec_of(name, spec)
    base = Path(base)
    entries, problems = (_from_manifest if spec.manifest is not None else _from_tree)(name, spec, base)
    _fail(name, "rows that cannot be used (nothing was copied or probed)", problems + unknown_labels(spec, entries))
    return entries


def origin_of(name: str, spec: CustomCorpusParams | dict[str, Any], base: str | os.PathLike) -> str:
    spec = spec_of(name, spec)
    return str(_located(Path(base), spec.manifest if spec.manifest is not None else spec.root))


# ---------------------------------------------------------------------------------------------
# The label table in data/raw/<name>/


def labels_text(entries: Iterable[Declared]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow({"path": e.path, "emotion": e.emotion, "speaker": e.speaker, "gender": e.gender or "",
                         "language": e.language, "origin": e.origin, "problem": e.problem or ""})
    return buffer.getvalue()


def write_labels(folder: str | os.PathLike, entries: Iterable[Declared]) -> Path:
    path = Path(folder) / LABELS_NAME
    path.write_text(labels_text(entries), encoding="utf-8")
    return path


def read_labels(folder: str | os.PathLike) -> list[Declared]:
    path = Path(folder) / LABELS_NAME
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    entries = []
    for row in rows:
        relative = _relative(row["path"])
        if relative is None:
            raise CustomCorpusError(f"{path}: path '{row['path']}' leaves the corpus folder")
        entries.append(Declared(path=relative, emotion=row["emotion"], speaker=row["speaker"],
                                gender=row["gender"] or None, language=row["language"], origin=row["origin"],
                                problem=row["problem"] or None))
    return entries


def is_custom_folder(folder: str | os.PathLike) -> bool:
    """Whether a folder of data/raw holds a user corpus (what the download stage made of one)."""
    return (Path(folder) / LABELS_NAME).is_file()


# ---------------------------------------------------------------------------------------------
# Rows of the metadata table


def utterance_stem(relative: str) -> str:
    """A user corpus's clips are named by their path (stems repeat across emotion folders)."""
    return PurePosixPath(relative).with_suffix("").as_posix().replace("/", "_")


def label_rows(name: str, spec: CustomCorpusParams | dict[str, Any], folder: str | os.PathLike,
               root: str | os.PathLike) -> list[dict[str, Any]]:
    """One metadata row per declared file (``_absolute`` added for probing); labels are mapped
    here, and checked whole before any row is made."""
    spec = spec_of(name, spec)
    folder = Path(folder)
    if not is_custom_folder(folder):
        raise FileNotFoundError(f"{folder}: corpus '{name}' has no {LABELS_NAME}; run the download stage "
                                "first (dvc repro download)")
    entries = read_labels(folder)
    check_labels(name, spec, entries)
    rows, seen, paths = [], {}, {}
    for e in entries:
        absolute = folder / e.path
        row: dict[str, Any] = {column: None for column in COLUMNS}
        emotion = spec.emotions[e.emotion]
        row.update(utterance_id=f"{name}_{utterance_stem(e.path)}", corpus=name,
                   path=os.path.relpath(absolute, root), speaker=f"{name}_{e.speaker}" if e.speaker else None,
                   gender=e.gender, emotion=emotion, emotion_raw=e.emotion, intensity="unspecified",
                   statement="", language=e.language, status="ok")
        if e.problem:
            row.update(status="quarantined", problem=e.problem)
        elif emotion is None:
            row.update(status="quarantined",
                       problem=f"excluded: data.custom.{name}.emotions maps label '{e.emotion}' to null")
        elif not absolute.is_file():
            row.update(status="quarantined", problem=f"missing: {e.path} ({e.origin}) does not exist")
        # Listed twice; or two files whose paths give one id (differing only by extension, or
        # by where a "/" or a "_" stands: utterance_stem joins the folders with "_").
        same = paths.get(row["utterance_id"], e.path) == e.path
        keep_ids_unique(row, seen, rows, e.origin, "the same file as" if same else "the same clip id as")
        paths.setdefault(row["utterance_id"], e.path)
        row["_absolute"] = str(absolute)
        rows.append(row)
    return rows
