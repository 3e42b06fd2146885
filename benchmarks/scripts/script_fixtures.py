"""What the benchmark scripts of this folder share: the photos and the model they measure, made once.

Only the runtime, the trainer's checkpoint writer and the export stage are imported, so every venv
that runs a script (the dev one, the serve one) can import this.
"""

from __future__ import annotations

import socket
from pathlib import Path

from qualitynet.export import export_onnx
from qualitynet.runtime.discovery import iter_folder
from qualitynet.trainer.checkpoint import save_untrained_checkpoint
from qualitynet.trainer.demo_data import make_photo_folder

__all__ = ["REPO", "free_port", "photos", "small_onnx"]

REPO = Path(__file__).resolve().parents[2]


def photos(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    """The benchmark's JPEGs (made once, then reused)."""
    if len(list(folder.glob("*.jpg"))) < count:
        make_photo_folder(folder, count=count, size=size)
    return sorted(iter_folder(folder))[:count]


def small_onnx(out: Path) -> Path:
    """The ``small`` config with random weights, exported to ``out/small/model.onnx`` once (speed does not
    depend on the weights)."""
    checkpoint = out / "small" / "model.pt"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_untrained_checkpoint(checkpoint, "small")
    model = checkpoint.parent / "model.onnx"
    if not model.exists():
        export_onnx(checkpoint, model)
    return model


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
