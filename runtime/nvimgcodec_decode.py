"""Decoding JPEGs with NVIDIA nvImageCodec: batched, on the GPU (nvJPEG), as an alternative to Pillow.

``pip install 'qualitynet[gpu-decode]'`` brings ``nvidia-nvimgcodec-cu12`` (torch-free; its
CUDA 12 build keeps sm_60/61 code for Pascal cards such as the P5000) and the nvJPEG library it
loads. The ``gpu`` kind decodes with nvJPEG: the hardware decoder where the GPU has one (A100,
H100, ...), its CUDA decoder elsewhere, Huffman decoding on the CPU for small images (nvJPEG's
hybrid backend). The ``cpu`` kind uses nvImageCodec's own libjpeg-turbo codec: its pixels are
Pillow's, so it checks this code path on machines without a GPU.

Only the decode changes: the image is brought to the host and takes the record's view with the
runtime's own resize (:func:`~qualitynet.runtime.preprocess.image_to_inputs`). nvJPEG's pixels
are not libjpeg-turbo's (its chroma upsampling and IDCT differ; fancy upsampling is asked for to
come closer), and it cannot reproduce a record's DCT-scaled decode (``decode: dct``), so scores
move a little: :func:`decode_agreement` measures by how much, and ``iqa-run --decoder nvimgcodec``
refuses to score when a sample of the photos moves more than the tolerance. Files that are not
JPEG, and JPEGs nvImageCodec cannot decode (CMYK, arithmetic coding, ...), go through Pillow as
today.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from PIL import Image

from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.runtime.decode_pool import Decoded, decode_bytes, precheck, with_decode_override
from qualitynet.runtime.preprocess import image_to_inputs
from qualitynet.runtime.types import ScoreRecord

__all__ = ["KINDS", "MAX_MEAN_SHIFT", "DecodeAgreement", "NvImageCodecPool", "decode_agreement", "nvimgcodec_missing"]

KINDS = ("gpu", "cpu")
_JPEG_MAGIC = b"\xff\xd8\xff"
# Largest mean shift of the scores (as a share of the MOS range) that --decoder nvimgcodec accepts on
# its sample; the max and the mean are both reported.
MAX_MEAN_SHIFT = 0.02
INSTALL_HINT = "pip install 'qualitynet[gpu-decode]' (nvidia-nvimgcodec-cu12 and nvidia-nvjpeg-cu12)"


def nvimgcodec_missing() -> str | None:
    """Why nvImageCodec cannot be imported here, or None."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError as exc:
        return f"nvImageCodec is not installed ({exc}); {INSTALL_HINT}"
    return None


def _backends(nvimgcodec: Any, kind: str) -> list[Any]:
    if kind == "cpu":
        return [nvimgcodec.Backend(nvimgcodec.CPU_ONLY)]
    return [nvimgcodec.Backend(nvimgcodec.HW_GPU_ONLY), nvimgcodec.Backend(nvimgcodec.GPU_ONLY),
            nvimgcodec.Backend(nvimgcodec.HYBRID_CPU_GPU)]


class NvImageCodecPool:
    """Decodes paths to a record's ``(K, 3, H, W)`` inputs with nvImageCodec, ``batch`` files per call.

    The same interface as :class:`~qualitynet.runtime.decode_pool.DecodePool` (``start``, ``imap``,
    ``close``), so :class:`~qualitynet.runtime.scorer.Scorer` takes either. Decoding runs in the
    calling process: nvImageCodec spreads a batch over its own threads and the GPU.

    Args:
        cfg: the model's preprocessing (its view; its decode is always full here).
        kind: ``gpu`` (nvJPEG) or ``cpu`` (nvImageCodec's libjpeg-turbo codec).
        batch: files handed to one decode call.
        device_id: the CUDA device for ``gpu``.

    Raises:
        QualityNetError: nvImageCodec is missing, or no decoder of that kind can start (no GPU,
            no nvJPEG library).
    """

    def __init__(self, cfg: PreprocessCfg, kind: str = "gpu", batch: int = 32, device_id: int = 0) -> None:
        if kind not in KINDS:
            raise QualityNetError(f"unknown nvImageCodec kind {kind!r}; choose one of {', '.join(KINDS)}")
        if (missing := nvimgcodec_missing()) is not None:
            raise QualityNetError(missing)
        from nvidia import nvimgcodec

        self.cfg = with_decode_override(cfg, False)
        self.kind = kind
        self.batch = max(1, batch)
        device = nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY if kind == "cpu" else device_id
        try:
            self._decoder = nvimgcodec.Decoder(device_id=device, backends=_backends(nvimgcodec, kind),
                                               options=":fancy_upsampling=1")
        except RuntimeError as exc:
            raise QualityNetError(f"nvImageCodec cannot start a {kind} decoder: {str(exc).splitlines()[0]}; "
                                  "use --decoder pillow") from None
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.SRGB,
                                               allow_any_depth=False, sample_format=nvimgcodec.SampleFormat.I_RGB)

    def start(self) -> None:
        """Nothing to start (the decoder is made in ``__init__``); here for the pool interface."""

    def imap(self, paths: Iterable[str]) -> Iterator[Decoded]:
        """Decode ``paths`` in order, ``batch`` at a time; a bad file yields its error, never raises."""
        iterator = iter(paths)
        while chunk := list(islice(iterator, self.batch)):
            yield from self.decode_many(chunk)

    def decode_many(self, paths: list[str]) -> list[Decoded]:
        """Decode and preprocess ``paths`` in one nvImageCodec call (non-JPEGs and failures through Pillow)."""
        results: list[Decoded | None] = [None] * len(paths)
        contents: list[bytes] = []
        jpegs: list[int] = []
        for i, path in enumerate(paths):
            data, reason = _read(path)
            contents.append(data)
            if reason:
                results[i] = (path, None, reason)
            elif data.startswith(_JPEG_MAGIC):
                jpegs.append(i)
        if jpegs:
            images = self._decoder.decode([contents[i] for i in jpegs], params=self._params)
            for i, image in zip(jpegs, images, strict=True):
                if image is not None:
                    results[i] = self._inputs(paths[i], image)
        # what nvImageCodec did not decode goes through Pillow, from the bytes already read
        return [item if item is not None else decode_bytes(data, self.cfg, name=path)
                for path, data, item in zip(paths, contents, results, strict=True)]

    def _inputs(self, path: str, image: Any) -> Decoded:
        pixels = np.asarray(image.cpu())
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            return path, None, f"nvImageCodec gave {pixels.dtype} pixels of shape {pixels.shape}, not 8-bit RGB"
        return path, image_to_inputs(Image.fromarray(pixels, "RGB"), self.cfg), ""

    def close(self) -> None:
        """Release the decoder (its GPU memory)."""
        self._decoder = None


def _read(path: str) -> tuple[bytes, str]:
    reason = precheck(path)
    if reason:
        return b"", reason
    try:
        with open(path, "rb") as file:
            return file.read(), ""
    except OSError as exc:
        return b"", f"cannot read file ({exc.strerror or exc})"


@dataclass(frozen=True)
class DecodeAgreement:
    """How far scores move when nvImageCodec decodes instead of the record's Pillow decode (MOS scale)."""

    images: int
    max_abs: float
    mean_abs: float
    score_range: float

    @property
    def passed(self) -> bool:
        """Whether the mean shift stays within :data:`MAX_MEAN_SHIFT` of the MOS range."""
        return self.images > 0 and self.mean_abs <= MAX_MEAN_SHIFT * self.score_range

    def describe(self) -> str:
        """One line for logs and errors."""
        return (f"nvImageCodec vs Pillow decode on {self.images} images: mean shift {self.mean_abs:.4f}, max "
                f"{self.max_abs:.4f} MOS (tolerance: mean <= {MAX_MEAN_SHIFT * self.score_range:.4f}, "
                f"{MAX_MEAN_SHIFT:.0%} of the MOS range)")


def decode_agreement(score: Callable[[list[Decoded]], list[ScoreRecord]], reference: list[Decoded],
                     candidate: list[Decoded], score_range: float) -> DecodeAgreement:
    """Compare the scores of the same images decoded two ways (only images both decoded).

    Args:
        score: the model, decoded items -> one record per image (``Scorer.score_decoded``: a crops
            view's score is the mean of its crops').
        reference / candidate: the same paths decoded by Pillow and by nvImageCodec.
        score_range: the MOS range's width (the tolerance is a share of it).
    """
    pairs = [(a, b) for a, b in zip(reference, candidate, strict=True) if a[1] is not None and b[1] is not None]
    if not pairs:
        return DecodeAgreement(0, float("nan"), float("nan"), score_range)

    def image_scores(items: list[Decoded]) -> np.ndarray:
        return np.array([np.nan if r.score is None else r.score for r in score(items)], np.float64)

    shift = np.abs(image_scores([a for a, _ in pairs]) - image_scores([b for _, b in pairs]))
    return DecodeAgreement(len(pairs), float(shift.max()), float(shift.mean()), score_range)
