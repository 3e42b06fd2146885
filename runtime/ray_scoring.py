"""Batch scoring on a Ray cluster with Ray Data: the :class:`Scorer` in an actor pool.

The shape of Ray's own batch-inference examples: a callable class loads the model once per
actor and scores one batch per call; ``Dataset.map_batches`` runs a pool of them. Each actor
holds a :class:`~qualitynet.runtime.scorer.Scorer`, so decoding, preprocessing, batching and
the runners are exactly ``iqa-run``'s (``workers`` decode processes inside each actor, 0 by
default since Ray already runs one actor per CPU). A file that cannot be read is a row with
its error, never a failed task.

Two ways in:

- :func:`score_dataset`: a ``ray.data.Dataset`` with a ``path`` column in, one with
  ``path, score, error, unseen`` out (write it with any Ray writer: ``write_parquet``, ...);
- :class:`RayScorer`: the :class:`Scorer` interface (``score_batches``) backed by a cluster;
  ``iqa-run --ray [ADDRESS]`` uses it, so its output, resume and summary are ``iqa-run``'s.

Workers open the files themselves, so :class:`RayScorer` hands them absolute paths (a worker's
working directory is its node's, not the driver's) and gives each row back the path as the
caller wrote it. A file the driver sees but a worker's node does not (no shared filesystem
there) gets no row, and the run ends with an error naming it: ``--resume`` then scores it.

Ray is imported only here, and only when used (``pip install 'qualitynet[ray]'``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError
from qualitynet.runtime.decode_pool import FAST_DECODE_DEFAULT, decode_bytes
from qualitynet.runtime.ray_connect import connect
from qualitynet.runtime.runner import runner_for
from qualitynet.runtime.scorer import Scorer
from qualitynet.runtime.types import ScoreRecord

__all__ = ["RayScorer", "ScoreActor", "records_of", "score_dataset"]

logger = logging.getLogger(__name__)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is an extra of its own
    except ImportError:
        raise QualityNetError("Ray Data is not installed; pip install 'qualitynet[ray]'") from None
    return ray


class ScoreActor:
    """One actor of the pool: loads the model once, then scores batches of ``path`` (files every node
    opens) or of ``path`` and ``bytes`` (what ``ray.data.read_binary_files`` reads, from S3 and the like)."""

    def __init__(self, model_path: str, provider: str | None, threads: int | None, batch_size: int, workers: int,
                 fast_decode: bool | None, allow_host_code: bool = False) -> None:
        self.scorer = Scorer(model_path, provider=provider, threads=threads, batch_size=batch_size,
                             workers=workers, fast_decode=fast_decode, allow_host_code=allow_host_code)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "bytes" in batch:  # ray.data.read_binary_files(..., include_paths=True): any filesystem Ray reads
            cfg, fast = self.scorer.meta.preprocess, self.scorer.fast_decode
            records = self.scorer.score_decoded([decode_bytes(bytes(data), cfg, fast, name=str(path))
                                                 for path, data in zip(batch["path"], batch["bytes"], strict=True)])
            unseen = [False] * len(records)
        else:
            records = list(self.scorer.score_paths(str(p) for p in batch["path"]))
            unseen = [bool(r.error) and not os.path.lexists(r.path) for r in records]
        return {
            "path": np.array([r.path for r in records], dtype=object),
            "score": np.array([math.nan if r.score is None else r.score for r in records], dtype=np.float64),
            "error": np.array([r.error for r in records], dtype=object),
            "unseen": np.array(unseen, dtype=bool),
        }


def score_dataset(dataset: Any, model_path: str | Path, *, actors: int | None = None, gpus_per_actor: float = 0,
                  cpus_per_actor: float = 1, provider: str | None = None, threads: int | None = None,
                  batch_size: int = 32, workers: int = 0, fast_decode: bool | None = FAST_DECODE_DEFAULT,
                  allow_host_code: bool = False) -> Any:
    """Score a Ray Dataset of image paths with a pool of :class:`ScoreActor`.

    Args:
        dataset: a ``ray.data.Dataset`` with a ``path`` column (files every node can read), or
            ``path`` and ``bytes`` columns (``ray.data.read_binary_files(uri, include_paths=True)``).
        model_path: the ``.onnx`` or ``.plan``, at a path every node can read. A ``.plan`` runs
            only on the GPU model it was built for: give a cluster of such GPUs (or a ``.onnx``).
        actors: pool size; default: the cluster's CPUs / ``cpus_per_actor`` (GPUs / ``gpus_per_actor``
            with GPUs).
        gpus_per_actor: GPUs reserved by each actor (e.g. 1, or 0.5 to share one); 0 for CPU.
        cpus_per_actor: CPUs reserved by each actor.
        provider, threads, batch_size, workers, fast_decode, allow_host_code: as for
            :class:`Scorer`; ``threads`` defaults to ``cpus_per_actor``.

    Returns:
        A lazy ``ray.data.Dataset`` of ``path`` (str), ``score`` (float64, NaN on error),
        ``error`` (str, empty when scored) and ``unseen`` (bool: the worker's node has no file at
        that path, so the row says nothing about the file if the caller's node has one).
    """
    ray = _import_ray()
    if actors is None:
        resources = ray.cluster_resources()
        key, share = ("GPU", gpus_per_actor) if gpus_per_actor else ("CPU", cpus_per_actor)
        actors = max(1, int(resources.get(key, 0) // share))
    if threads is None and not gpus_per_actor:
        threads = max(1, int(cpus_per_actor))
    return dataset.map_batches(
        ScoreActor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus_per_actor,
        num_cpus=cpus_per_actor,
        fn_constructor_args=(str(model_path), provider, threads, batch_size, workers, fast_decode, allow_host_code))


def records_of(scored: Any, batch_size: int = 256) -> Iterator[list[ScoreRecord]]:
    """Stream a scored dataset back to this process as lists of :class:`ScoreRecord` (as they finish)."""
    for batch in scored.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield [ScoreRecord(str(path), None if error else float(score), str(error))
               for path, score, error in zip(batch["path"], batch["score"], batch["error"], strict=True)]


class RayScorer:
    """The :class:`Scorer` interface over a Ray cluster (used by ``iqa-run --ray``).

    Args:
        model_path: the exported model (see :func:`score_dataset`).
        address: a cluster (``ray://head:10001``, ``head:6379``, ``auto`` for the last ``ray start``
            here); ``None`` joins the one in ``RAY_ADDRESS`` when set, else starts a local instance.
        actors, gpus_per_actor: see :func:`score_dataset`.
        provider, threads, batch_size, workers, fast_decode, allow_host_code: as for :class:`Scorer`,
            in each actor.

    A Ray session this object started is shut down by :meth:`close`; one already running is left alone.
    """

    def __init__(self, model_path: str | Path, *, address: str | None = None, actors: int | None = None,
                 gpus_per_actor: float = 0, provider: str | None = None, threads: int | None = None,
                 batch_size: int = 32, workers: int = 0, fast_decode: bool | None = FAST_DECODE_DEFAULT,
                 allow_host_code: bool = False) -> None:
        self._ray = _import_ray()
        self.model_path = str(Path(model_path).resolve())
        self.batch_size = batch_size
        self._options: dict[str, Any] = {"actors": actors, "gpus_per_actor": gpus_per_actor, "provider": provider,
                                         "threads": threads, "batch_size": batch_size, "workers": workers,
                                         "fast_decode": fast_decode, "allow_host_code": allow_host_code}
        self._owned = connect(self._ray, address, logging_level=logging.WARNING, log_to_driver=False)
        context = self._ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller shows one bar over the rows

    @functools.cached_property
    def meta(self) -> ArtifactMeta:
        """The model's artifact record, read here without a GPU: a plan's sidecar, or the ONNX metadata."""
        path = Path(self.model_path)
        if path.suffix.lower() in (".plan", ".engine"):
            return ArtifactMeta.read_sidecar(path)
        with runner_for(path, provider="cpu", threads=1) as runner:
            return runner.meta

    def score_batches(self, paths: Iterable[str | Path]) -> Iterator[list[ScoreRecord]]:
        """Score files on the cluster; yields lists of records as they finish (not in input order).

        The paths are collected here first (the cluster needs the whole list to plan the work) and
        made absolute; each record carries the path as given.

        Raises:
            QualityNetError: after every other row, when files that exist here were missing on a
                worker's node (they get no row, so a ``--resume`` scores them).
        """
        given = {os.path.abspath(p): str(p) for p in paths}  # workers run in their own directories
        if not given:
            return
        blocks = max(1, min(len(given) // self.batch_size, 1000))
        dataset = self._ray.data.from_items([{"path": p} for p in given], override_num_blocks=blocks)
        scored = score_dataset(dataset, self.model_path, **self._options)
        unseen: list[str] = []
        for batch in scored.iter_batches(batch_size=self.batch_size, batch_format="numpy"):
            records = []
            for path, score, error, missing in zip(batch["path"], batch["score"], batch["error"], batch["unseen"],
                                                   strict=True):
                if missing and os.path.lexists(path):
                    unseen.append(given[path])
                else:
                    records.append(ScoreRecord(given[path], None if error else float(score), str(error)))
            yield records
        if unseen:
            raise QualityNetError(
                f"{len(unseen)} file(s) exist here but not on the Ray workers' nodes (first: {unseen[0]}); they got "
                "no row. Put the photos on a filesystem every node mounts at the same path, then rerun with "
                "--resume to score them"
            )

    def close(self) -> None:
        """Shut down the Ray session if this object started it."""
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
