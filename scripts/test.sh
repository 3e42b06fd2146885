#!/usr/bin/env bash
# Set up a virtual environment with every extra and run the whole test suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev source scripts/setup-venv.sh
# The TensorRT code is checked against the real API without a GPU: tensorrt-stubs (types,
# installed without its dependency on the full TensorRT, whose wheels only NVIDIA's index
# serves) and the lean runtime bindings (real, importable without a GPU).
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps tensorrt-stubs==10.13.0.35.1
.venv/bin/pip install --quiet --disable-pip-version-check tensorrt-lean-cu13==11.4.0.106
# The Triton serving tests need a venv of the system's Python (scripts/test-serve.sh); they run
# first so that the whole suite's summary is the last line.
[ "$#" -gt 0 ] || bash scripts/test-serve.sh
.venv/bin/python -m pytest "$@"
