#!/usr/bin/env bash
# Held-out accuracy of the offline model families on the demo's data (docs/models.md): lite, lite02,
# deepfeat-lite and mlms-lite, each trained by iqa-train with its recipe (--pretrained --freeze-backbones)
# on the same photos (iqa-demo-data's default: the demo's camera-like frames at short side 768) and the same
# seed-0 split, whose test split is 3 scenes never seen in training. One training at a time, niced; each
# run's wall time goes to RUN/seconds, its within-image SROCC (iqa-eval on the test split) to RUN/eval.json.
# Usage: benchmarks/scripts/models_compare.sh [OUT] [CONFIGS...]   (default: runs/models-compare, all four)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/models-compare}"
shift $(($# > 0 ? 1 : 0))
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(lite02 deepfeat-lite mlms-lite lite)
BIN=.venv/bin
declare -A EPOCHS=([lite]="--epochs 60" [lite02]="--epochs 60" [mlms-lite]="--epochs 40")  # deepfeat: one fit
mkdir -p "$OUT"
[ -f "$OUT/data/scores.csv" ] || "$BIN/iqa-demo-data" "$OUT/data" >/dev/null
for config in "${CONFIGS[@]}"; do
    run="$OUT/$config"
    start=$SECONDS
    nice -n 10 "$BIN/iqa-train" --dataset csv --csv "$OUT/data/scores.csv" --config "$config" --pretrained \
        --freeze-backbones ${EPOCHS[$config]:-} --quiet --out "$run" >/dev/null
    echo $((SECONDS - start)) > "$run/seconds"
    nice -n 10 "$BIN/iqa-eval" "$run/model.pt" --dataset csv --csv "$OUT/data/scores.csv" --split test \
        --json "$run/eval.json" --workers 0 --quiet >/dev/null
done
"$BIN/iqa-bench" runs-table "${CONFIGS[@]/#/$OUT/}"
