"""Fetching files over HTTP, checking them, and unpacking archives safely. Nothing here knows
about corpora: ``ser.data.download`` builds on it.

One retry policy, ``http_session(retries=, backoff_s=)``: urllib3 retries refused connections,
timeouts and the statuses of ``RETRY_STATUSES``, waits ``backoff_s`` and then doubles (or what a
``Retry-After`` header asks), and logs each retry. A body cut off mid-way is beyond urllib3's
reach once the response has started, so ``fetch_file`` resumes it with an HTTP Range request
from the last byte on disk, counting resumes against the same policy.

``fetch_file`` streams into ``<name>.part`` with a progress bar, verifies the checksum and then
renames the file into place; a file whose checksum does not match is kept aside as
``<name>.corrupt``. ``safe_extract`` refuses a whole archive if any member could escape.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

# Statuses that may change by asking again later; any other error status fails at once.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHUNK_BYTES = 1 << 20
SHOWN_MEMBERS = 20

T = TypeVar("T")


class DownloadError(RuntimeError):
    """A file could not be obtained; the message says which, from where, and why."""


class ChecksumError(DownloadError):
    pass


class UnsafeArchiveError(DownloadError):
    pass


# ---------------------------------------------------------------------------------------------
# Checksums


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def quarantine_corrupt(path: Path) -> Path:
    """Move ``path`` aside to ``<name>.corrupt`` (numbered if that exists) and return it."""
    target = path.with_name(path.name.removesuffix(".part") + ".corrupt")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name.removesuffix('.part')}.{number}.corrupt")
    os.replace(path, target)
    return target


def verify_checksum(path: Path, checksum: tuple[str, str] | None, origin: str) -> None:
    """Raise :class:`ChecksumError` (keeping the file as ``.corrupt``) unless ``path`` has the
    ``(algorithm, hex digest)`` checksum; ``None`` accepts any content."""
    if checksum is None:
        return
    algorithm, expected = checksum
    actual = file_digest(path, algorithm)
    if actual != expected:
        corrupt = quarantine_corrupt(path)
        raise ChecksumError(
            f"{origin}: {algorithm} is {actual}, expected {expected}; the file is kept aside as {corrupt}"
        )


# ---------------------------------------------------------------------------------------------
# The retry policy


class _Failed(Exception):
    """One attempt failed; ``final`` when urllib3 has already spent the retries on it."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


class _Retry(Retry):
    """urllib3's Retry, waiting ``backoff_factor`` before the first retry (urllib3 retries the
    first time at once) and logging each retry, so a slow download explains itself."""

    def get_backoff_time(self) -> float:
        failures = len(self.history)
        return self.backoff_factor * 2 ** (failures - 1) if failures else 0.0

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if response is not None and response.status:
            reason = f"HTTP {response.status} {response.reason}"
        else:
            reason = str(error) if isinstance(error, _Failed) else f"{type(error).__name__}: {error}"
        where = f"{_pool.scheme}://{_pool.host}:{_pool.port}{url}" if _pool is not None else url
        log.warning("%s: attempt %d failed (%s); retrying in %.3g s",
                    where, len(retry.history), reason, retry._planned_delay(response))
        return retry

    def _planned_delay(self, response) -> float:
        # What sleep() will wait: a positive Retry-After wins over the backoff.
        if self.respect_retry_after_header and response is not None:
            retry_after = self.get_retry_after(response)
            if retry_after:
                return retry_after
        return self.get_backoff_time()


def http_session(*, retries: int, backoff_s: float) -> requests.Session:
    """A session that retries each request up to ``retries`` times, waiting ``backoff_s``,
    then twice as long each time (or what ``Retry-After`` asks)."""
    policy = _Retry(total=retries, backoff_factor=backoff_s, status_forcelist=RETRY_STATUSES,
                    respect_retry_after_header=True,
                    # The last response comes back so the error can name its status.
                    raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _policy(session: requests.Session, url: str) -> Retry:
    try:
        return session.get_adapter(url).max_retries
    except requests.exceptions.InvalidSchema:
        return Retry(0)  # no adapter for the scheme: the request fails once and says why


def _attempts(count: int) -> str:
    return f"{count} attempt" + ("" if count == 1 else "s")


class _Tally:
    """HTTP requests made so far, urllib3's own retries included (for the error message)."""

    def __init__(self) -> None:
        self.requests = 0


def _with_resumes(url: str, session: requests.Session, what: str, attempt: Callable[[_Tally], T]) -> T:
    """Run ``attempt`` until it succeeds; a cut-off body is tried again under the session's
    retry policy (the same count and backoff as urllib3 applies to each request)."""
    budget = _policy(session, url)
    tally = _Tally()
    while True:
        try:
            return attempt(tally)
        except _Failed as failed:
            if not failed.final:
                try:
                    budget = budget.increment("GET", url, error=failed)
                except MaxRetryError:
                    pass
                else:
                    budget.sleep()
                    continue
            raise DownloadError(f"{url}: {what} failed after {_attempts(tally.requests)}; "
                                f"last error: {failed}") from None


def _get(session: requests.Session, url: str, timeout_s: float, tally: _Tally, **options) -> requests.Response:
    try:
        response = session.get(url, timeout=timeout_s, **options)
    except requests.RequestException as exc:
        # requests wraps urllib3's MaxRetryError once the policy is spent.
        spent = any(isinstance(arg, MaxRetryError) for arg in exc.args)
        tally.requests += _policy(session, url).total + 1 if spent else 1
        raise _Failed(f"{type(exc).__name__}: {exc}", final=spent) from None
    retried = getattr(response.raw, "retries", None)
    tally.requests += 1 + (len(retried.history) if retried is not None else 0)
    return response


def _refuse_error_status(url: str, response: requests.Response) -> None:
    if response.status_code in RETRY_STATUSES:  # still failing after urllib3's retries
        raise _Failed(f"HTTP {response.status_code} {response.reason}", final=True)
    if response.status_code >= 400:
        raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")


def fetch_response(url: str, *, session: requests.Session, timeout_s: float, what: str) -> requests.Response:
    """GET a small resource whole (a listing, say). ``what`` names it in the error:
    ``<url>: <what> failed after N attempts; last error: ...``."""

    def attempt(tally: _Tally) -> requests.Response:
        response = _get(session, url, timeout_s, tally)
        _refuse_error_status(url, response)
        return response

    return _with_resumes(url, session, what, attempt)


# ---------------------------------------------------------------------------------------------
# Streamed, resumable downloads


def fetch_file(url: str, dest: str | os.PathLike, *, session: requests.Session, timeout_s: float,
               checksum: tuple[str, str] | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (resumable, retried, checksum-verified, atomic).

    ``checksum`` is ``(algorithm, hex digest)``. A partial download lives at ``<dest>.part`` and
    is continued with a Range request, on the next attempt or the next run. Raises
    :class:`DownloadError` (or :class:`ChecksumError`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            verify_checksum(dest, checksum, str(dest))
            return dest
        except ChecksumError:
            log.warning("%s exists but fails its checksum: downloading it again", dest)
    partial = dest.with_name(dest.name + ".part")
    _with_resumes(url, session, "download",
                  lambda tally: _stream_once(session, url, partial, timeout_s, progress, tally))
    verify_checksum(partial, checksum, url)
    os.replace(partial, dest)
    return dest


def _stream_once(session: requests.Session, url: str, partial: Path, timeout_s: float, progress: bool,
                 tally: _Tally) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with _get(session, url, timeout_s, tally, headers=headers, stream=True) as response:
        if response.status_code == 416 and offset:
            # The part file already holds every byte (or more than the server has).
            size = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
            if size and int(size.group(1)) == offset:
                return
            partial.unlink()
            raise _Failed(f"HTTP 416 for a {offset}-byte partial file: starting over")
        _refuse_error_status(url, response)
        offset = _resume_offset(response, partial, offset)
        _write_body(response, partial, offset, progress)


def _resume_offset(response: requests.Response, partial: Path, offset: int) -> int:
    """Where the body starts in the file: ``offset`` for a 206 that resumes exactly there."""
    if response.status_code != 206:
        return 0  # the server ignored the Range header, so the whole file comes again
    start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if not start or int(start.group(1)) != offset:
        partial.unlink(missing_ok=True)
        raise _Failed(f"server resumed at the wrong byte ({response.headers.get('Content-Range')})")
    return offset


def _write_body(response: requests.Response, partial: Path, offset: int, progress: bool) -> None:
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    with open(partial, "ab" if offset else "wb") as f, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=partial.name.removesuffix(".part"), disable=not progress, leave=False,
    ) as bar:
        # read1 hands over whatever has arrived, so after a cut every received byte is on
        # disk and the next Range request resumes exactly there.
        while chunk := _read_some(response):
            f.write(chunk)
            bar.update(len(chunk))
    received = partial.stat().st_size
    if total is not None and received != total:
        raise _Failed(f"connection closed after {received} of {total} bytes")


def _read_some(response: requests.Response) -> bytes:
    try:
        return response.raw.read1(CHUNK_BYTES)
    except Exception as exc:  # urllib3 signals a cut connection with several exception types
        raise _Failed(f"connection broken: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Archives


def unsafe_reason(name: str, *, is_link: bool = False, is_special: bool = False) -> str | None:
    """Why writing ``name`` (an archive member or a listed path) below a folder is unsafe, or None."""
    posix = name.replace("\\", "/")
    if is_link:
        return "is a link"
    if is_special:
        return "is a device or fifo"
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "is an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "climbs out with '..'"
    return None


def unsafe_members(archive: str | os.PathLike) -> list[str]:
    """Members of a zip or tar archive that could write outside the extraction folder."""
    archive = Path(archive)
    found = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                problem = unsafe_reason(info.filename, is_link=(mode & 0o170000) == 0o120000)
                if problem:
                    found.append(f"{info.filename} ({problem})")
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                problem = unsafe_reason(member.name, is_link=member.issym() or member.islnk(),
                                        is_special=member.isdev() or member.isfifo())
                if problem:
                    found.append(f"{member.name} ({problem})")
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive")
    return found


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a zip/tar archive into ``target``; refuse it whole if any member is unsafe."""
    archive, target = Path(archive), Path(target)
    refused = unsafe_members(archive)
    if refused:
        raise UnsafeArchiveError(
            f"{archive}: refused to extract: {len(refused)} member(s) would escape {target}: "
            + "; ".join(refused[:SHOWN_MEMBERS])
        )
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(target, filter="data")
    return target


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))
