#!/usr/bin/env bash
# Issue 20's end-to-end targets for the demo's model, in one command: iqa-run's pipeline (the model's
# record followed with no flags: its view, its decode, iqa-run's batch of 32) against the naive
# per-image loop (Pillow full decode, the record's view, PyTorch eager one image at a time), in
# alternating rounds, on 1024x768 JPEGs and on camera-size (4000x3000, grain, quality 90) JPEGs,
# generated offline into $WORK. Model-only points are kept to one short batch size: only the
# end-to-end rows matter here. 96 files per size: three of iqa-run's batches of 32, so that the decoding of
# one batch overlaps the inference of the one before, as on any real folder (24 camera files made one batch:
# all decoded, then all scored, nothing overlapped). Run after `bash scripts/demo.sh` (the model is demo-output/run/model.pt),
# on a quiet machine; writes results/e2e-<size>-demo-cpu.{md,json}.
#   bash benchmarks/scripts/e2e_targets.sh            # about 6 minutes on 2 quiet cores (357 s measured)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL="${MODEL:-demo-output/run/model.pt}"
WORK="${WORK:-runs/e2e-targets}"
ROUNDS="${ROUNDS:-5}"
RESULTS=results
BIN=.venv/bin
START=$SECONDS
[ -f "$MODEL" ] || { echo "[e2e_targets] $MODEL is missing: run bash scripts/demo.sh first" >&2; exit 1; }
mkdir -p "$RESULTS"
"$BIN/python" - "$WORK" <<'PY'
import sys
from pathlib import Path

from qualitynet.trainer.demo_dataset import make_photo_folder

work = Path(sys.argv[1])
for name, count, size, grain in (("1024x768", 96, (1024, 768), 0.0), ("4000x3000", 96, (4000, 3000), 6.0)):
    if len(list((work / name).glob("*.jpg"))) < count:
        make_photo_folder(work / name, count=count, size=size, quality=90, grain=grain)
PY
echo "[e2e_targets] $("$BIN/python" -c "from qualitynet.trainer.checkpoint import load_checkpoint as l; print(l('$MODEL').preprocess.describe())")" >&2
for size in 1024x768 4000x3000; do
    echo "[e2e_targets] $size, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "$BIN/iqa-bench" "$MODEL" --images "$WORK/$size" --e2e-batch-size 32 --e2e-rounds "$ROUNDS" \
        --batch-sizes 1 --iters 5 --warmup 1 --json "$RESULTS/e2e-$size-demo-cpu.json" --markdown -q \
        > "$RESULTS/e2e-$size-demo-cpu.md"
    grep "end-to-end" "$RESULTS/e2e-$size-demo-cpu.md"
done
echo "[e2e_targets] done in $((SECONDS - START)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
