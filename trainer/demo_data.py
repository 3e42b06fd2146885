"""A small synthetic-distortion IQA dataset made offline from scikit-image's bundled photos.

Each source photo is one content group. Four distortion types (JPEG compression, Gaussian
blur, Gaussian noise, contrast loss) are applied at four graded levels; the score is a
MOS-like value on 1-5 that falls monotonically with severity: 5 for the pristine photo,
then 4, 3, 2, 1 for levels 1-4. The result is a generic CSV (``image``, ``score``,
``group``, ``distortion``, ``level``) that ``iqa-train --dataset csv`` reads.

Licences of the photos (from scikit-image's documentation): astronaut, hubble_deep_field
and rocket (NASA / SpaceX, public domain); camera, chelsea, coffee, retina, brick, grass,
gravel (CC0); coins and immunohistochemistry ("no known copyright restrictions").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

__all__ = ["DEMO_SOURCES", "DISTORTIONS", "demo_photo", "make_demo_dataset", "make_photo_folder", "write_scores_csv"]

DEMO_SOURCES = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
    "retina", "coins", "brick", "grass", "gravel", "immunohistochemistry",
)


def _jpeg(image: Image.Image, quality: float) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _blur(image: Image.Image, sigma: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(sigma))


def _noise(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    pixels = np.asarray(image, np.float32)
    noisy = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _contrast(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(factor)


# distortion name -> (function, parameter at levels 1..4, mildest first)
DISTORTIONS: dict[str, tuple[Callable[[Image.Image, float], Image.Image], tuple[float, ...]]] = {
    "jpeg": (_jpeg, (40, 20, 10, 4)),
    "blur": (_blur, (1.0, 2.0, 3.5, 6.0)),
    "noise": (_noise, (8.0, 18.0, 32.0, 55.0)),
    "contrast": (_contrast, (0.6, 0.4, 0.25, 0.12)),
}


def demo_photo(name: str, max_side: int = 384) -> Image.Image:
    """A bundled scikit-image photo as RGB, downscaled so its longer side is ``max_side``."""
    from skimage import data  # the train extra; only the demo needs it

    pixels = getattr(data, name)()
    image = Image.fromarray(pixels).convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _crops(photo: Image.Image, count: int, side: int) -> list[Image.Image]:
    """``count`` square crops of ``side`` pixels spread over the photo (corners, then centre)."""
    w, h = photo.size
    corners = [(0, 0), (w - side, h - side), (w - side, 0), (0, h - side), ((w - side) // 2, (h - side) // 2)]
    return [photo.crop((x, y, x + side, y + side)) for x, y in corners[:count]]


def make_demo_dataset(out_dir: str | Path, sources: tuple[str, ...] = DEMO_SOURCES, side: int = 144,
                      crops: int = 4) -> Path:
    """Write the distorted images and ``scores.csv`` into ``out_dir``; return the CSV path.

    Each source photo gives ``crops`` square crops of ``side`` pixels (different content,
    same group), each distorted at every level. Small images keep the distortions visible
    after the model's resize. Deterministic: the same call writes the same files.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for source in sources:
        for crop_number, crop in enumerate(_crops(demo_photo(source, side * 2), crops, side)):
            variants = [("pristine", 0, crop)]
            for name, (distort, levels) in DISTORTIONS.items():
                variants += [(name, level, distort(crop, value)) for level, value in enumerate(levels, 1)]
            for name, level, image in variants:
                rel = f"images/{source}_{crop_number}_{name}_{level}.png"
                image.save(out / rel)
                rows.append({"image": rel, "score": 5.0 - level, "group": source, "distortion": name,
                             "level": level})
    return write_scores_csv(out, rows)


def write_scores_csv(out: Path, rows: list[dict[str, object]]) -> Path:
    """Write ``out/scores.csv`` (the columns of the first row) and return its path."""
    csv_path = out / "scores.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def make_photo_folder(out_dir: str | Path, count: int = 200, size: tuple[int, int] = (1024, 768),
                      quality: int = 90, sources: tuple[str, ...] = DEMO_SOURCES, grain: float = 0.0) -> list[Path]:
    """Write ``count`` JPEGs of ``size`` cut from the bundled photos, for throughput runs.

    Each file is a different seeded crop, flip and scale of a source photo, resized to
    ``size`` and saved as a baseline JPEG, so decoding costs what a camera JPEG of that size
    costs. ``grain`` adds seeded Gaussian noise of that many grey levels (camera sensor grain,
    which keeps the JPEG's entropy, and so its Huffman decoding cost, at a camera's: upscaled
    photos alone compress far better than camera files).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [demo_photo(s, max_side=2048) for s in sources]
    written = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        crop_w, crop_h = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if grain:
            noisy = np.asarray(image, np.float32) + rng.normal(0.0, grain, (size[1], size[0], 3)).astype(np.float32)
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        path = out / f"photo_{i:04d}.jpg"
        image.save(path, "JPEG", quality=quality)
        written.append(path)
    return written
