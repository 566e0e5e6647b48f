"""The web page of ``ser serve`` in a real headless Chromium: what it shows is what the API says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.serve_support import (PYTHON, REPO, ravdess_clip, shared_bundle_dir, subprocess_env,
                                 train_small_bundle, wav_bytes)
from tests.local_server import free_port, stop_process_group, wait_until_answering

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run")

MAX_BYTES = 1_000_000

pytestmark = [pytest.mark.mirror, pytest.mark.browser, pytest.mark.slow]


def ensure_chromium() -> None:
    """Chromium and its driver come from ``make browser`` (part of ``make test``), not from a test."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{', '.join(missing)} missing: run 'make browser' as root (Debian packages chromium and chromium-driver)"


@pytest.fixture(scope="module")
def site(real_mirror, tmp_path_factory):
    """``ser serve`` (the documented command) on a free port, with the small model."""
    bundle = train_small_bundle(real_mirror, shared_bundle_dir(tmp_path_factory))
    port = free_port()
    log = (tmp_path_factory.mktemp("site") / "serve.log").open("wb")
    server = subprocess.Popen([PYTHON, "-m", "ser", "serve", "--model", str(bundle), "--port", str(port),
                               "--max-bytes", str(MAX_BYTES)],
                              cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/api/info", server)
        yield base
    finally:
        stop_process_group(server)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def upload(browser, site: str, path: Path, state: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{site}/")
    browser.find_element(By.ID, "file-input").send_keys(str(path))
    WebDriverWait(browser, 120).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "result").get_attribute("data-state") == state, \
        browser.find_element(By.ID, "status").text


def test_uploaded_clip_shows_the_label_and_bars_of_the_api(site, browser, real_mirror):
    from selenium.webdriver.common.by import By

    clip = ravdess_clip(real_mirror, 24, "05")
    response = requests.post(f"{site}/api/predict", files={"file": (clip.name, clip.read_bytes(), "audio/flac")},
                             timeout=120)
    assert response.status_code == 200, response.text
    api = response.json()

    upload(browser, site, clip, "done")

    assert browser.find_element(By.ID, "label").get_attribute("textContent") == api["label"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [bar.get_attribute("data-class") for bar in bars] == api["classes"]
    for bar in bars:
        name = bar.get_attribute("data-class")
        expected = api["probabilities"][name]
        assert float(bar.get_attribute("data-probability")) == pytest.approx(expected, abs=1e-12)
        assert bar.find_element(By.CLASS_NAME, "bar-value").get_attribute("textContent") == f"{100 * expected:.1f}%"
        fill = bar.find_element(By.CLASS_NAME, "bar-fill")
        track = bar.find_element(By.CLASS_NAME, "bar-track")
        assert fill.size["width"] == pytest.approx(expected * track.size["width"], abs=1.5)
        assert ("top" in bar.get_attribute("class").split()) == (name == api["label"])

    spectrogram_width = browser.execute_script("return document.getElementById('spectrogram').naturalWidth")
    assert spectrogram_width > 50
    drawn = browser.execute_script("""
        const c = document.getElementById('waveform');
        const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0;
        for (let i = 0; i < pixels.length; i += 4) if (pixels[i] > 100) lit++;
        return lit;""")
    assert drawn > 1000  # the waveform is drawn (the background is near black)


def test_a_file_that_is_not_audio_gets_a_clear_message(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"these are meeting notes, not a recording")
    upload(browser, site, bad, "error")
    status = browser.find_element(By.ID, "status").text
    assert "notes.wav" in status and "cannot decode audio" in status


def test_api_refuses_oversized_and_non_audio_uploads_and_keeps_serving(site, real_mirror):
    url = f"{site}/api/predict"
    oversized = wav_bytes(np.random.default_rng(1).uniform(-0.5, 0.5, 16000 * 40), 16000)
    assert len(oversized) > MAX_BYTES
    too_big = requests.post(url, files={"file": ("long.wav", oversized, "audio/wav")}, timeout=120)
    assert too_big.status_code == 413 and "long.wav" in too_big.json()["detail"]

    garbage = requests.post(url, files={"file": ("x.flac", b"\x00" * 64, "audio/flac")}, timeout=120)
    assert garbage.status_code == 400 and "x.flac: cannot decode audio" in garbage.json()["detail"]

    empty = requests.post(url, files={"file": ("empty.wav", b"", "audio/wav")}, timeout=120)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]

    clip = ravdess_clip(real_mirror, 2, "03")
    good = requests.post(url, files={"file": (clip.name, clip.read_bytes(), "audio/flac")},
                         params={"visuals": "false"}, timeout=120)
    assert good.status_code == 200 and "spectrogram" not in good.json()
    assert sum(good.json()["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
