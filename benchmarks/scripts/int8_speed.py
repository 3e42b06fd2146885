"""Where an INT8 model's CPU time goes, and its speed-up over FP32, on this CPU.

    .venv/bin/python benchmarks/scripts/int8_speed.py runs/x/model.onnx [more.onnx ...]

For each FP32 ONNX model with its ``model.int8.onnx`` beside it (``iqa-export --int8``):
ONNX Runtime CPU images/s of both at batch 8, timed in alternating rounds (the ratio
survives a load that changes meanwhile), and ONNX Runtime's own profile of one batch each,
summed by operator type (which kernels run: ``QLinearConv``/``ConvInteger`` mean the
quantized convolutions were fused; ``DequantizeLinear`` + float ``Conv`` mean they were
not). Prints the CPU, its INT8 class and the load average beside the figures.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from qualitynet.export.calibration import calibration_inputs
from qualitynet.export.int8 import SPEED_BATCH, speed_ratio
from qualitynet.export.onnx import read_meta
from qualitynet.runtime.int8_fit import int8_class


def profile(path: Path, batch: np.ndarray) -> Counter[str]:
    """Milliseconds per operator type of one batch (after three untimed ones)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(4):
            session.run(None, {name: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    times: Counter[str] = Counter()
    last_run = max(i for i, event in enumerate(events) if event.get("name") == "model_run")
    first = max((i for i, event in enumerate(events[:last_run]) if event.get("name") == "model_run"), default=0)
    for event in events[first + 1:last_run]:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"] / 1000.0
    return times


def main(paths: list[str]) -> None:
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), "unknown CPU")
    print(f"CPU: {model_name}, {len(os.sched_getaffinity(0))} cores, INT8 class {int8_class()}")
    for fp32 in map(Path, paths):
        int8 = fp32.with_name(fp32.name.removesuffix(".onnx") + ".int8.onnx")
        import onnx

        cfg = read_meta(onnx.load(str(fp32), load_external_data=False)).preprocess
        inputs = calibration_inputs(None, cfg, count=SPEED_BATCH, seed=3)[0]
        load = os.getloadavg()
        fp32_rate, int8_rate = speed_ratio(fp32, int8, inputs, rounds=6, seconds=1.0)
        print(f"\n{fp32}: FP32 {fp32_rate:.1f} img/s, INT8 {int8_rate:.1f} img/s at batch {SPEED_BATCH}: "
              f"{int8_rate / fp32_rate:.2f}x (6 alternating rounds, medians; load average before "
              f"{load[0]:.1f}, after {os.getloadavg()[0]:.1f})")
        for label, path in (("FP32", fp32), ("INT8", int8)):
            times = profile(path, inputs)
            total = sum(times.values())
            top = ", ".join(f"{op} {ms:.0f} ms ({ms / total:.0%})" for op, ms in times.most_common(6))
            print(f"  {label} one batch: {total:.0f} ms in kernels: {top}")


if __name__ == "__main__":
    main(sys.argv[1:])
