"""INT8 calibration data: real photos (and seeded crops of them) through the runtime's preprocessing.

ONNX Runtime's static quantizer reads calibration batches from a ``CalibrationDataReader``;
:class:`PhotoDataReader` is that reader over an array made by :func:`calibration_inputs`,
which decodes and preprocesses with :mod:`qualitynet.runtime.preprocess` (``load_rgb`` and
``image_to_inputs``: the record's decode and view), the one implementation ``iqa-run`` uses,
so the ranges are measured on exactly what the model sees.

By default the bundled photos are split in two fixed halves: :data:`CALIBRATION_SOURCES`
calibrate, :data:`GATE_SOURCES` are held out for the accuracy gate, so the gate never
judges a quantization on the photos that set its ranges. Crops (seeded, so the same photos
and seed give the same inputs and therefore the same scales) multiply the few photos into
varied framings and scales. The bundled photos are all pristine while an IQA model scores
every quality, and ranges measured on pristine photos alone clip the scores of poor ones
(measured: 2.1 MOS max abs error on the demo's held-out photos); so every other crop of a
bundled photo also gets one of the demo distortions (JPEG, blur, noise, contrast) at a
seeded random level.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image

from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.runtime.discovery import expand_photos
from qualitynet.runtime.preprocess import image_to_inputs, load_rgb
from qualitynet.trainer.demo_dataset import DEMO_SOURCES, DISTORTIONS, demo_photo

__all__ = [
    "CALIBRATION_SOURCES",
    "DEFAULT_CALIB_COUNT",
    "GATE_SOURCES",
    "PhotoDataReader",
    "calibration_inputs",
    "photo_inputs",
]

log = logging.getLogger(__name__)

DEFAULT_CALIB_COUNT = 64
CALIBRATION_SOURCES = DEMO_SOURCES[0::2]
GATE_SOURCES = DEMO_SOURCES[1::2]
_CROP_SIDES = (0.4, 0.85)  # a crop's side, as a fraction of the photo's side


def _open_photos(photos: str | Path | Sequence[str | Path] | None, bundled: Sequence[str],
                 cfg: PreprocessCfg) -> tuple[list[Image.Image], list[str]]:
    if photos is None:
        return [demo_photo(name) for name in bundled], list(bundled)
    if isinstance(photos, (str, Path)) and not Path(photos).exists():
        raise QualityNetError(f"{photos}: no such folder or file")
    paths = expand_photos(photos)
    if not paths:
        raise QualityNetError(f"{photos}: no photos found")
    return [load_rgb(path, cfg) for path in paths], paths


def _crop(image: Image.Image, rng: np.random.Generator, distort: bool) -> tuple[Image.Image, str]:
    width, height = image.size
    w = max(8, int(width * rng.uniform(*_CROP_SIDES)))
    h = max(8, int(height * rng.uniform(*_CROP_SIDES)))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    crop, label = image.crop((x, y, x + w, y + h)), f"[{x},{y},{x + w},{y + h}]"
    if distort:
        name = sorted(DISTORTIONS)[int(rng.integers(len(DISTORTIONS)))]
        function, levels = DISTORTIONS[name]
        level = int(rng.integers(len(levels)))
        crop, label = function(crop, levels[level]), f"{label}{name}{level + 1}"
    return crop, label


def photo_inputs(photos: str | Path | Sequence[str | Path] | None, cfg: PreprocessCfg, count: int, seed: int = 0,
                 bundled: Sequence[str] = CALIBRATION_SOURCES) -> tuple[np.ndarray, list[str]]:
    """Each photo whole, then seeded random crops of them in turn, until ``count`` inputs.

    Of the crops of bundled photos (``photos is None``), every other one is also distorted.

    Args:
        photos: a folder, image files, or ``None`` for the bundled photos named in ``bundled``.
        cfg: the model's preprocessing.
        count: how many inputs (photos first; more than the photos means crops, fewer means
            the first ``count`` photos in sorted order).
        seed: seed of the crops.
        bundled: the bundled photos to use when ``photos`` is ``None``.

    Returns:
        ``(count, 3, H, W)`` float32 and one name per input (``photo``, ``photo[x0,y0,x1,y1]``,
        or with a distortion and level appended, ``photo[x0,y0,x1,y1]blur3``).

    Raises:
        QualityNetError: no photos, a photo that cannot be decoded, or ``count < 1``.
    """
    if count < 1:
        raise QualityNetError(f"calibration count {count} must be at least 1")
    images, names = _open_photos(photos, bundled, cfg)
    rng = np.random.default_rng(seed)
    needed = -(-count // cfg.inputs_per_image)  # photos (or crops of them) that give count inputs
    tensors = [image_to_inputs(image, cfg) for image in images[:needed]]
    labels = [Path(name).name for name in names[:needed]]
    while len(tensors) < needed:
        index = (len(tensors) - len(images)) % len(images)
        crop, label = _crop(images[index], rng, distort=photos is None and len(tensors) % 2 == 1)
        tensors.append(image_to_inputs(crop, cfg))
        labels.append(f"{Path(names[index]).name}{label}")
    if cfg.view == "crops":  # each photo gives its view's crops, named photo#crop
        labels = [f"{label}#{crop}" for label in labels for crop in cfg.crops]
    return np.concatenate(tensors)[:count], labels[:count]


def calibration_inputs(photos: str | Path | Sequence[str | Path] | None, cfg: PreprocessCfg,
                       count: int = DEFAULT_CALIB_COUNT, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """The calibration set: ``photos`` (default the bundled :data:`CALIBRATION_SOURCES`) plus crops."""
    inputs, names = photo_inputs(photos, cfg, count, seed, CALIBRATION_SOURCES)
    log.info("calibration: %d inputs from %s (seed %d)", len(inputs), "bundled photos" if photos is None else photos,
             seed)
    return inputs, names


class PhotoDataReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    """Feeds preprocessed photos to ONNX Runtime's calibrator, ``batch_size`` at a time.

    Args:
        input_name: the model's input tensor name.
        inputs: ``(N, 3, H, W)`` float32 from :func:`calibration_inputs`.
        batch_size: photos per calibration batch.
    """

    def __init__(self, input_name: str, inputs: np.ndarray, batch_size: int = 8) -> None:
        self.input_name = input_name
        self.inputs = inputs
        self.batch_size = batch_size
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as ``{input_name: array}``, or ``None`` when all were read."""
        if self._next >= len(self.inputs):
            return None
        batch = self.inputs[self._next:self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: batch}

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._next = 0
