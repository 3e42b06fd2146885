#!/usr/bin/env bash
# The GPU check (issue 10): one command on a machine with an NVIDIA GPU, a few minutes, offline.
#   bash benchmarks/scripts/gpu_check.sh            # -> results/gpu-<device>.{json,md}
#   bash benchmarks/scripts/gpu_check.sh --device cpu --quick --out /tmp/x   # CPU rehearsal
# Needs only python3 with torch, onnx, onnxruntime, numpy, pillow, click, tqdm, psutil, scipy,
# scikit-image (no network): the toolkit is installed from this checkout with --no-deps, or, if
# that fails, imported through a PYTHONPATH shim. Without a CUDA device it reports so and exits 0.
# PYTHON picks the interpreter (default python3); when $OUT is set (a lent device's output
# folder) the results are copied there too.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"

installed_here() {
    "$PYTHON" - "$REPO" <<'PY' 2>/dev/null
import sys
from pathlib import Path

import qualitynet.bench.run  # noqa: F401  (the whole benchmark stack imports)
import qualitynet

sys.exit(0 if Path(qualitynet.__file__).resolve().parent == Path(sys.argv[1]) / "qualitynet" else 1)
PY
}

if ! installed_here; then
    echo "[gpu_check] installing the toolkit from $REPO (pip --no-deps --no-build-isolation -e .)"
    if ! "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . || ! installed_here; then
        SHIM="$(mktemp -d)"
        mkdir "$SHIM/qualitynet"
        ln -s "$REPO"/qualitynet/* "$SHIM/qualitynet/"
        ln -s "$REPO/trainer" "$SHIM/qualitynet/trainer"
        ln -s "$REPO/export" "$SHIM/qualitynet/export"
        ln -s "$REPO/runtime" "$SHIM/qualitynet/runtime"
        ln -s "$REPO/benchmarks" "$SHIM/qualitynet/bench"
        export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
        echo "[gpu_check] pip install failed; importing the toolkit through $SHIM"
        "$PYTHON" -c "import qualitynet.bench.run"
    fi
fi
"$PYTHON" -m qualitynet.bench.cli gpu-check "$@"
if [ -n "${OUT:-}" ] && compgen -G "results/gpu-*" > /dev/null; then
    cp results/gpu-* "$OUT/"
fi
