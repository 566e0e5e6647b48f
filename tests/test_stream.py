"""The live microphone of ``ser serve`` (WS /api/stream): real clips streamed over loopback,
answered as the HTTP API answers the same samples, and the stream limits; then the page in a
headless Chromium whose fake microphone plays a real corpus clip."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.serve_support import (PYTHON, REPO, post_clip, ravdess_clip, ser_serve, shared_bundle_dir, subprocess_env,
                                 train_small_bundle, wait_for_health, wav_bytes)

pytestmark = [pytest.mark.mirror, pytest.mark.slow]

RATE = 16000
CHUNK = 1600  # 0.1 s frames, as the page sends
MAX_STREAMS = 3
IDLE_S = 3.0
MAX_S = 20.0
MAX_FRAME_BYTES = 64000  # params.yaml's serve.stream_max_frame_bytes, which the server below keeps
WS_TIMEOUT_S = 60


def pcm16(path: Path) -> np.ndarray:
    """A real clip as the 16 kHz int16 samples a client streams."""
    from ser.audio import decode, resample, to_mono

    samples, rate = decode(path)
    y = resample(to_mono(samples), rate, RATE)
    return np.round(np.clip(y, -1.0, 1.0) * 32767).astype("<i2")


def float_wav(y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(y, dtype=np.float32), RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle(real_mirror, tmp_path_factory) -> Path:
    return train_small_bundle(real_mirror, shared_bundle_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def site(bundle, tmp_path_factory):
    """``ser serve`` with two predictor processes and small stream limits, for the whole module."""
    log = tmp_path_factory.mktemp("stream") / "serve.log"
    with ser_serve("--model", str(bundle), "--workers", "2", "--max-queue", "6", "--max-streams", str(MAX_STREAMS),
                   "--stream-idle-s", str(IDLE_S), "--stream-max-s", str(MAX_S), log_path=log) as (base, _):
        info = requests.get(f"{base}/api/info", timeout=10).json()["stream"]
        assert info["max_frame_bytes"] == MAX_FRAME_BYTES and info["every_s"] == 1.0, info
        yield base


@pytest.fixture
def quiet_site(site):
    """The server with no stream left over from an earlier test."""
    wait_for_health(site, lambda report: report["streams"]["live"] == 0, timeout_s=30)
    return site


def connect(base: str, fmt: str = "s16le"):
    import websocket

    ws = websocket.create_connection(base.replace("http://", "ws://") + f"/api/stream?format={fmt}",
                                     timeout=WS_TIMEOUT_S)
    return ws


def ready(ws) -> dict:
    message = json.loads(ws.recv())
    assert message["type"] == "ready", message
    return message


def next_event(ws) -> tuple[str, object]:
    """("message", dict) or ("close", (code, reason)); the connection failing counts as a close
    without a code."""
    import websocket

    try:
        opcode, data = ws.recv_data()
    except (websocket.WebSocketConnectionClosedException, ConnectionError) as exc:
        return "close", (None, str(exc))
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        return "close", (int.from_bytes(data[:2], "big") if len(data) >= 2 else None, data[2:].decode("utf-8"))
    return "message", json.loads(data)


def closed_with(ws) -> tuple[int | None, str]:
    """Read until the server closes; returns its code and reason."""
    while True:
        kind, value = next_event(ws)
        if kind == "close":
            return value


def feed(ws, pcm: np.ndarray, pause_s: float = 0.05) -> None:
    """Send ``pcm`` in 0.1 s frames, twice as fast as real time."""
    for start in range(0, len(pcm), CHUNK):
        ws.send_binary(pcm[start:start + CHUNK].tobytes())
        time.sleep(pause_s)


def stream_clip(base: str, pcm: np.ndarray, fmt: str) -> list[dict]:
    """Stream one clip and return every message after "ready", up to the update of the last
    whole second (which is never replaced by a newer window, so it always comes)."""
    ws = connect(base, fmt)
    try:
        ready(ws)
        feed(ws, pcm if fmt == "s16le" else (pcm.astype("<f4") / 32768.0))
        last = len(pcm) // RATE
        messages = []
        while not messages or messages[-1]["end_s"] != last:
            kind, value = next_event(ws)
            assert kind == "message", value
            messages.append(value)
        return messages
    finally:
        ws.close()


def test_concurrent_streams_are_answered_as_the_api_answers_the_same_window(quiet_site, real_mirror):
    """Three streams at once (the limit), one of them float32, each a real clip of an actor the
    model never saw: an update per second of audio, each exactly what POST /api/predict says
    for the window's samples."""
    clips = [ravdess_clip(real_mirror, 10, code) for code in ("05", "03", "04")]
    formats = ["s16le", "s16le", "f32le"]
    signals = [pcm16(clip) for clip in clips]
    with ThreadPoolExecutor(len(clips)) as threads:
        answers = list(threads.map(lambda args: stream_clip(quiet_site, *args), zip(signals, formats)))

    window_s = requests.get(f"{quiet_site}/api/info", timeout=10).json()["window_s"]
    for clip, pcm, fmt, messages in zip(clips, signals, formats, answers):
        updates = [m for m in messages if m["type"] == "update"]
        assert updates and all(m["type"] == "update" for m in messages), (clip.name, messages)
        ends = [u["end_s"] for u in updates]
        assert ends == sorted(set(ends)) and all(float(e).is_integer() for e in ends), ends  # whole seconds
        assert ends[-1] == len(pcm) // RATE and len(updates) >= 3, ends
        for update in updates:
            start, end = round(update["start_s"] * RATE), round(update["end_s"] * RATE)
            assert end - start == min(end, round(window_s * RATE))  # the sliding window
            window = pcm[start:end]
            data = wav_bytes(window / 32768.0, RATE) if fmt == "s16le" else float_wav(window / 32768.0)
            response = post_clip(quiet_site, f"{clip.stem}-{start}.wav", data)
            if response.status_code == 400:  # a window the front end finds silent
                assert update["label"] is None and update["detail"], update
                continue
            assert response.status_code == 200, response.text
            api = response.json()
            assert update["label"] == api["label"], (clip.name, update, api)
            assert update["probabilities"] == pytest.approx(api["probabilities"], abs=1e-9)
        assert sum(u["label"] is not None for u in updates) >= 2
    report = wait_for_health(quiet_site, lambda r: r["streams"]["live"] == 0, timeout_s=30)
    assert report["status"] == "ok"


def test_a_stream_past_the_limit_is_refused_with_a_reason(quiet_site, real_mirror):
    held = [connect(quiet_site) for _ in range(MAX_STREAMS)]

    def keep_alive():  # a tenth of a second of audio, so none of them idles out meanwhile
        for ws in held:
            ws.send_binary(np.zeros(CHUNK, "<i2").tobytes())

    try:
        for ws in held:
            ready(ws)
        refused = connect(quiet_site)
        code, reason = closed_with(refused)
        assert code == 1013 and "serve.max_streams" in reason and f"{MAX_STREAMS} live streams" in reason, reason
        keep_alive()
        # HTTP is served meanwhile
        clip = ravdess_clip(real_mirror, 11, "03")
        assert post_clip(quiet_site, clip.name, clip.read_bytes()).status_code == 200
        keep_alive()
        held.pop().close()
        wait_for_health(quiet_site, lambda r: r["streams"]["live"] == MAX_STREAMS - 1, timeout_s=30)
        keep_alive()
        again = connect(quiet_site)
        held.append(again)
        ready(again)  # the freed slot is taken
    finally:
        for ws in held:
            ws.close()
    report = wait_for_health(quiet_site, lambda r: r["streams"]["live"] == 0, timeout_s=30)
    assert report["streams"]["closed"].get("refused_busy", 0) >= 1


def test_a_client_that_vanishes_mid_stream_frees_its_slot(quiet_site, real_mirror):
    pcm = pcm16(ravdess_clip(real_mirror, 12, "05"))
    before = requests.get(f"{quiet_site}/health", timeout=10).json()["streams"]["closed"].get("client_closed", 0)
    gone = connect(quiet_site)
    ready(gone)
    feed(gone, pcm[: int(1.5 * RATE)])
    gone.sock.close()  # no close frame: the process on the other end died
    gone.sock = None
    report = wait_for_health(quiet_site, lambda r: r["streams"]["live"] == 0, timeout_s=30)
    assert report["streams"]["closed"]["client_closed"] == before + 1
    assert report["status"] == "ok" and report["workers"]["up"] == 2
    messages = stream_clip(quiet_site, pcm, "s16le")  # the server streams on
    assert messages[-1]["label"] is not None


GARBAGE = {
    "text frame": (lambda ws: ws.send("hello"), 1003, "text frame"),
    "odd byte count": (lambda ws: ws.send_binary(b"\x01\x02\x03"), 1007, "not whole s16le samples"),
    "empty frame": (lambda ws: ws.send_binary(b""), 1007, "empty frame"),
    "oversized frame": (lambda ws: ws.send_binary(b"\x00\x01" * (MAX_FRAME_BYTES // 2 + 1)), 1009,
                        "serve.stream_max_frame_bytes"),
    "non-finite floats": (lambda ws: ws.send_binary(np.array([0.1, np.nan, 0.2], "<f4").tobytes()), 1007, "NaN"),
    "infinite floats": (lambda ws: ws.send_binary(np.array([np.inf] * 4, "<f4").tobytes()), 1007, "infinite"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_closes_that_stream_with_a_reason_and_the_others_go_on(quiet_site, real_mirror, case):
    send, expected_code, expected_reason = GARBAGE[case]
    pcm = pcm16(ravdess_clip(real_mirror, 13, "04"))
    good = connect(quiet_site)
    try:
        ready(good)
        feed(good, pcm[:RATE])
        bad = connect(quiet_site, "f32le" if "floats" in case else "s16le")
        ready(bad)
        send(bad)
        code, reason = closed_with(bad)
        assert code == expected_code and expected_reason in reason, (code, reason)
        feed(good, pcm[RATE: 2 * RATE])
        seen = []
        while not seen or seen[-1]["end_s"] != 2:
            kind, value = next_event(good)
            assert kind == "message", value
            seen.append(value)
        assert [m["end_s"] for m in seen] == [1, 2]
    finally:
        good.close()
    clip = ravdess_clip(real_mirror, 13, "05")
    assert post_clip(quiet_site, clip.name, clip.read_bytes()).status_code == 200


def test_a_frame_far_over_the_limit_is_cut_by_the_transport(quiet_site):
    """uvicorn refuses it before buffering it whole (or resets the connection), with its own
    reason, not the app's; the server counts it as a frame too big and is fine."""
    before = requests.get(f"{quiet_site}/health", timeout=10).json()["streams"]["closed"].get("frame_too_big", 0)
    ws = connect(quiet_site)
    try:
        ready(ws)
        try:
            ws.send_binary(b"\x00" * (5 * MAX_FRAME_BYTES))
        except (ConnectionError, OSError):
            pass
        code, reason = closed_with(ws)
    finally:
        ws.close()
    assert code in (1009, None), (code, reason)
    if code == 1009:  # the transport's cut, not the app's check of serve.stream_max_frame_bytes
        assert "Message exceeds the maximum size" in reason and "stream_max_frame_bytes" not in reason, reason
    report = wait_for_health(quiet_site, lambda r: r["streams"]["live"] == 0 and
                             r["streams"]["closed"].get("frame_too_big", 0) == before + 1, timeout_s=30)
    assert report["status"] == "ok"


def test_the_server_declines_compressed_frames(quiet_site):
    """permessage-deflate is refused: a small compressed frame could inflate past any size limit."""
    import websocket

    ws = websocket.create_connection(quiet_site.replace("http://", "ws://") + "/api/stream", timeout=WS_TIMEOUT_S,
                                     header=["Sec-WebSocket-Extensions: permessage-deflate"])
    try:
        ready(ws)
        assert "sec-websocket-extensions" not in {k.lower() for k in ws.getheaders()}, ws.getheaders()
    finally:
        ws.close()


def test_unknown_format_is_refused(quiet_site):
    ws = connect(quiet_site, "mp3")
    try:
        code, reason = closed_with(ws)
    finally:
        ws.close()
    assert code == 1003 and "unknown format 'mp3'" in reason


def test_an_idle_stream_is_closed(quiet_site, real_mirror):
    ws = connect(quiet_site)
    ready(ws)
    feed(ws, pcm16(ravdess_clip(real_mirror, 14, "05"))[: RATE // 2])
    quiet_since = time.monotonic()
    code, reason = closed_with(ws)
    waited = time.monotonic() - quiet_since
    assert code == 1008 and f"serve.stream_idle_s = {IDLE_S:g} s" in reason, reason
    assert IDLE_S - 0.2 <= waited <= IDLE_S + 3.0, waited


def test_a_stream_sent_ahead_of_real_time_still_gets_the_whole_idle_time(quiet_site, real_mirror):
    """Audio received counts toward serve.stream_max_s, but silence is measured on the clock:
    with less audio time left than serve.stream_idle_s, the idle limit still waits it out."""
    ahead_s = int(MAX_S - IDLE_S / 2)  # leaves less than IDLE_S of audio time
    second = np.resize(pcm16(ravdess_clip(real_mirror, 14, "05")), RATE)
    ws = connect(quiet_site)
    try:
        ready(ws)
        for _ in range(ahead_s):
            ws.send_binary(second.tobytes())
        quiet_since = time.monotonic()
        code, reason = closed_with(ws)
        waited = time.monotonic() - quiet_since
    finally:
        ws.close()
    assert code == 1008 and f"serve.stream_idle_s = {IDLE_S:g} s" in reason, reason
    assert IDLE_S - 0.2 <= waited <= IDLE_S + 3.0, waited


def test_a_stream_sent_faster_than_real_time_ends_at_the_duration_limit(quiet_site, real_mirror):
    """serve.stream_max_s counts audio received too, so a client cannot outrun it."""
    pcm = pcm16(ravdess_clip(real_mirror, 15, "03"))
    ws = connect(quiet_site)
    ready(ws)
    started = time.monotonic()
    second = np.resize(pcm, RATE)
    messages, closed = [], None
    for _ in range(int(MAX_S) + 2):
        try:
            ws.send_binary(second.tobytes())  # a whole second per frame, as fast as the socket takes it
        except (ConnectionError, OSError):  # the server closed after the 20th
            break
    while closed is None:
        kind, value = next_event(ws)
        if kind == "close":
            closed = value
        else:
            messages.append(value)
    assert closed[0] == 1008 and f"serve.stream_max_s = {MAX_S:g} s" in closed[1], closed
    assert time.monotonic() - started < MAX_S / 2  # ended by the audio count, not the clock
    assert all(m["end_s"] <= MAX_S for m in messages), messages  # nothing past the limit was scored


def test_stream_updates_wait_their_turn_in_the_request_queue(bundle, real_mirror, tmp_path):
    """A window is one more request for serve.max_queue: with the one slot taken by a long upload
    it is skipped with the reason, and the stream goes on once the slot is free."""
    from tests.serve_support import long_recording

    upload = wav_bytes(long_recording(real_mirror, 60.0), RATE)
    pcm = pcm16(ravdess_clip(real_mirror, 16, "05"))
    # The stream waits out the 60 s upload: the idle limit must not end it meanwhile.
    with ser_serve("--model", str(bundle), "--workers", "1", "--max-queue", "1", "--timeout-s", "120",
                   "--stream-idle-s", "120", log_path=tmp_path / "serve.log") as (base, _):
        ws = connect(base)
        try:
            ready(ws)
            with ThreadPoolExecutor(1) as thread:
                busy = thread.submit(post_clip, base, "long.wav", upload)
                wait_for_health(base, lambda r: r["queue"]["running"] == 1, timeout_s=30)
                feed(ws, pcm[:2 * RATE])
                skipped = [next_event(ws)[1] for _ in range(2)]
                assert busy.result().status_code == 200
            assert [m["type"] for m in skipped] == ["skipped", "skipped"], skipped
            assert "serve.max_queue" in skipped[0]["detail"]
            feed(ws, pcm[2 * RATE: 3 * RATE])
            kind, update = next_event(ws)
            assert kind == "message" and update["type"] == "update" and update["end_s"] == 3, update
            assert update["index"] == 1 and update["label"] is not None
        finally:
            ws.close()


# ---- the page, in headless Chromium with a fake microphone ---------------------------------------

def ser_predict_json(bundle: Path, path: Path) -> dict:
    result = subprocess.run([PYTHON, "-m", "ser", "predict", "--model", str(bundle), "--format", "json", str(path)],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)[0]


@pytest.fixture(scope="module")
def microphone_file(real_mirror, tmp_path_factory) -> Path:
    """What the fake microphone plays (in a loop): the speech of one real clip three times over,
    a 16-bit WAV, so every 3 s window of it is speech of that clip."""
    from ser.audio import trim_silence

    clip = ravdess_clip(real_mirror, 2, "05")  # angry, an actor the small model learned
    pcm = pcm16(clip)
    speech = trim_silence(pcm.astype(np.float32) / 32768.0, RATE, 40)
    path = tmp_path_factory.mktemp("microphone") / "angry.wav"
    sf.write(path, np.tile(speech, 3), RATE, subtype="PCM_16")
    return path


@pytest.mark.browser
def test_the_page_listens_to_the_microphone_and_shows_what_ser_predict_says(bundle, microphone_file, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_web import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, ensure_chromium

    expected = ser_predict_json(bundle, microphone_file)
    # The file's own windows agree, so any 3 s of it should get the same label live.
    assert {w["label"] for w in expected["windows"]} == {expected["label"]}, expected["windows"]

    ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-audio-capture={microphone_file}", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    with ser_serve("--model", str(bundle), "--workers", "1", log_path=tmp_path / "serve.log") as (base, _):
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(60)
            driver.get(f"{base}/")
            started = time.monotonic()
            driver.find_element(By.ID, "listen").click()
            wanted = 7
            WebDriverWait(driver, 60).until(
                lambda d: int(d.find_element(By.ID, "live").get_attribute("data-updates") or 0) >= wanted
                or d.find_element(By.ID, "live").get_attribute("data-state") == "error")
            elapsed = time.monotonic() - started
            section = driver.find_element(By.ID, "live")
            assert section.get_attribute("data-state") == "listening", driver.find_element(By.ID, "live-status").text
            cells = driver.execute_script("""
                return [...document.querySelectorAll('#live-timeline .live-cell')].map(c => ({
                  label: c.dataset.label, end: Number(c.dataset.end), start: Number(c.dataset.start),
                  skipped: c.dataset.skipped === 'true', colour: getComputedStyle(c).backgroundColor}));""")
            shown = driver.find_element(By.ID, "live-label").get_attribute("data-label")
            device_rate = int(section.get_attribute("data-rate"))
            driver.find_element(By.ID, "listen").click()
            assert driver.find_element(By.ID, "live").get_attribute("data-state") == "stopped"
        finally:
            driver.quit()
    assert len(cells) >= wanted and not any(c["skipped"] for c in cells), cells
    ends = [c["end"] for c in cells]
    assert ends == sorted(ends) and all(float(e).is_integer() for e in ends), ends
    assert device_rate > RATE, device_rate  # so the page's own resampling to 16 kHz is what ran
    # The page sends 16 kHz: the audio the server counted kept pace with the clock.
    assert 0.7 * elapsed <= ends[-1] <= 1.1 * elapsed + 1, (ends[-1], elapsed)
    full = [c["label"] for c in cells if c["end"] - c["start"] >= 2.99]
    assert len(full) >= 4, cells
    counts = Counter(full)
    assert counts.most_common(1)[0][0] == expected["label"], (counts, expected["label"])
    assert counts[expected["label"]] >= 0.75 * len(full), (counts, expected["label"])
    assert shown == cells[-1]["label"]
