#!/usr/bin/env bash
# For the OHIF browser test (tests/test_ohif_browser.py): Debian's `chromium` (apt, needs root) and the Python
# `playwright` package in .venv (listed in requirements-dev.txt, so scripts/setup_venv.sh installs it too).
# Playwright's own browser download is never used: the test launches /usr/bin/chromium with executable_path.
# Idempotent; quick when both are present.
set -euo pipefail
cd "$(dirname "$0")/.."
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  .venv/bin/python -m pip install -q "$(grep -E '^playwright' requirements-dev.txt)"
fi
