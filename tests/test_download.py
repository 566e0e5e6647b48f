"""Fetching and obtaining corpora: a real HTTP server on 127.0.0.1 (Range, cut connections, 503,
Retry-After, 404), checksums, safe extraction, manifests, mirrors, and the errors a user sees."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ser.data.corpora import cremad, ravdess, savee
from ser.data.download import (
    MANIFEST_NAME,
    ChecksumError,
    DownloadError,
    DownloadSettings,
    IncompleteCorpusError,
    UnsafeArchiveError,
    manifest_mismatches,
    obtain,
    obtain_corpus,
    verify_corpus,
    with_url,
)
from ser.data.fetch import fetch_file, http_session, safe_extract
from tests.corpus_fixtures import make_archive, make_ravdess, write_clip

FAST = DownloadSettings(retries=2, backoff_s=0.0, timeout_s=10, strict=False)


def fetch(url: str, dest: Path, *, retries: int, backoff_s: float = 0.0, **options) -> Path:
    with http_session(retries=retries, backoff_s=backoff_s) as session:
        return fetch_file(url, dest, session=session, timeout_s=10, **options)


class CorpusServer:
    """Serves ``files`` (path -> bytes) with Range support; ``cut[path] = [n, m]`` makes the next
    requests for ``path`` send n (then m) body bytes and drop the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, list[int]] = {}
        self.unavailable: dict[str, int] = {}  # path -> how many requests get a 503 first
        self.retry_after: str | None = None  # the Retry-After header of those 503s
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if server.unavailable.get(self.path):
                    server.unavailable[self.path] -= 1
                    self.send_response(503, "Service Unavailable")
                    if server.retry_after is not None:
                        self.send_header("Retry-After", server.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                body = data[start:]
                if server.cut.get(self.path):
                    self.wfile.write(body[: server.cut[self.path].pop(0)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CorpusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    with CorpusServer() as running:  # the teardown stops it, whether the test passed or not
        yield running


@pytest.fixture(scope="module")
def ravdess_archive(tmp_path_factory) -> tuple[Path, str]:
    """A zip laid out like Audio_Speech_Actors_01-24.zip (Actor_XX/ at the top), and its md5."""
    root = tmp_path_factory.mktemp("ravdess_archive")
    make_ravdess(root / "tree", actors=(1, 2), emotions=("01", "05"), seconds=0.3)
    archive = make_archive(root / "tree", root / "Audio_Speech_Actors_01-24.zip")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_fetch_streams_a_whole_file_and_renames_it_into_place(server, tmp_path):
    payload = os.urandom(300_000)
    server.files["/a.bin"] = payload
    dest = fetch(f"{server.url}/a.bin", tmp_path / "a.bin", checksum=("sha256", hashlib.sha256(payload).hexdigest()),
                 retries=0, progress=False)
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]  # no .part left behind


def test_fetch_resumes_with_range_after_a_connection_cut_mid_file(server, tmp_path):
    payload = os.urandom(2_500_000)
    server.files["/big.zip"] = payload
    server.cut["/big.zip"] = [1_000_003]
    digest = hashlib.sha256(payload).hexdigest()
    dest = fetch(f"{server.url}/big.zip", tmp_path / "big.zip", checksum=("sha256", digest),
                 retries=2, backoff_s=0.0, progress=False)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert server.requests == [("/big.zip", None), ("/big.zip", "bytes=1000003-")]


def test_an_interrupted_download_resumes_in_the_next_run(server, tmp_path):
    payload = os.urandom(500_000)
    server.files["/c.zip"] = payload
    server.cut["/c.zip"] = [123_457]
    with pytest.raises(DownloadError, match=r"c\.zip: download failed after 1 attempt; .*123457 bytes read"):
        fetch(f"{server.url}/c.zip", tmp_path / "c.zip", retries=0, progress=False)
    assert (tmp_path / "c.zip.part").stat().st_size == 123_457
    fetch(f"{server.url}/c.zip", tmp_path / "c.zip", retries=0, progress=False)
    assert (tmp_path / "c.zip").read_bytes() == payload
    assert server.requests[-1] == ("/c.zip", "bytes=123457-")


def test_a_checksum_mismatch_keeps_the_file_aside_as_corrupt(server, tmp_path):
    server.files["/d.zip"] = b"not what was published" * 100
    with pytest.raises(ChecksumError, match=r"d\.zip: md5 is [0-9a-f]{32}, expected 0{32}.*\.corrupt"):
        fetch(f"{server.url}/d.zip", tmp_path / "d.zip", checksum=("md5", "0" * 32), retries=0, progress=False)
    assert not (tmp_path / "d.zip").exists()
    assert (tmp_path / "d.zip.corrupt").read_bytes() == server.files["/d.zip"]


def test_a_temporary_server_error_is_retried_with_backoff(server, tmp_path, caplog):
    server.files["/busy.zip"] = b"payload" * 1000
    server.unavailable["/busy.zip"] = 2
    dest = fetch(f"{server.url}/busy.zip", tmp_path / "busy.zip", retries=2, backoff_s=0.01, progress=False)
    assert dest.read_bytes() == server.files["/busy.zip"]
    assert len(server.requests) == 3
    delays = re.findall(r"retrying in ([0-9.]+) s", caplog.text)
    assert [float(d) for d in delays] == [0.01, 0.02]  # exponential backoff
    server.unavailable["/busy.zip"] = 5
    with pytest.raises(DownloadError, match="after 2 attempts; last error: HTTP 503"):
        fetch(f"{server.url}/busy.zip", tmp_path / "again.zip", retries=1, backoff_s=0.0, progress=False)


def test_a_404_fails_at_once_without_retrying(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing\.zip: HTTP 404"):
        fetch(f"{server.url}/missing.zip", tmp_path / "m.zip", retries=3, backoff_s=5.0, progress=False)
    assert len(server.requests) == 1


def test_the_session_retries_a_503_inside_one_request_then_succeeds(server):
    server.files["/listing.txt"] = b"a.wav\n"
    server.unavailable["/listing.txt"] = 1
    with http_session(retries=1, backoff_s=0.0) as session:
        response = session.get(f"{server.url}/listing.txt", timeout=10)
    assert (response.status_code, response.content) == (200, b"a.wav\n")
    assert len(server.requests) == 2 and len(response.raw.retries.history) == 1


def test_retry_after_is_respected_over_the_backoff(server, tmp_path, caplog):
    server.files["/slow.zip"] = b"x" * 1000
    server.unavailable["/slow.zip"] = 1
    server.retry_after = "1"
    started = time.monotonic()
    fetch(f"{server.url}/slow.zip", tmp_path / "slow.zip", retries=1, backoff_s=0.0, progress=False)
    assert time.monotonic() - started >= 0.9
    assert re.findall(r"retrying in ([0-9.]+) s", caplog.text) == ["1"]


def test_cuts_at_any_byte_resume_with_range_until_the_sha256_matches(server, tmp_path):
    payload = os.urandom(700_000)
    server.files["/cut.bin"] = payload
    server.cut["/cut.bin"] = [100_001, 299_999]  # the second cut falls inside the resumed body
    digest = hashlib.sha256(payload).hexdigest()
    dest = fetch(f"{server.url}/cut.bin", tmp_path / "cut.bin", checksum=("sha256", digest), retries=2,
                 progress=False)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert server.requests == [("/cut.bin", None), ("/cut.bin", "bytes=100001-"), ("/cut.bin", "bytes=400000-")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.bin"]


def test_resumes_count_against_the_same_retry_budget(server, tmp_path):
    payload = os.urandom(300_000)
    server.files["/flaky.bin"] = payload
    server.cut["/flaky.bin"] = [1000, 1000, 1000]
    with pytest.raises(DownloadError, match=r"flaky\.bin: download failed after 2 attempts; last error: connection"):
        fetch(f"{server.url}/flaky.bin", tmp_path / "flaky.bin", retries=1, progress=False)
    assert (tmp_path / "flaky.bin.part").stat().st_size == 2000  # kept for the next run
    assert len(server.requests) == 2


def test_a_part_file_that_is_already_whole_is_finished_without_downloading_again(server, tmp_path):
    payload = os.urandom(50_000)
    server.files["/done.bin"] = payload
    (tmp_path / "done.bin.part").write_bytes(payload)
    dest = fetch(f"{server.url}/done.bin", tmp_path / "done.bin",
                 checksum=("sha256", hashlib.sha256(payload).hexdigest()), retries=0, progress=False)
    assert dest.read_bytes() == payload
    assert server.requests == [("/done.bin", "bytes=50000-")]  # answered 416: nothing left to send


def test_each_sha256_mismatch_is_kept_aside_under_its_own_corrupt_name(server, tmp_path):
    server.files["/e.bin"] = b"tampered" * 1000
    for _ in range(2):
        with pytest.raises(ChecksumError, match=r"e\.bin: sha256 is [0-9a-f]{64}, expected f{64}"):
            fetch(f"{server.url}/e.bin", tmp_path / "e.bin", checksum=("sha256", "f" * 64), retries=0,
                  progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.bin.2.corrupt", "e.bin.corrupt"]
    assert (tmp_path / "e.bin.2.corrupt").read_bytes() == server.files["/e.bin"]


def test_obtain_downloads_extracts_verifies_and_writes_a_manifest(server, tmp_path, ravdess_archive):
    archive, md5 = ravdess_archive
    server.files["/rav.zip"] = archive.read_bytes()
    source = with_url(ravdess.SOURCE, f"{server.url}/rav.zip", md5=md5)
    out = tmp_path / "raw"
    report = obtain_corpus("ravdess", out, settings=FAST, mirror="", source=source)
    assert report.action == "downloaded" and report.verification.clips == 8
    folder = out / "ravdess"
    with open(folder / MANIFEST_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    for row in rows:
        data = (folder / row["path"]).read_bytes()
        assert int(row["size"]) == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["path"].startswith("Actor_0") and row["problem"] == ""
    assert sorted(p.name for p in out.iterdir()) == ["ravdess"]  # archive, staging and .part gone

    again = obtain_corpus("ravdess", out, settings=FAST, mirror="", source=source)
    assert again.action == "kept" and len(server.requests) == 1

    changed = next(folder.rglob("*.wav"))
    changed.write_bytes(changed.read_bytes()[:-2] + b"\x01\x02")
    assert manifest_mismatches(folder) == [f"{changed.relative_to(folder).as_posix()}: content changed"]
    assert obtain_corpus("ravdess", out, settings=FAST, mirror="", source=source).action == "downloaded"
    assert manifest_mismatches(folder) == []


def test_the_official_checksum_stays_when_only_the_url_is_redirected(server, tmp_path, ravdess_archive):
    archive, _ = ravdess_archive
    server.files["/rav.zip"] = archive.read_bytes()
    with pytest.raises(ChecksumError, match=r"ravdess: .*expected bc696df654c87fed845eb13823edef8a"):
        obtain_corpus("ravdess", tmp_path / "raw", settings=FAST, mirror="",
                      source=with_url(ravdess.SOURCE, f"{server.url}/rav.zip"))
    assert list((tmp_path / "raw" / ".downloads").glob("*.corrupt"))
    assert not (tmp_path / "raw" / "ravdess").exists()


def test_an_archive_with_a_climbing_member_is_refused_whole(server, tmp_path, ravdess_archive):
    archive, _ = ravdess_archive
    evil = make_archive(archive.parent / "tree", tmp_path / "evil.zip", extra_members={"../escaped.wav": b"x"})
    server.files["/evil.zip"] = evil.read_bytes()
    source = with_url(ravdess.SOURCE, f"{server.url}/evil.zip", md5=None)
    out = tmp_path / "work" / "raw"
    with pytest.raises(UnsafeArchiveError, match=r"ravdess: .*refused.*\.\./escaped\.wav \(climbs out"):
        obtain_corpus("ravdess", out, settings=FAST, mirror="", source=source)
    assert not list(tmp_path.rglob("escaped.wav"))
    assert not (out / "ravdess").exists() and not list(out.glob(".staging-*"))


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_links_and_absolute_members_are_refused(tmp_path, suffix):
    (tmp_path / "tree").mkdir()
    write_clip(tmp_path / "tree" / "ok.wav", seconds=0.05)
    linked = make_archive(tmp_path / "tree", tmp_path / f"link{suffix}", symlinks={"passwd.wav": "/etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="passwd.wav \\(is a link\\)"):
        safe_extract(linked, tmp_path / "out1")
    absolute = make_archive(tmp_path / "tree", tmp_path / f"abs{suffix}", extra_members={"/tmp/abs.wav": b"x"})
    with pytest.raises(UnsafeArchiveError, match="is an absolute path"):
        safe_extract(absolute, tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    assert (safe_extract(make_archive(tmp_path / "tree", tmp_path / f"fine{suffix}"), tmp_path / "out3")
            / "ok.wav").is_file()


def test_strict_mode_lists_how_many_and_which_clips_are_missing(server, tmp_path, ravdess_archive):
    archive, md5 = ravdess_archive
    server.files["/rav.zip"] = archive.read_bytes()
    source = with_url(ravdess.SOURCE, f"{server.url}/rav.zip", md5=md5)
    strict = DownloadSettings(retries=0, backoff_s=0, timeout_s=10, strict=True)
    with pytest.raises(IncompleteCorpusError, match=r"ravdess: 1432 of 1440 clips are missing.*"
                                                    r"03-01-01-01-01-01-03.*and 1412 more"):
        obtain_corpus("ravdess", tmp_path / "raw", settings=strict, mirror="", source=source)
    assert not (tmp_path / "raw" / "ravdess").exists()


def test_offline_without_a_mirror_says_which_corpus_which_url_and_how_to_mirror(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Audio_Speech_Actors_01-24.zip"
    with pytest.raises(DownloadError) as failure:
        obtain(["ravdess"], tmp_path / "raw", settings=DownloadSettings(retries=0, backoff_s=0, timeout_s=5, strict=True),
               mirror="", sources={"ravdess": with_url(ravdess.SOURCE, url)})
    message = str(failure.value)
    assert message.startswith(f"ravdess: could not download from {url}")
    assert "SER_DATA_MIRROR is unset" in message and "SER_DATA_MIRROR=<mirror>" in message
    assert "Audio_Speech_Actors_01-24.zip" in message


def test_savee_is_mirror_only_and_says_so(tmp_path):
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError, match=r"savee: .*registration.*SER_DATA_MIRROR=.*mirror has no savee/"):
        obtain(["savee"], tmp_path / "raw", settings=FAST, mirror=tmp_path / "mirror")


def test_a_mirror_is_copied_verified_and_unselected_corpora_are_removed(tmp_path, tiny_mirror):
    out = tmp_path / "raw"
    reports = obtain(["ravdess", "tess"], out, settings=FAST, mirror=tiny_mirror)
    assert [(r.corpus, r.action, r.verification.clips) for r in reports] == [("ravdess", "mirror", 64),
                                                                           ("tess", "mirror", 42)]
    copied = out / "ravdess" / "Actor_01" / "03-01-01-01-01-01-01.wav"
    assert copied.is_file() and not copied.is_symlink()
    assert copied.read_bytes() == (tiny_mirror / "ravdess" / "Actor_01" / copied.name).read_bytes()
    assert manifest_mismatches(out / "tess") == []
    assert [r.action for r in obtain(["tess"], out, settings=FAST, mirror=tiny_mirror)] == ["kept"]
    assert sorted(p.name for p in out.iterdir()) == ["tess"]


def test_a_mirror_copy_must_match_the_mirrors_published_sums(tmp_path):
    mirror = tmp_path / "mirror"
    clips = make_ravdess(mirror / "ravdess", actors=(1,), emotions=("01",), seconds=0.05)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(mirror / 'ravdess').as_posix()}"
             for p in clips]
    (mirror / "ravdess" / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert obtain_corpus("ravdess", tmp_path / "raw", settings=FAST, mirror=mirror).verification.clips == 2
    lines[1] = "0" * 64 + lines[1][64:]
    (mirror / "ravdess" / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    with pytest.raises(ChecksumError, match=r"1 file\(s\) differ from its SHA256SUMS: Actor_01/03-01-01-01-02-01-01"):
        obtain_corpus("ravdess", tmp_path / "raw2", settings=FAST, mirror=mirror)


def test_a_mirror_may_hold_an_archive_in_place_of_the_tree(tmp_path, ravdess_archive):
    archive, _ = ravdess_archive
    (tmp_path / "mirror" / "ravdess").mkdir(parents=True)
    (tmp_path / "mirror" / "ravdess" / "ravdess-copy.zip").write_bytes(archive.read_bytes())
    report = obtain_corpus("ravdess", tmp_path / "raw", settings=FAST, mirror=tmp_path / "mirror")
    assert report.action == "mirror" and report.verification.clips == 8
    # Under the official name, the archive must be the official one.
    (tmp_path / "mirror" / "ravdess" / "ravdess-copy.zip").rename(
        tmp_path / "mirror" / "ravdess" / "Audio_Speech_Actors_01-24.zip")
    with pytest.raises(ChecksumError, match="Audio_Speech_Actors_01-24.zip: md5 does not match"):
        obtain_corpus("ravdess", tmp_path / "raw2", settings=FAST, mirror=tmp_path / "mirror")


def test_a_file_listing_source_fetches_every_listed_file(server, tmp_path):
    clips = {}
    for name in ("1001_DFA_ANG_XX.wav", "1002_IEO_HAP_HI.wav", "1091_TIE_NEU_XX.wav"):
        clips[name] = write_clip(tmp_path / "src" / name, seconds=0.05).read_bytes()
        server.files[f"/media/AudioWAV/{name}"] = clips[name]
    server.files["/listing.txt"] = "\n".join(["README.md", *(f"AudioWAV/{n}" for n in clips)]).encode()
    source = with_url(cremad.SOURCE, f"{server.url}/media/", listing_url=f"{server.url}/listing.txt")
    report = obtain_corpus("cremad", tmp_path / "raw", settings=FAST, mirror="", source=source)
    assert report.verification.clips == 3
    for name, data in clips.items():
        assert (tmp_path / "raw" / "cremad" / "AudioWAV" / name).read_bytes() == data


def test_verification_reports_unparseable_and_unreadable_files(tmp_path):
    make_ravdess(tmp_path, actors=(1,), emotions=("01",), seconds=0.05)
    write_clip(tmp_path / "Actor_01" / "notes.wav", seconds=0.05)
    (tmp_path / "Actor_01" / "03-01-02-01-01-01-01.wav").write_bytes(b"")
    check = verify_corpus(ravdess, tmp_path)
    assert check.clips == 3 and check.shortfall == 1437
    assert any("notes.wav" in u for u in check.unparseable)
    assert [u.split(":")[0] for u in check.unreadable] == ["Actor_01/03-01-02-01-01-01-01.wav"]
    assert set(check.problems_by_path) == {"Actor_01/notes.wav", "Actor_01/03-01-02-01-01-01-01.wav"}


def test_savee_verification_names_missing_clips(tmp_path):
    write_clip(tmp_path / "DC_a01.wav", seconds=0.05)
    check = verify_corpus(savee, tmp_path)
    assert check.clips == 1 and len(check.missing) == 479 and "KL_su15" in check.missing
