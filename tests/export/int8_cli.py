"""``iqa-export --int8`` of a checkpoint, as the export tests of each model family run it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from qualitynet.export.cli import main as export_main


def int8_export(checkpoint: Path, folder: Path, gate_photos: Path) -> tuple[Result, Path]:
    """Run ``iqa-export --int8`` on a copy of ``checkpoint`` alone in ``folder`` with the default gates
    (8 calibration inputs, the gate on ``gate_photos``); return the CLI's result and the copy."""
    copy = folder / "model.pt"
    copy.write_bytes(checkpoint.read_bytes())
    args = [str(copy), "--int8", "--calib-count", "8", "--gate-photos", str(gate_photos)]
    return CliRunner().invoke(export_main, args), copy
