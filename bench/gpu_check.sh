#!/usr/bin/env bash
# The one GPU check (bench/gpu_check.py): at most ~8 minutes on one H100/H200, from the source tree.
#
#   bash bench/gpu_check.sh --out DIR [--budget SECONDS] [--commit SHA]
#
# On a box without a package registry, the wheels of `make wheelhouse` in .whl/ (if present) are installed into
# .whl/site (no change to the system's Python); on a CPU machine every CUDA sub-check is skipped with its reason
# (a dry run) and the script exits 0. Files written to DIR: gpu_check.json, summary.txt, pytest.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SITE="$PWD/.whl/site"
if [ -d .whl ] && ! "$PY" -c "import pydantic, brotli" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links .whl --target "$SITE" pydantic brotli \
    || echo "gpu_check: could not install pydantic/brotli from .whl/ for $("$PY" -V) (make wheelhouse WHEEL_PY=...)"
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
