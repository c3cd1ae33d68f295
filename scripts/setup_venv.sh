#!/usr/bin/env bash
# Create .venv (if missing) and install the app's and the tests' requirements. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "installing requirements into .venv (a few minutes on a fresh machine)..."
  .venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
  touch "$stamp"
fi
