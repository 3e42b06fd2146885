"""Whether an INT8 model suits this CPU, and passed its accuracy gate: what its record says.

Which integer dot-product instructions a CPU has decides how INT8 models are quantized.

ONNX Runtime's x86 INT8 kernels multiply unsigned 8-bit activations by signed 8-bit
weights. Without VNNI (AVX2, AVX-512 before Cascade Lake) the multiply-add saturates at 16
bits, so ONNX Runtime's documentation asks for ``reduce_range`` (7-bit weights) with
per-channel weights there; with VNNI (``avx512_vnni``, ``avx_vnni``) full 8-bit weights are
exact. A model quantized for one class can saturate, or give up precision for nothing, on
the other: ``iqa-export`` records the class and ``iqa-run`` warns on a mismatch.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

__all__ = ["ARM", "X86_NO_VNNI", "X86_VNNI", "cpu_flags", "int8_class", "int8_concerns", "int8_mismatch"]

X86_VNNI = "x86-vnni"
X86_NO_VNNI = "x86-no-vnni"
ARM = "arm"
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags Linux reports for the first CPU (empty where it reports none)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def int8_class(flags: set[str] | None = None, machine: str | None = None) -> str:
    """:data:`X86_VNNI`, :data:`X86_NO_VNNI` or :data:`ARM` for this CPU (or the given flags and machine).

    A CPU whose flags cannot be read counts as x86 without VNNI: ``reduce_range`` is the
    choice that is safe everywhere.
    """
    if (machine or platform.machine()).lower() in ("arm64", "aarch64", "armv8l"):
        return ARM
    flags = cpu_flags() if flags is None else flags
    return X86_VNNI if any(flag in flags for flag in _VNNI_FLAGS) else X86_NO_VNNI


def int8_mismatch(built_for: str | None, here: str | None = None) -> str | None:
    """Why an INT8 model quantized for ``built_for`` may misbehave on this CPU, or None when it fits."""
    here = here or int8_class()
    if not built_for or built_for == here or ARM in (built_for, here):
        return None
    if built_for == X86_VNNI:
        return ("it was quantized on a CPU with VNNI (full 8-bit weights), and this CPU has none: its INT8 "
                "multiply-adds may saturate; re-export it here (iqa-export --int8) for this CPU")
    return ("it was quantized for CPUs without VNNI (7-bit weights, reduce_range), and this CPU has VNNI: it runs "
            "correctly but gives up some precision; re-export it here (iqa-export --int8) for full 8-bit weights")


def int8_concerns(record: dict[str, Any], here: str | None = None) -> list[str]:
    """What is wrong with running an INT8 model here, from its record's ``int8`` section (empty: nothing).

    Args:
        record: ``ArtifactMeta.extra["int8"]`` of the model.
        here: this CPU's class (default :func:`int8_class`); only the CPU graph
            (``target: cpu``) is judged by it.
    """
    concerns = []
    gate = record.get("gate")
    if not isinstance(gate, dict):
        concerns.append("it records no INT8 accuracy gate (export it with iqa-export --int8)")
    elif not gate.get("passed"):
        concerns.append(f"it FAILED its INT8 accuracy gate (SROCC {gate.get('srocc')}, max abs error "
                        f"{gate.get('max_abs_mos')} MOS against FP32): its scores are not to be trusted")
    if record.get("target") == "cpu":
        mismatch = int8_mismatch(record.get("instruction_set"), here)
        if mismatch:
            concerns.append(mismatch)
    return concerns
