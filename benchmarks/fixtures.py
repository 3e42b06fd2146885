"""What the benchmarks measure with, made once and then reused: photo folders, untrained models, ports.

Only the runtime, the trainer's checkpoint writer and the export stage are imported, so every venv
that runs a benchmark (the dev one, the serve one) can import this.
"""

from __future__ import annotations

import socket
from pathlib import Path

from qualitynet.runtime.discovery import iter_folder
from qualitynet.trainer.checkpoint import save_untrained_checkpoint
from qualitynet.trainer.demo_dataset import make_photo_folder

__all__ = ["free_port", "photo_folder", "untrained_checkpoint", "untrained_onnx"]


def photo_folder(folder: Path, count: int, size: tuple[int, int] = (1024, 768), quality: int = 90,
                 grain: float = 0.0) -> list[str]:
    """``count`` photo-like JPEGs of ``size`` in ``folder`` (made when fewer are there), sorted.

    Args:
        folder: where they are, or are written.
        count: how many to return.
        size: width and height.
        quality: JPEG quality of new files.
        grain: camera-like sensor grain of new files, in grey levels (see ``make_photo_folder``).
    """
    if len(list(folder.glob("*.jpg"))) < count:
        make_photo_folder(folder, count=count, size=size, quality=quality, grain=grain)
    return sorted(iter_folder(folder))[:count]


def untrained_checkpoint(path: Path, config: str = "small") -> Path:
    """A randomly initialised ``config`` (BatchNorm calibrated on real photos) at ``path``, written once.

    Speed does not depend on the weights, so speed benchmarks use these.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_untrained_checkpoint(path, config)
    return path


def untrained_onnx(folder: Path, config: str = "small") -> Path:
    """``folder/<config>/model.onnx``: :func:`untrained_checkpoint` exported to ONNX once."""
    from qualitynet.export import export_onnx

    checkpoint = untrained_checkpoint(folder / config / "model.pt", config)
    model = checkpoint.with_suffix(".onnx")
    if not model.exists():
        export_onnx(checkpoint, model)
    return model


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
