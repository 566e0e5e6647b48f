"""Obtain corpora: from a local mirror (``SER_DATA_MIRROR``) or from their official source.

Every corpus lands in ``<out>/<corpus>/`` only after it has been checked: expected clip count,
file names (the corpus's parser), and that each audio file is readable. What was obtained is
recorded in ``<out>/<corpus>/manifest.csv`` (relative path, size, sha256, problem), and a corpus
whose manifest still verifies is kept as it is instead of being fetched again.

Fetching itself (retries, resumable downloads, checksums, safe extraction) is ``ser.data.fetch``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import requests
import soundfile as sf
from tqdm.auto import tqdm

from ser.data import custom as user_corpora
from ser.data.corpora import CORPORA, get_corpus
from ser.data.corpora.base import Corpus, FileNameError, Source, is_audio
from ser.data.fetch import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    fetch_file,
    fetch_response,
    file_digest,
    http_session,
    is_archive,
    safe_extract,
    unsafe_reason,
)
from ser.params import CustomCorpusParams, DownloadParams, typed

log = logging.getLogger(__name__)

MIRROR_ENV = "SER_DATA_MIRROR"
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "size", "sha256", "problem")
DOWNLOADS_DIR = ".downloads"
SUMS_NAME = "SHA256SUMS"
SHOWN_NAMES = 20


class IncompleteCorpusError(DownloadError):
    pass


@dataclass(frozen=True)
class DownloadSettings:
    """The ``data.download`` section of params.yaml (its schema is ``ser.params.DownloadParams``)."""

    retries: int
    backoff_s: float
    timeout_s: float
    # False accepts a corpus with fewer clips than its official count (tiny fixture mirrors).
    strict: bool

    @classmethod
    def from_params(cls, params: DownloadParams | dict[str, Any]) -> DownloadSettings:
        params = typed(DownloadParams, params)
        return cls(retries=params.retries, backoff_s=params.backoff_s, timeout_s=params.timeout_s,
                   strict=params.strict)


# ---------------------------------------------------------------------------------------------
# Official checksums and file listings


def expected_checksum(source: Source) -> tuple[str, str] | None:
    if source.sha256:
        return "sha256", source.sha256.lower()
    if source.md5:
        return "md5", source.md5.lower()
    return None


def list_remote_files(source: Source, *, session: requests.Session, timeout_s: float) -> list[str]:
    """The file paths a ``files`` source lists (a GitHub tree JSON or one path per line)."""
    response = fetch_response(source.listing_url, session=session, timeout_s=timeout_s, what="listing")
    if "json" in response.headers.get("Content-Type", ""):
        paths = [entry["path"] for entry in response.json().get("tree", []) if entry.get("type", "blob") == "blob"]
    else:
        paths = [line.strip() for line in response.text.splitlines() if line.strip()]
    pattern = re.compile(source.listing_pattern or ".*")
    return sorted(p for p in paths if pattern.search(p))


# ---------------------------------------------------------------------------------------------
# Verification and manifest


@dataclass
class Verification:
    corpus: str
    folder: Path
    clips: int = 0
    expected: int = 0
    missing: list[str] = field(default_factory=list)
    shortfall: int = 0
    unparseable: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    duplicate_names: list[str] = field(default_factory=list)
    known_absent: list[str] = field(default_factory=list)
    # A user corpus's listed files that do not exist: quarantined, never fatal.
    listed_absent: list[str] = field(default_factory=list)
    problems_by_path: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.shortfall <= 0 and not self.missing

    def describe_missing(self) -> str:
        if self.missing:
            shown = ", ".join(self.missing[:SHOWN_NAMES])
            more = f" and {len(self.missing) - SHOWN_NAMES} more" if len(self.missing) > SHOWN_NAMES else ""
            return (f"{self.corpus}: {max(self.shortfall, len(self.missing))} of {self.expected} clips "
                    f"are missing: {shown}{more}")
        return (f"{self.corpus}: {self.shortfall} of {self.expected} clips are missing "
                f"({self.clips} found; the names present cannot tell which are absent)")

    def warnings(self) -> list[str]:
        notes = []
        if self.unparseable:
            notes.append(f"{self.corpus}: {len(self.unparseable)} audio file(s) do not follow the corpus "
                         f"naming and will be quarantined: " + "; ".join(self.unparseable[:SHOWN_NAMES]))
        if self.unreadable:
            notes.append(f"{self.corpus}: {len(self.unreadable)} audio file(s) are unreadable and will be "
                         f"quarantined: " + "; ".join(self.unreadable[:SHOWN_NAMES]))
        if self.listed_absent:
            notes.append(f"{self.corpus}: {len(self.listed_absent)} listed file(s) do not exist and will be "
                         f"quarantined as missing: " + "; ".join(self.listed_absent[:SHOWN_NAMES]))
        if self.duplicate_names:
            notes.append(f"{self.corpus}: clip names occurring twice: " + ", ".join(self.duplicate_names[:SHOWN_NAMES]))
        if self.clips > self.expected:
            notes.append(f"{self.corpus}: {self.clips} clips, more than the {self.expected} expected")
        return notes


def corpus_files(folder: Path) -> list[Path]:
    """Every file of a corpus folder (relative, sorted), without the manifest."""
    return sorted(
        p.relative_to(folder) for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )


def verify_corpus(corpus: ModuleType | str, folder: str | os.PathLike) -> Verification:
    """Count, name-check and header-check the audio files of a corpus folder."""
    module = get_corpus(corpus) if isinstance(corpus, str) else corpus
    description = module.CORPUS
    folder = Path(folder)
    result = Verification(description.name, folder, expected=description.expected_clips)
    names: dict[str, str] = {}
    for relative in (p for p in corpus_files(folder) if is_audio(p)):
        key = relative.as_posix()
        try:
            clip = description.parse(relative)
        except FileNameError as exc:
            result.unparseable.append(str(exc))
            result.problems_by_path[key] = f"file name: {exc}"
            continue
        if clip.name in names:
            result.duplicate_names.append(f"{clip.name} ({names[clip.name]}, {key})")
        names[clip.name] = key
        try:
            sf.info(str(folder / relative))
        except Exception as exc:  # libsndfile raises several types for unreadable headers
            message = f"{key}: unreadable audio ({type(exc).__name__}: {exc})"
            result.unreadable.append(message)
            result.problems_by_path[key] = message
    result.clips = len(names)
    if description.expected_names is not None:
        missing = description.expected_names(names) - set(names)
        result.known_absent = sorted(missing & set(description.known_absent))
        result.missing = sorted(missing - set(description.known_absent))
    result.shortfall = description.expected_clips - result.clips - len(result.known_absent)
    return result


def write_manifest(folder: str | os.PathLike, problems: dict[str, str] | None = None) -> Path:
    """``manifest.csv``: relative path, size, sha256 (and a problem, if any) of every file."""
    folder = Path(folder)
    problems = problems or {}
    rows = []
    for relative in tqdm(corpus_files(folder), desc=f"manifest {folder.name}", unit="file", leave=False):
        path = folder / relative
        key = relative.as_posix()
        rows.append({"path": key, "size": path.stat().st_size, "sha256": file_digest(path),
                     "problem": problems.get(key, "")})
    manifest = folder / MANIFEST_NAME
    partial = manifest.with_name(MANIFEST_NAME + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> list[dict[str, str]]:
    with open(Path(folder) / MANIFEST_NAME, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def manifest_mismatches(folder: str | os.PathLike) -> list[str]:
    """Why the files on disk differ from the manifest (empty: they match byte for byte)."""
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).is_file():
        return [f"{folder / MANIFEST_NAME} does not exist"]
    listed = {row["path"]: row for row in read_manifest(folder)}
    on_disk = {p.as_posix() for p in corpus_files(folder)}
    mismatches = [f"{p}: not in the manifest" for p in sorted(on_disk - set(listed))]
    mismatches += [f"{p}: listed but missing" for p in sorted(set(listed) - on_disk)]
    for key in sorted(on_disk & set(listed)):
        path = folder / key
        if path.stat().st_size != int(listed[key]["size"]):
            mismatches.append(f"{key}: size changed")
        elif file_digest(path) != listed[key]["sha256"]:
            mismatches.append(f"{key}: content changed")
    return mismatches


# ---------------------------------------------------------------------------------------------
# Obtaining one corpus


def mirror_root(mirror: str | os.PathLike | None = None) -> Path | None:
    """The mirror folder: ``mirror`` if given, else ``$SER_DATA_MIRROR`` (None when unset)."""
    value = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


@dataclass
class CorpusReport:
    corpus: str
    action: str  # kept | mirror | downloaded | copied (a user corpus)
    origin: str
    verification: Verification


def _copy_audio_tree(source: Path, target: Path) -> int:
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and is_audio(p)]
    for path in tqdm(files, desc=f"copy {source.name}", unit="file", leave=False):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)  # a copy, so the mirror stays read-only for the pipeline
    return len(files)


def _fill_from_mirror(description: Corpus, folder: Path, staging: Path) -> str:
    archives = [folder / description.source.archive_name] if description.source.archive_name else []
    archives = [a for a in archives if a.is_file()]
    has_audio = any(p.is_file() and is_audio(p) for p in folder.rglob("*"))
    if not archives and not has_audio:
        archives = sorted(p for p in folder.iterdir() if p.is_file() and is_archive(p))
    if archives:
        for archive in archives:
            if archive.name == description.source.archive_name:
                checksum = expected_checksum(description.source)
                if checksum and file_digest(archive, checksum[0]) != checksum[1]:
                    raise ChecksumError(f"{archive}: {checksum[0]} does not match the official "
                                        f"{checksum[1]}; the mirror copy is damaged or not the release")
            safe_extract(archive, staging)
        return f"{folder} ({', '.join(a.name for a in archives)})"
    if not has_audio:
        raise DownloadError(f"{description.name}: the mirror folder {folder} holds neither audio files "
                            f"nor an archive")
    _copy_audio_tree(folder, staging)
    _check_published_sums(folder, staging)
    return str(folder)


def _check_published_sums(folder: Path, copied: Path) -> None:
    """If the mirror publishes ``SHA256SUMS`` (``<hex>  <path>`` lines), the copy must match it."""
    sums_file = folder / SUMS_NAME
    if not sums_file.is_file():
        return
    wrong = []
    for line in sums_file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, _, relative = line.strip().partition(" ")
        relative = relative.strip().lstrip("*").removeprefix("./")
        path = copied / relative
        if path.is_file() and file_digest(path) != digest.lower():
            wrong.append(relative)
    if wrong:
        raise ChecksumError(f"{folder}: {len(wrong)} file(s) differ from its {SUMS_NAME}: "
                            + ", ".join(wrong[:SHOWN_NAMES]))


def _fill_from_source(description: Corpus, source: Source, staging: Path, downloads: Path,
                      settings: DownloadSettings) -> str:
    if source.kind not in ("archive", "files"):
        raise DownloadError(f"{description.name}: {source.note or 'no automatic download exists'}")
    with http_session(retries=settings.retries, backoff_s=settings.backoff_s) as session:
        if source.kind == "archive":
            archive = fetch_file(source.url, downloads / source.archive_name, session=session,
                                 timeout_s=settings.timeout_s, checksum=expected_checksum(source))
            safe_extract(archive, staging)
            archive.unlink()  # the verified, extracted tree is what is kept
            return source.url
        listed = list_remote_files(source, session=session, timeout_s=settings.timeout_s)
        for relative in tqdm(listed, desc=description.name, unit="file"):
            if unsafe_reason(relative):
                raise UnsafeArchiveError(f"{source.listing_url}: refused the listed path {relative}")
            fetch_file(source.url + relative, staging / relative, session=session,
                       timeout_s=settings.timeout_s, progress=False)
    return source.url


def _offline_help(description: Corpus, mirror: Path | None) -> str:
    where = (f"{MIRROR_ENV} is unset" if mirror is None
             else f"{MIRROR_ENV}={mirror} has no {description.name}/ folder")
    what = (f"the official archive {description.source.archive_name} or its extracted files"
            if description.source.archive_name else "its audio files, in any layout")
    return (f"No local mirror provides it ({where}). To work offline, put {what} in "
            f"<mirror>/{description.name}/ and set {MIRROR_ENV}=<mirror>.")


def _fill_staging(description: Corpus, staging: Path, downloads: Path, mirror: Path | None,
                  source: Source, settings: DownloadSettings) -> tuple[str, str]:
    """Fill ``staging`` from ``<mirror>/<corpus>/`` when it exists, else from ``source``;
    return where it came from and the action (``mirror`` or ``downloaded``)."""
    name = description.name
    if mirror is not None and (mirror / name).is_dir():
        return _fill_from_mirror(description, mirror / name, staging), "mirror"
    if source.kind == "mirror_only":
        raise DownloadError(f"{name}: {source.note} ({_offline_help(description, mirror)})")
    try:
        return _fill_from_source(description, source, staging, downloads, settings), "downloaded"
    except (ChecksumError, UnsafeArchiveError) as exc:
        raise type(exc)(f"{name}: {exc}") from None
    except DownloadError as exc:
        raise DownloadError(f"{name}: could not download from {source.url or source.listing_url}: "
                            f"{exc}. {_offline_help(description, mirror)}") from None


def obtain_corpus(name: str, out: str | os.PathLike, *, settings: DownloadSettings,
                  mirror: str | os.PathLike | None = None, source: Source | None = None,
                  ) -> CorpusReport:
    """Make ``<out>/<name>/`` hold the verified corpus and its manifest.

    ``source`` overrides the official :class:`Source` (e.g. a local test server); the mirror,
    when it holds ``<name>/``, is preferred to any download.
    """
    module = get_corpus(name)
    description = module.CORPUS
    out = Path(out)
    target = out / name
    if (target / MANIFEST_NAME).is_file() and not manifest_mismatches(target):
        verification = verify_corpus(module, target)
        if verification.complete or not settings.strict:
            return CorpusReport(name, "kept", str(target), verification)
    staging = out / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        origin, action = _fill_staging(description, staging, out / DOWNLOADS_DIR, mirror_root(mirror),
                                       source or description.source, settings)
        verification = verify_corpus(module, staging)
        if not verification.complete:
            if settings.strict:
                raise IncompleteCorpusError(verification.describe_missing() + f" (from {origin})")
            log.warning("%s (accepted: data.download.strict is false)", verification.describe_missing())
        write_manifest(staging, verification.problems_by_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        downloads = out / DOWNLOADS_DIR  # kept only while it holds a .part or .corrupt file
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    _replace_folder(staging, target)
    verification.folder = target
    return CorpusReport(name, action, origin, verification)


def verify_custom(name: str, folder: str | os.PathLike,
                  entries: Sequence[user_corpora.Declared]) -> Verification:
    """A user corpus's copy: listed files that are absent, that break the speaker pattern, or
    whose header cannot be read, each with the reason it will be quarantined."""
    folder = Path(folder)
    result = Verification(name, folder, expected=len(entries))
    present = set()
    for entry in entries:
        path = folder / entry.path
        if entry.problem:
            result.unparseable.append(f"{entry.origin}: {entry.problem}")
            result.problems_by_path.setdefault(entry.path, entry.problem)
        if not path.is_file():
            result.listed_absent.append(f"{entry.origin}: {entry.path}")
            continue
        if entry.path in present:
            continue
        present.add(entry.path)
        try:
            sf.info(str(path))
        except Exception as exc:  # libsndfile raises several types for unreadable headers
            message = f"{entry.path}: unreadable audio ({type(exc).__name__}: {exc})"
            result.unreadable.append(message)
            result.problems_by_path[entry.path] = message
    result.clips = len(present)
    return result


def _custom_copy_is_current(target: Path, entries: Sequence[user_corpora.Declared]) -> bool:
    """``target`` holds exactly these labels and byte-equal copies of the files present now."""
    if not (target / MANIFEST_NAME).is_file() or not user_corpora.is_custom_folder(target):
        return False
    if (target / user_corpora.LABELS_NAME).read_text(encoding="utf-8") != user_corpora.labels_text(entries):
        return False
    if manifest_mismatches(target):
        return False
    listed = {row["path"]: row for row in read_manifest(target) if row["path"] != user_corpora.LABELS_NAME}
    present = {e.path: e.source for e in entries if e.source is not None and e.source.is_file()}
    return set(listed) == set(present) and all(
        source.stat().st_size == int(listed[key]["size"]) and file_digest(source) == listed[key]["sha256"]
        for key, source in present.items())


def obtain_custom(name: str, entries: Sequence[user_corpora.Declared], out: str | os.PathLike, *,
                  origin: str) -> CorpusReport:
    """Copy a user corpus's declared files (``ser.data.custom.declared_files``) into
    ``<out>/<name>/`` with its label table and manifest; files that do not exist are listed
    there, to be quarantined as missing."""
    out = Path(out)
    target = out / name
    if _custom_copy_is_current(target, entries):
        return CorpusReport(name, "kept", str(target), verify_custom(name, target, entries))
    staging = out / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        present = {e.path: e.source for e in entries if e.source is not None and e.source.is_file()}
        for relative, source in tqdm(sorted(present.items()), desc=f"copy {name}", unit="file", leave=False):
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)  # a copy: the user's folder stays theirs
        user_corpora.write_labels(staging, entries)
        verification = verify_custom(name, staging, entries)
        write_manifest(staging, verification.problems_by_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace_folder(staging, target)
    verification.folder = target
    return CorpusReport(name, "copied", origin, verification)


def _replace_folder(new: Path, target: Path) -> None:
    old = target.with_name(f".old-{target.name}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def remove_unselected(out: str | os.PathLike, selected: Iterable[str]) -> list[str]:
    """Delete corpora of ``out`` that are no longer selected, and leftovers of broken runs."""
    out = Path(out)
    removed = []
    if not out.is_dir():
        return removed
    for entry in sorted(out.iterdir()):
        leftover = entry.name.startswith((".staging-", ".old-"))
        ours = entry.name in CORPORA or user_corpora.is_custom_folder(entry)
        if entry.is_dir() and (leftover or (ours and entry.name not in selected)):
            shutil.rmtree(entry)
            removed.append(entry.name)
    return removed


def obtain(corpora: Sequence[str], out: str | os.PathLike, *, settings: DownloadSettings,
           mirror: str | os.PathLike | None = None, sources: dict[str, Source] | None = None,
           custom: Mapping[str, CustomCorpusParams | dict[str, Any]] | None = None,
           base: str | os.PathLike = ".") -> list[CorpusReport]:
    """Obtain every selected corpus into ``out``; one error at the end lists every failure.

    ``custom`` is ``data.custom`` (user corpora by name, their relative paths taken from
    ``base``, the repo root); each one selected is read and checked before anything is fetched.
    """
    custom = {name: user_corpora.spec_of(name, spec) for name, spec in (custom or {}).items()}
    for name in corpora:
        if name not in custom:
            get_corpus(name)
    if len(set(corpora)) != len(corpora):
        raise ValueError(f"data.corpora lists a corpus twice: {list(corpora)}")
    declared = {name: user_corpora.declared_files(name, custom[name], base) for name in corpora if name in custom}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_unselected(out, corpora)
    if removed:
        log.info("removed corpora no longer selected: %s", ", ".join(removed))
    reports, failures = [], []
    for name in corpora:
        try:
            if name in declared:
                reports.append(obtain_custom(name, declared[name], out,
                                             origin=user_corpora.origin_of(name, custom[name], base)))
                continue
            reports.append(obtain_corpus(name, out, settings=settings, mirror=mirror,
                                         source=(sources or {}).get(name)))
        except DownloadError as exc:
            failures.append(str(exc))
    if failures:
        raise DownloadError("\n".join(failures))
    return reports


def with_url(source: Source, url: str, **changes: Any) -> Source:
    """A copy of ``source`` fetched from elsewhere (tests, internal mirrors); the official
    checksum stays unless ``changes`` replace it."""
    return replace(source, url=url, **changes)
