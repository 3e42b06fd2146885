"""The Python API: score files, folders or preprocessed arrays with an exported model.

Example:
    >>> from qualitynet.runtime import Scorer
    >>> with Scorer("model.onnx") as scorer:               # or model.plan
    ...     for record in scorer.score_folder("photos/"):
    ...         print(record.path, record.score, record.error)

Decoding runs in worker processes started with ``forkserver`` (``spawn`` on Windows), so a
script that uses ``workers > 0`` needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError
from qualitynet.runtime.decode_pool import (
    FAST_DECODE_DEFAULT,
    Decoded,
    DecodePool,
    decode_path,
    default_workers,
    with_decode_override,
)
from qualitynet.runtime.discovery import iter_folder
from qualitynet.runtime.int8_fit import int8_concerns
from qualitynet.runtime.nvimgcodec_decode import DecodeAgreement, NvImageCodecPool, decode_agreement
from qualitynet.runtime.preprocess import image_to_inputs
from qualitynet.runtime.runner import BaseRunner, runner_for
from qualitynet.runtime.types import ScoreRecord

__all__ = ["DECODER_CHOICES", "Scorer"]

DECODER_CHOICES = ("pillow", "nvimgcodec", "nvimgcodec-cpu")

logger = logging.getLogger(__name__)


class Scorer:
    """Loads an exported model once and scores images on its MOS scale.

    Args:
        model_path: ``.onnx`` (ONNX Runtime) or ``.plan`` (TensorRT, sidecar next to it).
        provider: ONNX Runtime provider (``tensorrt``, ``cuda``, ``cpu``); ``None`` for the best present.
        threads: ONNX Runtime intra-op threads; ``None`` lets it choose.
        batch_size: network inputs per inference call (with a crops view, whole images' crops:
            ``batch_size // crops`` images, at least one).
        workers: decode processes; ``None``: :func:`~qualitynet.runtime.decode_pool.default_workers`,
            0 to decode in this process.
        fast_decode: None decodes as the model's record says; True/False override it with
            DCT-scaled / full JPEG decoding (see :func:`~qualitynet.runtime.decode_pool.with_decode_override`).
        allow_host_code: let the full TensorRT run the lean runtime embedded in a plan built
            ``--version-compatible``: code from the plan file, so only for plans you trust.
        decoder: ``pillow`` (the record's decode, in ``workers`` processes), ``nvimgcodec`` (JPEGs
            decoded on the GPU by nvJPEG, batched) or ``nvimgcodec-cpu`` (nvImageCodec's CPU codec);
            see :mod:`~qualitynet.runtime.nvimgcodec_decode` and :meth:`check_decoder`.

    With a crops view (see :class:`~qualitynet.artifact.PreprocessCfg`) an image's score is
    the mean of its crops' scores.

    Raises:
        QualityNetError: the model cannot be loaded (the message says why and what to do), or
            ``fast_decode`` does not apply to its view.
    """

    def __init__(self, model_path: str | Path, *, provider: str | None = None, threads: int | None = None,
                 batch_size: int = 32, workers: int | None = None, fast_decode: bool | None = FAST_DECODE_DEFAULT,
                 allow_host_code: bool = False, decoder: str = "pillow") -> None:
        if decoder not in DECODER_CHOICES:
            raise QualityNetError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODER_CHOICES)}")
        self.decoder = decoder
        self.batch_size = max(1, batch_size)
        self.fast_decode = fast_decode
        self._pool: DecodePool | NvImageCodecPool | None = None
        self.runner: BaseRunner = runner_for(model_path, provider, threads, allow_host_code)
        self.workers = default_workers(self.runner.runs_on_cpu) if workers is None else workers
        self.runner.shares_cpus = decoder == "pillow" and self.workers > 0
        self.runner.activate()
        try:
            with_decode_override(self.meta.preprocess, fast_decode)
        except QualityNetError as exc:
            self.runner.deactivate()
            raise QualityNetError(f"{model_path}: {exc}") from None
        if decoder != "pillow":
            try:
                self._decode_pool()
            except QualityNetError:
                self.runner.deactivate()
                raise
        if self.meta.precision == "int8":
            for concern in int8_concerns(self.meta.extra.get("int8", {})):
                logger.warning("%s: %s", model_path, concern)

    @property
    def meta(self) -> ArtifactMeta:
        """The model's artifact record (preprocessing, score scale, precision, versions)."""
        return self.runner.meta

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A decoded image as the model's ``(K, 3, H, W)`` inputs (any mode; EXIF orientation applied);
        K is 1 for the whole-image view, one per crop for a crops view."""
        return image_to_inputs(image, self.meta.preprocess)

    def score_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Scores of a preprocessed ``(N, 3, H, W)`` float32 batch, on the MOS scale.

        Args:
            batch: any N; run ``batch_size`` at a time.

        Returns:
            float64 scores of shape ``(N,)``.
        """
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        units = [self.runner.infer(batch[i: i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        unit = np.concatenate(units) if units else np.empty(0, np.float32)
        return np.asarray(self.meta.score_scale.to_mos(unit.astype(np.float64)))

    def warm_up(self) -> None:
        """Start the decode workers and run one inference at ``batch_size``, so that the first
        batch of real work costs what the others do (benchmarks call this before the clock)."""
        self._decode_pool().start()
        cfg = self.meta.preprocess
        self.runner.infer(np.zeros((self.batch_size, 3, cfg.height, cfg.width), np.float32))

    def score_batches(self, paths: Iterable[str | Path]) -> Iterator[list[ScoreRecord]]:
        """Score files, yielding the records of each batch in input order as it finishes.

        Bad files give a record with an error instead of stopping. Memory stays bounded: the
        paths are consumed as decoding proceeds.
        """
        pool = self._decode_pool()
        images_per_batch = max(1, self.batch_size // self.meta.preprocess.inputs_per_image)
        items: list[Decoded] = []
        for item in pool.imap(str(p) for p in paths):
            items.append(item)
            if len(items) == images_per_batch:
                yield self.score_decoded(items)
                items = []
        if items:
            yield self.score_decoded(items)

    def score_paths(self, paths: Iterable[str | Path]) -> Iterator[ScoreRecord]:
        """Score files; one :class:`ScoreRecord` per path, in order (a generator: wrap in ``list()``)."""
        for batch in self.score_batches(paths):
            yield from batch

    def score_folder(self, folder: str | Path, recursive: bool = True) -> Iterator[ScoreRecord]:
        """Score every image file in a folder (see :func:`~qualitynet.runtime.discovery.iter_folder`)."""
        return self.score_paths(iter_folder(folder, recursive))

    def _decode_pool(self) -> DecodePool | NvImageCodecPool:
        if self._pool is None:
            if self.decoder == "pillow":
                prefetch = 2 * self.batch_size + 2 * self.workers
                self._pool = DecodePool(self.meta.preprocess, self.workers, self.fast_decode, prefetch)
            else:
                kind = "cpu" if self.decoder == "nvimgcodec-cpu" else "gpu"
                self._pool = NvImageCodecPool(self.meta.preprocess, kind, batch=self.batch_size)
        return self._pool

    def check_decoder(self, paths: list[str]) -> DecodeAgreement | None:
        """With an nvImageCodec decoder: score ``paths`` decoded both ways and compare (None with Pillow).

        Raises:
            QualityNetError: the scores move more than the tolerance
                (:data:`~qualitynet.runtime.nvimgcodec_decode.MAX_MEAN_SHIFT` of the MOS range).
        """
        pool = self._pool  # made in __init__ for an nvImageCodec decoder; Pillow's workers are not started here
        if not isinstance(pool, NvImageCodecPool) or not paths:
            return None
        cfg = with_decode_override(self.meta.preprocess, self.fast_decode)
        reference = [decode_path(path, cfg) for path in paths]
        scale = self.meta.score_scale
        agreement = decode_agreement(self.score_decoded, reference, pool.decode_many(paths), scale.high - scale.low)
        logger.info("%s", agreement.describe())
        if agreement.images and not agreement.passed:
            raise QualityNetError(f"{agreement.describe()}: too far from the decode this model was verified with; "
                                  "score with --decoder pillow")
        return agreement

    def score_decoded(self, items: list[Decoded]) -> list[ScoreRecord]:
        """Score decoded items (:func:`~qualitynet.runtime.decode_pool.decode_path` or ``decode_bytes``)
        in one batch; an item that failed to decode, or a non-finite output, gives an error record.

        Each item holds an image's ``(K, 3, H, W)`` inputs; its score is the mean of their K scores.
        """
        inputs = [tensor for _, tensor, _ in items if tensor is not None]
        per_image = self.meta.preprocess.inputs_per_image
        scores = iter(self.score_arrays(np.concatenate(inputs)).reshape(-1, per_image).mean(axis=1) if inputs else ())
        records = []
        for path, tensor, error in items:
            if tensor is None:
                records.append(ScoreRecord(path, None, error))
                continue
            score = float(next(scores))
            if math.isfinite(score):
                records.append(ScoreRecord(path, score))
            else:
                records.append(ScoreRecord(path, None, f"model output is not finite ({score})"))
        return records

    def close(self) -> None:
        """Stop the decode workers and free the model (GPU memory for TensorRT)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self.runner.deactivate()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
