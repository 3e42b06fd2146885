#!/usr/bin/env bash
# BENCHMARKS.md's `lite` rows: iqa-bench (model-only and end to end, CPU) on the demo's trained
# lite model (run `bash scripts/demo.sh` first), 100 generated JPEGs of 1024x768, into
# benchmarks/results/lite-cpu.{md,json,png}. Inputs are generated offline into $WORK.
# Any other trained config the same way, e.g. the deep-features model:
#   CONFIG=deepfeat-lite MODEL=runs/gpr/model.pt bash benchmarks/scripts/lite_bench.sh   # -> deepfeat-lite-cpu.*
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-runs/bench-cpu}"
PHOTOS="$WORK/runtime/photos_1024x768"  # shared with cpu_tables.sh
RESULTS=benchmarks/results
BIN=.venv/bin
CONFIG="${CONFIG:-lite}"
MODEL="${MODEL:-demo-output/run/model.pt}"
[ -f "$MODEL" ] || { echo "no $MODEL: run 'bash scripts/demo.sh' first (it trains the lite model), or pass MODEL=" >&2
                     exit 1; }
mkdir -p "$RESULTS"
"$BIN/python" -c "
import sys
from pathlib import Path
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.demo_data import make_photo_folder
name = load_checkpoint('$MODEL').model_config.name
sys.exit(f'$MODEL is the {name} config, not $CONFIG: pass CONFIG={name} or another MODEL') if name != '$CONFIG' else None
if len(list(Path('$PHOTOS').glob('*.jpg'))) < 200:
    make_photo_folder('$PHOTOS', count=200, size=(1024, 768))
"
"$BIN/iqa-bench" "$MODEL" --images "$PHOTOS" --e2e-limit 100 --iters 20 --warmup 3 \
    --json "$RESULTS/$CONFIG-cpu.json" --plot "$RESULTS/$CONFIG-cpu.png" --markdown -q > "$RESULTS/$CONFIG-cpu.md"
cat "$RESULTS/$CONFIG-cpu.md"
