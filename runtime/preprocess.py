"""Image -> network input, exactly as the artifact's :class:`PreprocessCfg` says.

This is the single implementation of preprocessing: the trainer imports it too, so the
tensors a model was trained on and the ones the runtime feeds it cannot drift apart.
Needs only numpy and Pillow.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from qualitynet import artifact
from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError

__all__ = ["INTERPOLATIONS", "crop_boxes", "file_to_inputs", "image_to_inputs", "image_to_tensor", "load_rgb",
           "to_rgb", "view_scaled"]

# The record's filter names (validated at load) as Pillow's resampling filters.
INTERPOLATIONS = {name: Image.Resampling[name.upper()] for name in artifact.INTERPOLATIONS}
_WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, the one way every stage does it.

    - EXIF orientation is applied first.
    - 16/32-bit integer and float greyscale (``I;16``, ``I``, ``F``) is scaled by its
      nominal range (65535 for 16-bit, 255 for ``F`` values in [0, 255]) to 8 bits.
    - Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index) is
      composited over white, which is how a viewer shows it.
    - ``CMYK``, ``YCbCr``, ``L``, ``1``, ``P`` use Pillow's conversion to RGB.
    """
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(values * (255.0 / scale)), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: str | Path | BinaryIO, cfg: PreprocessCfg | None = None) -> Image.Image:
    """Decode a file as ``cfg``'s ``decode`` says and return it as 8-bit RGB.

    Args:
        path: the image file, or an open binary stream of one.
        cfg: the model's preprocessing; ``None`` (or ``decode: full``) decodes at full
            resolution. ``decode: dct`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale straight
            from the DCT (Pillow's draft mode), the smallest scale whose width and height both
            stay >= ``decode_side``; other formats decode in full.

    Raises:
        QualityNetError: the file is missing, unreadable or not an image Pillow can decode.
    """
    draft_size = cfg.decode_side if cfg is not None and cfg.decode == "dct" else None
    try:
        with Image.open(path) as image:
            if draft_size is not None:
                image.draft(None, (draft_size, draft_size))
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise QualityNetError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def image_to_tensor(image: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """Resize, scale and normalise one RGB image or crop into a ``(3, H, W)`` float32 array."""
    if image.mode != "RGB":
        image = to_rgb(image)
    resized = image.resize((cfg.width, cfg.height), INTERPOLATIONS[cfg.interpolation])
    scaled = np.asarray(resized, dtype=np.float32) * np.float32(1.0 / 255.0)
    normalised = (scaled - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def _scaled_size(size: tuple[int, int], cfg: PreprocessCfg) -> tuple[int, int]:
    """The size an image of ``size`` is brought to before its crops are cut (see :class:`PreprocessCfg`)."""
    width, height = size
    if cfg.short_side:
        factor = cfg.short_side / min(width, height)
    else:
        factor = max(1.0, cfg.width / width, cfg.height / height)
    if factor == 1.0:
        return size
    return max(cfg.width, round(width * factor)), max(cfg.height, round(height * factor))


def crop_boxes(size: tuple[int, int], cfg: PreprocessCfg) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
    """Where a ``crops`` view cuts an image of ``size`` (width, height).

    Returns:
        The size the image is first brought to, and one ``(left, top, right, bottom)`` box
        per name in ``cfg.crops``, in that order.
    """
    scaled = _scaled_size(size, cfg)
    boxes = []
    for name in cfg.crops:
        fx, fy = artifact.CROP_ANCHORS[name]
        left, top = int(fx * (scaled[0] - cfg.width)), int(fy * (scaled[1] - cfg.height))
        boxes.append((left, top, left + cfg.width, top + cfg.height))
    return scaled, boxes


def image_to_inputs(image: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    """An image as the network's inputs for ``cfg``'s view: ``(K, 3, H, W)`` float32.

    ``K`` is :attr:`PreprocessCfg.inputs_per_image`: 1 for ``resize`` (the whole image
    resized), one per crop for ``crops``; the image's score is the mean of the K scores.
    A crop of an image brought to another scale is resized straight from its box in the
    image (Pillow's ``resize(box=)``: the same filter taps as resizing the whole image and
    cutting the crop, up to float rounding, a grey level on a few pixels), so only the
    pixels the crops need are resampled.
    """
    if image.mode != "RGB":
        image = to_rgb(image)
    if cfg.view == "resize":
        return image_to_tensor(image, cfg)[None]
    scaled, boxes = crop_boxes(image.size, cfg)
    fx, fy = image.width / scaled[0], image.height / scaled[1]
    size, resample = (cfg.width, cfg.height), INTERPOLATIONS[cfg.interpolation]
    crops = [image.crop(box) if scaled == image.size else
             image.resize(size, resample, box=(box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy))
             for box in boxes]
    return np.stack([image_to_tensor(crop, cfg) for crop in crops])


def view_scaled(image: Image.Image, cfg: PreprocessCfg) -> Image.Image:
    """The whole image brought to the scale a ``crops`` view cuts its crops at (see :func:`crop_boxes`),
    with the view's filter; unchanged for ``resize`` and native-resolution crops that fit."""
    scaled = crop_boxes(image.size, cfg)[0] if cfg.view == "crops" else image.size
    return image if scaled == image.size else image.resize(scaled, INTERPOLATIONS[cfg.interpolation])


def file_to_inputs(path: str | Path | BinaryIO, cfg: PreprocessCfg) -> np.ndarray:
    """Decode a file and preprocess it, both as ``cfg`` says: ``(K, 3, H, W)`` float32 (see
    :func:`load_rgb` and :func:`image_to_inputs`). The one path from a file to a network input.

    Raises:
        QualityNetError: the file cannot be decoded.
    """
    return image_to_inputs(load_rgb(path, cfg), cfg)
