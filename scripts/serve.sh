#!/usr/bin/env bash
# One command on a fresh machine: install into .venv, build sample studies from packaged real data, and start
# LIM-Net Label on http://127.0.0.1:8000 (override with HOST/PORT; pass another studies folder as $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
STUDIES=${1:-studies}
if [ "$STUDIES" = studies ]; then
  .venv/bin/python scripts/make_studies.py studies
fi
export PATH="$PWD/.venv/bin:$PATH"
exec monailabel start_server --app apps/limnet --studies "$STUDIES" --conf models limnet \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
