#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the web page's tests (tests/test_web.py), from Debian.
# A no-op when both are present; needs root (or sudo) to install them.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium / chromedriver missing: run 'sudo make browser' (apt-get install chromium chromium-driver)" >&2
  echo "until then the web page's tests (tests/test_web.py) fail" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium chromium-driver
