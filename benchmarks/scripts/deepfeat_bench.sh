#!/usr/bin/env bash
# The deepfeat-lite rows: iqa-bench (model-only and end to end, CPU) on a fitted deepfeat-lite model
# (MODEL, default: the seed-0 run of recipe_compare.py's deepfeat-lite arm), 100 generated JPEGs of
# 1024x768, into benchmarks/results/deepfeat-lite-cpu.{md,json,png}. Inputs are generated offline into $WORK.
#   MODEL=runs/gpr/model.pt bash benchmarks/scripts/deepfeat_bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-runs/bench-cpu}"
PHOTOS="$WORK/runtime/photos_1024x768"  # shared with cpu_tables.sh and lite_bench.sh
RESULTS=benchmarks/results
BIN=.venv/bin
MODEL="${MODEL:-runs/recipe/runs/deepfeat-lite(GP)_x1+x2-seed0/model.pt}"
[ -f "$MODEL" ] || { echo "no $MODEL: fit one (iqa-train --config deepfeat-lite ...) and pass MODEL=" >&2; exit 1; }
mkdir -p "$RESULTS"
"$BIN/python" -c "
import sys
from pathlib import Path
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.demo_data import make_photo_folder
name = load_checkpoint('$MODEL').model_config.name
sys.exit(f'$MODEL is the {name} config, not deepfeat-lite') if name != 'deepfeat-lite' else None
if len(list(Path('$PHOTOS').glob('*.jpg'))) < 200:
    make_photo_folder('$PHOTOS', count=200, size=(1024, 768))
"
"$BIN/iqa-bench" "$MODEL" --images "$PHOTOS" --e2e-limit 100 --iters 20 --warmup 3 \
    --json "$RESULTS/deepfeat-lite-cpu.json" --plot "$RESULTS/deepfeat-lite-cpu.png" --markdown -q \
    > "$RESULTS/deepfeat-lite-cpu.md"
cat "$RESULTS/deepfeat-lite-cpu.md"
