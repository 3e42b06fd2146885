#!/usr/bin/env bash
# BENCHMARKS.md's camera-size end-to-end rows: iqa-bench on 4000x3000 JPEGs with camera-like grain
# (quality 90, generated offline into $WORK) beside the 1024x768 ones, for the small, lite and
# paper configs, into results/camera-<config>-cpu.{md,json}. The models are the ones
# cpu_tables.sh and lite_bench.sh use (run those first). Only the end-to-end rows matter here, so
# model-only points are kept short (--batch-sizes 1, few iterations).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-runs/bench-cpu}"
PHOTOS="$WORK/camera_4000x3000"
COUNT="${COUNT:-24}"
RESULTS=results
BIN=.venv/bin
START=$SECONDS
"$BIN/python" - "$PHOTOS" "$COUNT" <<'PY'
import sys
from pathlib import Path

from qualitynet.trainer.demo_dataset import make_photo_folder

photos, count = Path(sys.argv[1]), int(sys.argv[2])
if len(list(photos.glob("*.jpg"))) < count:
    make_photo_folder(photos, count=count, size=(4000, 3000), quality=90, grain=6.0)
PY
for model in "$WORK/small/model.pt" demo-output/run/model.pt "$WORK/paper/model.pt"; do
    [ -f "$model" ] || { echo "[camera_bench] $model is missing: run cpu_tables.sh and scripts/demo.sh first" >&2; exit 1; }
    name=$("$BIN/python" -c "from qualitynet.trainer.checkpoint import load_checkpoint; print(load_checkpoint('$model').model_config.name)")
    echo "[camera_bench] $name config, $COUNT camera-size JPEGs" >&2
    "$BIN/iqa-bench" "$model" --images "$PHOTOS" --e2e-limit "$COUNT" --batch-sizes 1 --iters 5 --warmup 1 \
        --json "$RESULTS/camera-$name-cpu.json" --markdown -q > "$RESULTS/camera-$name-cpu.md"
    grep "end-to-end" "$RESULTS/camera-$name-cpu.md"
done
echo "[camera_bench] done in $((SECONDS - START)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
