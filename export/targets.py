"""What ``iqa-export`` can write, as data: one :class:`ExportTarget` per file.

A target names its file (after the checkpoint's stem), the option that asks for it, the step
whose time it shares, and where the figures of its check live in ``<model>.export.json``
(``verifications[...]`` for a parity check, ``int8[...]`` for an INT8 gate). The export, its
report, the merge with an earlier report and the CLI summary all read this table, so a new
target is a new entry plus the code that makes its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["TARGETS", "ExportTarget"]


@dataclass(frozen=True)
class ExportTarget:
    """One file of an export.

    Attributes:
        key: its name in ``ExportResult.files`` and in the report's ``files``.
        suffix: its file name after the checkpoint's stem, e.g. ``.fp16.onnx``.
        option: the ``iqa-export`` option that asks for it (``""``: always written).
        step: its entry in the report's ``seconds`` (several targets may share one step).
        section: the report section holding its check's figures, ``verifications`` or ``int8``.
        figures: its entry in that section.
    """

    key: str
    suffix: str
    option: str
    step: str
    section: str
    figures: str

    def path(self, folder: Path, stem: str) -> Path:
        """Where this target of the checkpoint ``stem`` goes in ``folder``."""
        return folder / f"{stem}{self.suffix}"


TARGETS: dict[str, ExportTarget] = {target.key: target for target in (
    ExportTarget("onnx", ".onnx", "", "onnx", "verifications", "onnx"),
    ExportTarget("fp16_onnx", ".fp16.onnx", "--fp16", "fp16", "verifications", "fp16_onnx"),
    ExportTarget("plan", ".plan", "--fp16", "tensorrt", "verifications", "plan"),
    ExportTarget("int8_onnx", ".int8.onnx", "--int8", "int8", "int8", "cpu"),
    ExportTarget("int8_trt_onnx", ".int8.trt.onnx", "--int8", "int8", "int8", "tensorrt"),
    ExportTarget("int8_plan", ".int8.plan", "--int8", "int8", "int8", "tensorrt_plan"),
)}
