#!/usr/bin/env bash
# Install what tests/test_browser.py needs, idempotently and without stdin:
#   Debian's chromium + chromium-driver (apt, when root) and the `playwright` Python package in the venv
#   (its pip wheel carries its own driver; no browser download: the test drives /usr/bin/chromium).
# Never fails the build: if something cannot be installed, the browser test skips and says why.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"

if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >/dev/null || echo "browser_deps: apt-get update failed"
    apt-get install -y -q --no-install-recommends chromium chromium-driver </dev/null >/dev/null \
      || echo "browser_deps: could not install chromium; tests/test_browser.py will be skipped"
  else
    echo "browser_deps: chromium is missing and apt-get is not usable (not root?); tests/test_browser.py will be skipped"
  fi
fi

if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  "$PY" -m pip install -q "playwright>=1.40" </dev/null \
    || echo "browser_deps: could not pip-install playwright; tests/test_browser.py will be skipped"
fi

command -v chromium >/dev/null 2>&1 && echo "browser_deps: $(chromium --version 2>/dev/null | head -1)"
"$PY" -c "import importlib.metadata as m; print('browser_deps: playwright', m.version('playwright'))" 2>/dev/null || true
exit 0
