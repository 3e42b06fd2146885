"""Small file helpers shared by the export steps: writable folders and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qualitynet.errors import QualityNetError

__all__ = ["atomic_write_bytes", "ensure_writable_dir"]


def ensure_writable_dir(folder: Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there (works as root too).

    Raises:
        QualityNetError: the folder cannot be created or written to.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise QualityNetError(
            f"{folder}: output folder is not writable ({exc.strerror or exc}); choose another with --out-dir"
        ) from None
    return folder


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write via a temporary file and a rename, so an interrupt never leaves half a file.

    Raises:
        QualityNetError: the file cannot be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise QualityNetError(f"{path}: cannot write ({exc.strerror or exc})") from None
