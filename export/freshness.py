"""Whether an exported artifact still is the export of a checkpoint, by the SHA-256 it records.

Every artifact written by ``iqa-export`` records the SHA-256 of its source checkpoint
(``checkpoint_sha256``: in the ONNX metadata, and in a plan's sidecar). Anything that reuses
an artifact instead of exporting again compares it first: after retraining, the old artifact
is another model.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError
from qualitynet.export.onnx import read_meta

__all__ = ["recorded_checkpoint_sha256", "stale_reason"]


def recorded_checkpoint_sha256(artifact: Path) -> str:
    """The checkpoint SHA-256 an ONNX model or a plan (its sidecar) records ("" if none).

    Raises:
        QualityNetError: the file or its record cannot be read.
    """
    if artifact.suffix.lower() == ".onnx":
        try:
            model = onnx.load(str(artifact), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf raises assorted errors on bad files
            raise QualityNetError(f"{artifact}: not a readable ONNX model ({type(exc).__name__})") from None
        return read_meta(model, str(artifact)).checkpoint_sha256
    return ArtifactMeta.read_sidecar(artifact).checkpoint_sha256


def stale_reason(artifact: Path, checkpoint_sha256: str) -> str | None:
    """Why ``artifact`` is not the export of the checkpoint with this hash, or None when it is."""
    if not artifact.is_file():
        return "it does not exist"
    try:
        recorded = recorded_checkpoint_sha256(artifact)
    except QualityNetError as exc:
        return str(exc)
    if not recorded:
        return "it records no source checkpoint"
    if recorded != checkpoint_sha256:
        return (f"it was exported from another checkpoint (SHA-256 {recorded[:12]}..., "
                f"this one {checkpoint_sha256[:12]}...)")
    return None
