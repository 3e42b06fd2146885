"""A small synthetic-distortion IQA dataset made offline from photos that ship with installed packages.

Each source photo is one content group. Four distortion types (JPEG compression, Gaussian
blur, Gaussian noise, contrast loss) are applied at four graded levels to the whole photo
at its own resolution (and, as a scale augmentation, to the photo enlarged 2x, whose
pixels are as smooth as a camera's), and the network-sized crops are cut afterwards
without rescaling: a JPEG block or a noise grain is as many pixels in a training crop as
in a crop of a 12 MP photo. The score is a MOS-like value on 1-5 that falls monotonically
with severity: 5 for the pristine photo, then 4, 3, 2, 1 for levels 1-4. The result is a
generic CSV (``image``, ``score``, ``group``, ``reference``, ``distortion``, ``level``)
that ``iqa-train --dataset csv`` reads; ``reference`` names the crop every distorted
version was cut from (for the within-image SROCC).

Licences of the photos: from scikit-image's documentation, astronaut, hubble_deep_field and
rocket (NASA / SpaceX, public domain); camera, chelsea, coffee, retina, brick, grass, gravel
(CC0); coins and immunohistochemistry ("no known copyright restrictions"). From
scikit-learn's ``datasets/images/README.txt``: china and flower (Flickr photos by
danielbuechele and vultilion, CC BY 2.0). From matplotlib's sample data: grace_hopper (an
official U.S. Navy photograph, public domain).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.runtime.preprocess import view_scaled

__all__ = ["CAMERA_SERIES", "DATASET_SOURCES", "DEMO_SOURCES", "DISTORTIONS", "FRAME_SCALES", "camera_frame",
           "camera_photo", "demo_photo", "make_camera_series", "make_demo_dataset", "make_photo_folder",
           "make_view_dataset", "native_photo", "write_scores_csv"]

# scikit-image's bundled photos (also the export checks' and INT8 calibration's photos)
DEMO_SOURCES = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
    "retina", "coins", "brick", "grass", "gravel", "immunohistochemistry",
)
# every bundled photo the demo dataset draws on: scikit-image's, scikit-learn's, matplotlib's
DATASET_SOURCES = (*DEMO_SOURCES, "china", "flower", "grace_hopper")


def _jpeg(image: Image.Image, quality: float) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _blur(image: Image.Image, sigma: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(sigma))


def _noise(image: Image.Image, sigma: float, seed: int = 0, dtype: type = np.float64) -> Image.Image:
    pixels = np.asarray(image, np.float32)
    noisy = pixels + np.random.default_rng(seed).standard_normal(pixels.shape, dtype) * dtype(sigma)
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


def native_photo(name: str) -> Image.Image:
    """A bundled photo (one of :data:`DATASET_SOURCES`) at its own resolution, as RGB."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image  # the train extra

        return Image.fromarray(load_sample_image(f"{name}.jpg")).convert("RGB")
    if name == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
            return image.convert("RGB")
    from skimage import data  # the train extra

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def demo_photo(name: str, max_side: int = 384) -> Image.Image:
    """A bundled photo as RGB, downscaled so its longer side is ``max_side``."""
    image = native_photo(name)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def write_scores_csv(out: Path, rows: list[dict[str, object]]) -> Path:
    """Write ``out/scores.csv`` (the columns of the first row) and return its path."""
    csv_path = out / "scores.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def _textured_boxes(photo: Image.Image, count: int, side: int) -> list[tuple[int, int, int, int]]:
    """The ``count`` most textured of 9 ``side``-pixel squares (3 x 3 positions, on the 8-pixel JPEG grid).

    Flat squares (a black border, an empty sky) show almost nothing of any distortion, so
    the squares whose luminance varies most are kept, most varied first.
    """
    w, h = photo.size
    xs = sorted({(w - side) * k // 2 // 8 * 8 for k in range(3)})
    ys = sorted({(h - side) * k // 2 // 8 * 8 for k in range(3)})
    grey = np.asarray(photo.convert("L"), np.float32)
    boxes = [(x, y, x + side, y + side) for y in ys for x in xs]
    spread = [float(grey[y0:y1, x0:x1].std()) for x0, y0, x1, y1 in boxes]
    order = sorted(range(len(boxes)), key=lambda i: -spread[i])
    return [boxes[i] for i in order[:count]]


def _scaled(photo: Image.Image, scale: float, side: int) -> Image.Image:
    """``photo`` enlarged ``scale`` times (Lanczos), and at least ``side`` pixels on its shorter side."""
    factor = max(scale, side / min(photo.size))
    if factor == 1:
        return photo
    return photo.resize((round(photo.width * factor), round(photo.height * factor)), Image.Resampling.LANCZOS)


def make_demo_dataset(out_dir: str | Path, sources: tuple[str, ...] = DATASET_SOURCES, side: int = 224,
                      crops: int = 3, scales: tuple[float, ...] = (1.0, 2.0)) -> Path:
    """Write the distorted crops and ``scores.csv`` into ``out_dir``; return the CSV path.

    Every source photo, at each of ``scales`` (1: its own resolution), is distorted whole
    at every level; then ``crops`` squares of ``side`` pixels (the most textured of 9
    positions) are cut from each version without rescaling, so a crop's distortion is
    at the scale it has in a full-size photo. A crop's versions share a ``reference``; a
    photo's crops share a ``group`` (its split). Deterministic: the same call writes the
    same files.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for source in sources:
        for scale in scales:
            photo = _scaled(native_photo(source), scale, side)
            boxes = _textured_boxes(photo, crops, side)
            variants = [("pristine", 0, photo)]
            for name, (distort, levels) in DISTORTIONS.items():
                variants += [(name, level, distort(photo, value)) for level, value in enumerate(levels, 1)]
            for name, level, image in variants:
                for number, box in enumerate(boxes):
                    reference = f"{source}_x{scale:g}_{number}"
                    rel = f"images/{reference}_{name}_{level}.png"
                    image.crop(box).save(out / rel)
                    rows.append({"image": rel, "score": 5.0 - level, "group": source, "reference": reference,
                                 "distortion": name, "level": level})
    return write_scores_csv(out, rows)


# The camera-like frames of the view-scale data, in multiples of the view's short side: 2x, so a frame of
# 1536 pixels brought to 768 (a 4000x3000 photo is ~4x; frames at 4x too cost 4x the generation time, see
# docs "Choosing the lite recipe").
FRAME_SCALES = (2.0,)


def camera_frame(photo: Image.Image, short_side: int, grain: float = 2.0, seed: int = 1) -> Image.Image:
    """``photo`` enlarged (Lanczos, aspect kept) until its shorter side is ``short_side``, with sensor-like
    grain (Gaussian, ``grain`` grey levels): the bundled photos as a camera's smooth, grainy pixels."""
    factor = short_side / min(photo.size)
    frame = photo.resize((round(photo.width * factor), round(photo.height * factor)), Image.Resampling.LANCZOS)
    return _noise(frame, grain, seed, np.float32) if grain > 0 else frame


def make_view_dataset(out_dir: str | Path, cfg: PreprocessCfg, sources: tuple[str, ...] = DATASET_SOURCES,
                      frame_scales: tuple[float, ...] = FRAME_SCALES, grain: float = 2.0) -> Path:
    """Demo data at the scale a ``crops`` view scores: write the images and ``scores.csv`` into ``out_dir``.

    Every source photo becomes a camera-like frame (:func:`camera_frame`) whose short side is
    ``cfg.short_side`` times each of ``frame_scales``; the frame is distorted whole at that size
    (:data:`DISTORTIONS`; blur sigmas times the frame scale, so a level blurs the scored image
    alike at every frame scale), then brought to the view's scale exactly as the runtime
    brings a photo there (:func:`qualitynet.runtime.preprocess.view_scaled`) and saved as PNG.
    A JPEG block, a noise grain or a blur is thus what it is in a camera photo of that size
    scored with ``cfg``, and training with ``cfg`` cuts the same crops the runtime will. One
    image per version; ``reference`` is the frame (``photo_fSCALE``), ``group`` the photo.
    Deterministic: the same call writes the same files.

    Raises:
        QualityNetError: ``cfg`` is not a crops view at a stated short side.
    """
    if cfg.view != "crops" or not cfg.short_side:
        raise QualityNetError(f"demo data at the view's scale needs a crops view at a stated short side, not "
                              f"{cfg.describe()}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for source in sources:
        photo = native_photo(source)
        for scale in frame_scales:
            frame = camera_frame(photo, round(cfg.short_side * scale), grain)
            reference = f"{source}_f{scale:g}"
            variants = [("pristine", 0, frame)]
            for name, (distort, levels) in DISTORTIONS.items():
                factor = scale if name == "blur" else 1.0
                apply = functools.partial(_noise, dtype=np.float32) if name == "noise" else distort  # 12 MP: float32
                variants += [(name, level, apply(frame, value * factor)) for level, value in enumerate(levels, 1)]
            for name, level, image in variants:
                rel = f"images/{reference}_{name}_{level}.png"
                view_scaled(image, cfg).save(out / rel, compress_level=1)
                rows.append({"image": rel, "score": 5.0 - level, "group": source, "reference": reference,
                             "distortion": name, "level": level})
    return write_scores_csv(out, rows)


# series of camera-size JPEGs, worst first: JPEG qualities, and noise sigmas (saved at quality 95)
CAMERA_SERIES: dict[str, tuple[int, ...]] = {
    "jpeg": (8, 12, 20, 30, 45, 65, 80, 95),
    "noise": (40, 24, 14, 8, 4, 0),
}


def camera_photo(name: str, size: tuple[int, int] = (4000, 3000), grain: float = 2.0) -> Image.Image:
    """A bundled photo as a camera-size frame: cut to ``size``'s aspect, enlarged (Lanczos), with sensor-like grain.

    The bundled photos are at most 1411 pixels wide, so the frame's pixels are smoother than
    a camera's; the grain (Gaussian, ``grain`` grey levels) keeps them from being flat.
    """
    photo = native_photo(name)
    w, h = photo.size
    aspect = size[0] / size[1]
    cut_w, cut_h = (min(w, round(h * aspect)), min(h, round(w / aspect)))
    left, top = (w - cut_w) // 2, (h - cut_h) // 2
    frame = photo.crop((left, top, left + cut_w, top + cut_h)).resize(size, Image.Resampling.LANCZOS)
    return _noise(frame, grain, seed=1) if grain > 0 else frame


def make_camera_series(out_dir: str | Path, sources: tuple[str, ...], size: tuple[int, int] = (4000, 3000),
                       grain: float = 2.0) -> Path:
    """Write camera-size JPEG series of ``sources`` (:data:`CAMERA_SERIES`) and their ``scores.csv``; return it.

    Each photo becomes a :func:`camera_photo` frame, saved once per JPEG quality and once
    per added noise level (at quality 95). Within a series the score rises from 1 (worst)
    to 5 (best) in equal steps; ``reference`` is ``photo_series``, so the within-image SROCC
    ranks each series of each photo, and ``group`` is the photo.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for source in sources:
        frame = camera_photo(source, size, grain)
        for series, values in CAMERA_SERIES.items():
            for rank, value in enumerate(values):
                image = _noise(frame, value, seed=2) if series == "noise" and value else frame
                rel = f"images/{source}_{series}_{value}.jpg"
                image.save(out / rel, "JPEG", quality=value if series == "jpeg" else 95)
                rows.append({"image": rel, "score": 1.0 + 4.0 * rank / (len(values) - 1), "group": source,
                             "reference": f"{source}_{series}", "distortion": series, "level": value})
    return write_scores_csv(out, rows)


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
