#!/usr/bin/env bash
# Set up a virtual environment and run the whole toolkit on the bundled demo photos, offline:
# generate data, train the lite02 config (pretrained EfficientNet-Lite0 + Lite2, frozen backbones), export (ONNX, FP16 ONNX, TensorRT when present),
# score the held-out photos with the lean runtime, benchmark. Output in demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh
.venv/bin/iqa-demo --out demo-output "$@"
