"""Helpers of the runtime tests: the photos of a folder, PyTorch eager reference scores, crafted PNGs."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qualitynet.runtime.preprocess import image_to_tensor, load_rgb
from qualitynet.trainer.checkpoint import load_checkpoint

__all__ = ["bomb_png", "kill_after_rows", "photo_paths", "repeated_folder", "torch_unit_scores"]


def kill_after_rows(command: list[str], out: Path, rows: int = 6, timeout: float = 60) -> None:
    """Start ``command`` (an ``iqa-run`` writing ``out``) and SIGKILL it once ``out`` holds ``rows``
    lines; fails unless it really was killed part-way."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= rows:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the first run must be killed part-way"


def repeated_folder(source: Path, folder: Path, times: int) -> list[str]:
    """Fill a new ``folder`` with ``times`` copies of every file of ``source`` (``NN_name``); return them sorted."""
    folder.mkdir()
    for i in range(times):
        for photo in sorted(source.iterdir()):
            shutil.copy(photo, folder / f"{i:02d}_{photo.name}")
    return sorted(str(p) for p in folder.iterdir())


def photo_paths(folder: Path) -> list[Path]:
    """The photos of a folder, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def torch_unit_scores(checkpoint: Path, paths: Sequence[Path | str], fp16_input: bool = False) -> np.ndarray:
    """PyTorch eager scores (unit scale) of files, preprocessed the trainer's way.

    Args:
        checkpoint: the ``.pt``.
        paths: image files.
        fp16_input: round the input tensors to FP16 first (to measure the model's FP16 noise floor).
    """
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model()
    batch = np.stack([image_to_tensor(load_rgb(p), ckpt.preprocess) for p in paths])
    if fp16_input:
        batch = batch.astype(np.float16).astype(np.float32)
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy().reshape(-1)


def bomb_png(path: Path, side: int = 30000) -> None:
    """A tiny PNG whose header claims ``side x side`` pixels (30000: over Pillow's bomb error limit;
    10000: between its warning and error limits)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
