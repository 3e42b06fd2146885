"""What a figure was measured on: CPU, threads, GPU, driver and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

from qualitynet.cpus import usable_cpus

__all__ = ["machine_info"]

_PACKAGES = ("qualitynet", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow",
             "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine_info(threads: int) -> dict[str, Any]:
    """The machine section of a benchmark report.

    Args:
        threads: the intra-op thread count both torch and ONNX Runtime were given.
    """
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cpus": usable_cpus(),  # affinity and cgroup quota: what thread pools are sized from
        "platform": platform.platform(),
        "python": platform.python_version(),
        "threads": {"torch_intra_op": torch.get_num_threads(), "onnxruntime_intra_op": threads},
        "versions": _versions(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "driver": _driver_version(),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info
