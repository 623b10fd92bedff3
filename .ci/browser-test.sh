#!/usr/bin/env bash
# Real-browser check of the web app: headless Chromium loads `streamlit run ui/app.py` and
# tests/ui/test_browser.py checks the verdict and the default model, saving screenshots to
# ${UI_SCREENSHOT_DIR:-artifacts/screenshots}. Installs what it needs where it can:
#   - Debian's chromium (+ CJK fonts for the Korean page) with apt-get, when apt is available and we are root;
#   - the playwright Python package into .venv (it drives the system chromium; no browser download).
# Where chromium cannot be installed the test skips and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

bash .ci/install-browser.sh
export UI_SCREENSHOT_DIR=${UI_SCREENSHOT_DIR:-artifacts/screenshots}
"$PY" -m pytest -m browser tests/ui/test_browser.py -rs "$@"
echo "browser-test: screenshots in $UI_SCREENSHOT_DIR"
