#!/usr/bin/env bash
# Every GPU path in one call, for a lent GPU host (see bench/gpu_check.py). From the repo root:
#   bash bench/gpu_check.sh [--dry-run] [--parts cell,fsdp]
# carrying the Ray bundle made by ../shared/gpu/pack.sh .gpu (the host has no Ray, no network).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .gpu/unpack.sh ] && ! python3 -c "import ray" 2>/dev/null; then
  bash .gpu/unpack.sh .gpu >/dev/null && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
exec timeout 560 "$PY" bench/gpu_check.py "$@"
