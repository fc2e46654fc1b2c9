#!/usr/bin/env bash
# The one GPU check (bench/gpu_check.py), in two runs on one warm H100/H200, from the repository root:
#
#   bash bench/gpu_check.sh --part 1 --out "$OUT"    # ~4 min: environment, pytest -m gpu, Muon, kernels, train step
#   bash bench/gpu_check.sh --part 2 --out "$OUT"    # ~5 min: compile cache, matmul peak, looped step, LoRA TTT
#
# On a box without a package registry, the wheels of `make wheelhouse` in .whl/ (if present) are installed into
# .whl/site (no change to the system's Python); on a CPU machine every CUDA sub-check is skipped with its reason
# (a dry run) and the script exits 0. Files written to --out: gpu_check_N.json, summary_N.txt, and from part 1
# pytest.txt and compile_cache.bin (6 in all); the compile cache for part 2 stays in .cache/gpu_check/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SITE="$PWD/.whl/site"
if [ -d .whl ] && ! PYTHONPATH="$SITE" "$PY" -c "import pydantic, brotli" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --find-links .whl --target "$SITE" pydantic brotli \
    || echo "gpu_check: could not install pydantic/brotli from .whl/ for $("$PY" -V) (make wheelhouse WHEEL_PY=...)"
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
