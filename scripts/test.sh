#!/usr/bin/env bash
# One command: install into .venv if needed, lint, and run the whole test suite (real server on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
.venv/bin/ruff check apps scripts tests
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q tests "$@"
