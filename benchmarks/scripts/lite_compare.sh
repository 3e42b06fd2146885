#!/usr/bin/env bash
# The lite config's accuracy on the demo data (docs/models.md, "The lite config"): backbone pairs
# Lite0+Lite1 (`lite`) and Lite0+Lite2 (`lite02`) with frozen backbones, and `lite` fine-tuned
# end to end. Each run's test split is 3 scenes never seen in training (the demo's held-out
# photos); metrics.json holds the figures after and before the MOS mapping.
# Usage: benchmarks/scripts/lite_compare.sh [OUT] [FINE_TUNE_EPOCHS]   (default: runs/lite-compare, 4)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/lite-compare}"
FINE_TUNE_EPOCHS="${2:-4}"
BIN=.venv/bin
mkdir -p "$OUT"
[ -f "$OUT/data/scores.csv" ] || "$BIN/iqa-demo-data" "$OUT/data" >/dev/null
common=(--dataset csv --csv "$OUT/data/scores.csv" --pretrained --quiet)
timed() {  # NAME ARGS...: train into $OUT/NAME, record the wall time
  local name=$1; shift
  local start=$SECONDS
  "$BIN/iqa-train" "${common[@]}" "$@" --out "$OUT/$name" >/dev/null
  echo $((SECONDS - start)) > "$OUT/$name/seconds"
}
timed lite-frozen --config lite --freeze-backbones --epochs 60 --lr 1e-3
timed lite02-frozen --config lite02 --freeze-backbones --epochs 60 --lr 1e-3
timed lite-finetuned --config lite --train-backbones --lr 1e-4 --epochs "$FINE_TUNE_EPOCHS"
"$BIN/iqa-bench" runs-table "$OUT/lite-frozen" "$OUT/lite02-frozen" "$OUT/lite-finetuned"
