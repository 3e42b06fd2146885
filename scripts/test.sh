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
# With arguments, only pytest runs, with them. Without, the whole suite: lint and type checking
# once each, as pyproject.toml configures them ([tool.ruff], [tool.mypy]: what to check, and the
# cache in .mypy_cache), then the Triton serving tests, which need a venv of the system's Python
# (scripts/test-serve.sh), then pytest, so that its summary is the last line. A failed step does
# not hide the others; the exit status is 1 if any failed.
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
failed=()
echo "== lint: ruff check" >&2
.venv/bin/python -m ruff check . || failed+=(ruff)
echo "== type check: mypy" >&2
.venv/bin/python -m mypy || failed+=(mypy)
# The TensorRT code and the tests' stand-in, strictly, against tensorrt-stubs (repaired copies and a
# qualitynet link tree in build/mypy-trt: mypy cannot follow the editable install's import hook).
echo "== type check: the TensorRT code against tensorrt-stubs" >&2
{ .venv/bin/python tests/trt_stubs.py build/mypy-trt \
  && MYPYPATH=build/mypy-trt:tests .venv/bin/python -m mypy --follow-imports=silent -p qualitynet.export.tensorrt \
     -p qualitynet.export.trt_calibration -p qualitynet.runtime.trt_compat -p qualitynet.runtime.trt_runner \
     -p qualitynet.runtime.gpu -m fake_tensorrt; } || failed+=(mypy-tensorrt)
bash scripts/test-serve.sh || failed+=(test-serve)
# pytest-xdist: one worker per CPU (at most 4, each pinned to its share by tests/xdist_pinning.py), whole
# test files to a worker so that a file's fixtures are built once.
workers=$(nproc); [ "$workers" -le 4 ] || workers=4
.venv/bin/python -m pytest -n "$workers" --dist loadfile || failed+=(pytest)
if [ "${#failed[@]}" -gt 0 ]; then
    echo "scripts/test.sh: failed: ${failed[*]}" >&2
    exit 1
fi
