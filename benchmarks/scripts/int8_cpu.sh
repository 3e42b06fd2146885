#!/usr/bin/env bash
# BENCHMARKS.md's CPU INT8 figures for any trained checkpoint (run from anywhere):
#   benchmarks/scripts/int8_cpu.sh [CHECKPOINT] [DATA_DIR] [NAME]
# CHECKPOINT defaults to the demo's trained small model (demo-output/run/model.pt, from
# `bash scripts/demo.sh`), DATA_DIR to the dataset it was trained on (demo-output/data); the
# gate's held-out photos are the run's TEST split (split.json next to the checkpoint), never
# used for calibration (the default calibration: bundled photos plus crops). NAME (default:
# the checkpoint's config) names the results. Writes into results/:
#   int8-NAME-gate.md      per calibration method: SROCC and max abs error vs FP32 on the
#                          held-out photos, sensitive nodes kept, ORT CPU speed-up at batch 8
#   int8-NAME-acttypes.md  ORT CPU img/s of the CPU graph's candidates: uint8 vs int8 activations
#   int8-NAME-iqa-run.txt  iqa-run end to end, FP32 and INT8, on 100 JPEGs of 1024x768
#   int8-NAME-cpu.{md,json} iqa-bench with the INT8 rows: model-only at batch 1 and 8, and end
#                          to end through the iqa-run pipeline on 100 JPEGs of 1024x768
# Inputs and exports go to $WORK (default runs/int8-NAME).
set -euo pipefail
cd "$(dirname "$0")/../.."
CHECKPOINT="${1:-demo-output/run/model.pt}"
DATA="${2:-demo-output/data}"
BIN=.venv/bin
[ -f "$CHECKPOINT" ] || { echo "$CHECKPOINT not found; run 'bash scripts/demo.sh' first (it trains the small model)" >&2; exit 1; }
NAME="${3:-$("$BIN/python" -c "import sys; from qualitynet.trainer.checkpoint import load_checkpoint; print(load_checkpoint(sys.argv[1]).model_config.name)" "$CHECKPOINT")}"
WORK="${WORK:-runs/int8-$NAME}"
RESULTS=results
mkdir -p "$WORK/heldout" "$RESULTS"
"$BIN/python" - "$CHECKPOINT" "$DATA" "$WORK" <<'PY'
import json
import shutil
import sys
from pathlib import Path

from qualitynet.trainer.demo_dataset import make_photo_folder

checkpoint, data, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
test = json.loads((checkpoint.parent / "split.json").read_text())["test"]
for rel in test:
    source = data / rel
    shutil.copy(source, work / "heldout" / source.name)
print(f"held-out photos (test split): {len(test)}", file=sys.stderr)
if len(list((work / "jpegs").glob("*.jpg"))) < 100:
    make_photo_folder(work / "jpegs", count=100, size=(1024, 768))
PY

GATE="$RESULTS/int8-$NAME-gate.md"
{
  echo "| calibration | graph | held-out photos | SROCC vs FP32 | max abs error (MOS) | mean abs error (MOS) | tensors kept in float | ORT CPU img/s FP32 -> INT8 (batch 8) | gate |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$GATE"
for METHOD in minmax entropy percentile; do
  OUT="$WORK/$METHOD"
  mkdir -p "$OUT"
  cp "$CHECKPOINT" "$OUT/model.pt"
  "$BIN/iqa-export" "$OUT/model.pt" --int8 --calib-method "$METHOD" --photos "$WORK/heldout" -q || true
  "$BIN/python" - "$OUT/model.export.json" "$METHOD" >> "$GATE" <<'PY'
import json
import sys

report, method = json.load(open(sys.argv[1])), sys.argv[2]
for graph in ("cpu", "tensorrt"):
    gate = report.get("int8", {}).get(graph)
    if gate is None:
        print(f"| {method} | {graph} | failed before the gate | | | | | |")
        continue
    speed = gate["speed_img_s"]
    kept = min((p["tensors_in_float"] for p in gate["probes"] if p["passed"]), default=0) if gate["kept_in_float"] else 0
    rate = (f"{speed['fp32']:.0f} -> {speed.get('int8', speed.get('int8_mixed', 0)):.0f}"
            f" ({speed.get('int8', speed.get('int8_mixed', 0)) / speed['fp32']:.2f}x)" if speed else "n/a (TensorRT graph)")
    plain = "" if not gate["kept_in_float"] else f" (plain INT8: {gate['plain']['srocc']:.4f})"
    print(f"| {method} | {gate['model']} | {gate['photos']} | {gate['srocc']:.4f}{plain} | {gate['max_abs_mos']:.3f} "
          f"| {gate['mean_abs_mos']:.3f} | {kept} ({len(gate['kept_in_float'])} nodes) | {rate} "
          f"| {'pass' if gate['passed'] else 'FAIL'}")
PY
done
cat "$GATE"

# Which activation type is fastest on this CPU: the shipped CPU graph against its alternative.
"$BIN/python" - "$WORK/minmax" "$WORK/heldout" > "$RESULTS/int8-$NAME-acttypes.md" <<'PY'
import sys
from pathlib import Path

import onnx

from qualitynet.export.calibration import PhotoDataReader, calibration_inputs
from qualitynet.export.int8 import (Int8Settings, calibrate, cpu_target, preprocess_for_quantization, quantize,
                                   throughput, work_dir)
from qualitynet.export.onnx import read_meta
from qualitynet.export.verify import load_photos

out, heldout = Path(sys.argv[1]), sys.argv[2]
meta = read_meta(onnx.load(str(out / "model.onnx")))
calib, _ = calibration_inputs(None, meta.preprocess)
inputs, _ = load_photos(heldout, meta.preprocess)
print("| ORT CPU graph | img/s, batch 8 | vs FP32 |\n|---|---|---|")
with work_dir() as scratch:
    work = Path(scratch)
    pre = preprocess_for_quantization(out / "model.onnx", work / "pre.onnx")
    fp32 = throughput(out / "model.onnx", inputs, seconds=5.0)
    print(f"| FP32 | {fp32:.0f} | 1.00x |")
    record = Int8Settings().calibration_record(len(calib))
    cache = calibrate(pre, PhotoDataReader(meta.preprocess.input_name, calib), "minmax", work / "cache.json", work)
    for label, machine in (("uint8 activations, int8 weights (x86 default)", "x86_64"),
                           ("int8 activations, int8 weights (ARM default)", "aarch64")):
        path = quantize(pre, work / f"{machine}.onnx", cpu_target(machine), cache, record, meta)
        rate = throughput(path, inputs, seconds=5.0)
        print(f"| {label} | {rate:.0f} | {rate / fp32:.2f}x |")
PY
cat "$RESULTS/int8-$NAME-acttypes.md"

# End to end through iqa-run, FP32 then INT8, twice each (alternating), batch 8: img/s from its summary
for ROUND in 1 2; do
  for MODEL in model.onnx model.int8.onnx; do
    "$BIN/iqa-run" "$WORK/minmax/$MODEL" "$WORK/jpegs" --batch-size 8 -o "$WORK/scores-$MODEL.csv" --overwrite 2>&1 \
      | grep '^scored' | sed "s/^/iqa-run $MODEL, round $ROUND: /"
  done
done | tee "$RESULTS/int8-$NAME-iqa-run.txt"

# iqa-bench with the INT8 rows (model-only and end to end through iqa-run's pipeline)
"$BIN/iqa-bench" "$WORK/minmax/model.pt" --photos "$WORK/heldout" --images "$WORK/jpegs" --batch-sizes 1,8 \
    --iters 50 --warmup 10 --json "$RESULTS/int8-$NAME-cpu.json" --markdown -q > "$RESULTS/int8-$NAME-cpu.md"
cat "$RESULTS/int8-$NAME-cpu.md"
