#!/usr/bin/env bash
# Installs what the real-browser test needs, where it can: Debian's chromium (+ CJK fonts for the
# Korean page) with apt-get when apt is available and we are root, and the playwright Python
# package into .venv (it drives the system chromium; no browser download). Never fails the build:
# where chromium cannot be installed, tests/ui/test_browser.py skips and says why.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "browser-test: installing chromium with apt-get"
    timeout 600 apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium fonts-noto-cjk >/dev/null \
      || echo "browser-test: apt-get could not install chromium; the browser test will skip"
  else
    echo "browser-test: chromium is missing and apt-get is unavailable (or not root); the browser test will skip"
  fi
fi
if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  echo "browser-test: installing the playwright Python package"
  "$PY" -m pip install --quiet playwright || echo "browser-test: could not install playwright; the browser test will skip"
fi

exit 0
