#!/usr/bin/env bash
# Reproduce BENCHMARKS.md's CPU figures into results/, self-contained and offline
# (run from anywhere; about 15-20 minutes on the 2-core VM, 3 of them training the demo model):
#   small-cpu.{md,json,png}    iqa-bench, demo-trained small config, 200 JPEGs 1024x768
#   paper-cpu.{md,json,png}    iqa-bench, paper config (random weights), 100 of the same JPEGs
#   runtime-cpu.json           iqa-run vs the naive loop, decode-only rates, fast-decode effect
# Everything is made in $WORK (default runs/bench-cpu): the venv if missing (scripts/setup-venv.sh),
# the small model (trained by `iqa-demo --config small`), the JPEGs, the paper checkpoint.
# Artifacts are reused only while they record the checkpoint's SHA-256 (iqa-bench checks).
# {small,paper}-cpu.compare.md put the figures results/ held before this run (or, with BASELINE=<git ref>,
# those committed at that ref) beside the new ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${WORK:-runs/bench-cpu}"
# Where iqa-bench runtime looks for its JPEGs, so that they are generated once for all three.
PHOTOS="$WORK/runtime/photos_1024x768"
RESULTS=results
BIN=.venv/bin
START=$SECONDS
[ -x "$BIN/iqa-bench" ] || source scripts/setup-venv.sh
mkdir -p "$WORK/small" "$WORK/paper" "$RESULTS"
if [ ! -f "$WORK/demo/run/model.pt" ]; then
    echo "[cpu_tables] training the small model with iqa-demo (a few minutes)" >&2
    "$BIN/iqa-demo" --config small --out "$WORK/demo" -q > "$WORK/demo.log"
fi
cmp -s "$WORK/demo/run/model.pt" "$WORK/small/model.pt" || cp "$WORK/demo/run/model.pt" "$WORK/small/model.pt"
"$BIN/iqa-bench" photos "$PHOTOS" --count 200
"$BIN/iqa-bench" untrained "$WORK/paper/model.pt" --config qualitynet
for name in small paper; do  # the figures before this run, for the comparison at the end
    if [ -n "${BASELINE:-}" ]; then
        git show "$BASELINE:results/$name-cpu.json" > "$WORK/$name-cpu.before.json" 2>/dev/null \
            || git show "$BASELINE:benchmarks/results/$name-cpu.json" > "$WORK/$name-cpu.before.json"
    elif [ -f "$RESULTS/$name-cpu.json" ]; then
        cp "$RESULTS/$name-cpu.json" "$WORK/$name-cpu.before.json"
    fi
done
echo "[cpu_tables] small config" >&2
"$BIN/iqa-bench" "$WORK/small/model.pt" --images "$PHOTOS" --iters 200 --warmup 10 \
    --json "$RESULTS/small-cpu.json" --plot "$RESULTS/small-cpu.png" --markdown -q > "$RESULTS/small-cpu.md"
echo "[cpu_tables] paper config" >&2
"$BIN/iqa-bench" "$WORK/paper/model.pt" --images "$PHOTOS" --e2e-limit 100 --iters 20 --warmup 3 \
    --json "$RESULTS/paper-cpu.json" --plot "$RESULTS/paper-cpu.png" --markdown -q > "$RESULTS/paper-cpu.md"
echo "[cpu_tables] runtime figures" >&2
"$BIN/iqa-bench" runtime --out-dir "$WORK/runtime" --checkpoint "$WORK/small/model.pt" > /dev/null
cp "$WORK/runtime/runtime_throughput.json" "$RESULTS/runtime-cpu.json"
cat "$RESULTS/small-cpu.md" "$RESULTS/paper-cpu.md"
for name in small paper; do
    [ -f "$WORK/$name-cpu.before.json" ] || continue
    "$BIN/iqa-bench" compare "$WORK/$name-cpu.before.json" "$RESULTS/$name-cpu.json" > "$RESULTS/$name-cpu.compare.md"
done
echo "[cpu_tables] done in $((SECONDS - START)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
