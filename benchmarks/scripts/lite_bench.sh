#!/usr/bin/env bash
# BENCHMARKS.md's `lite` rows: iqa-bench (model-only and end to end, CPU) on the demo's trained
# lite model (run `bash scripts/demo.sh` first), 100 generated JPEGs of 1024x768, into
# results/lite-cpu.{md,json,png}. Inputs are generated offline into $WORK.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-runs/bench-cpu}"
PHOTOS="$WORK/runtime/photos_1024x768"  # shared with cpu_tables.sh
RESULTS=results
BIN=.venv/bin
MODEL=demo-output/run/model.pt
[ -f "$MODEL" ] || { echo "run 'bash scripts/demo.sh' first (it trains the lite model)" >&2; exit 1; }
mkdir -p "$RESULTS"
"$BIN/iqa-bench" photos "$PHOTOS" --count 200
"$BIN/iqa-bench" "$MODEL" --images "$PHOTOS" --e2e-limit 100 --iters 20 --warmup 3 \
    --json "$RESULTS/lite-cpu.json" --plot "$RESULTS/lite-cpu.png" --markdown -q > "$RESULTS/lite-cpu.md"
cat "$RESULTS/lite-cpu.md"
