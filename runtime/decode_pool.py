"""Decoding images into network inputs in worker processes, overlapping inference.

:class:`DecodePool` maps paths to preprocessed ``(K, 3, H, W)`` float32 arrays in input order
(``K`` inputs per image: 1 for the whole-image view, one per crop for a crops view). Decoding
and preprocessing follow the model's record (:func:`~qualitynet.runtime.preprocess.file_to_inputs`);
``fast`` overrides only the record's decode.
At most ``prefetch`` images are in flight (submitted or decoded but not yet consumed), so
memory stays bounded however many paths stream in, while the workers decode the next
images during inference on the current batch. A file that cannot be decoded yields its
error instead of an array; even a crashed worker only fails the images it held.

Workers never outlive the process that started them: each watches a pipe whose only
writer is the parent and exits when it reads end-of-file (the parent died, even by
SIGKILL). With the workers gone, multiprocessing's resource tracker sees its last client
leave and unlinks the shared-memory ring.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import multiprocessing
import os
import signal
import stat
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType

import numpy as np
from PIL import Image

from qualitynet.artifact import PreprocessCfg
from qualitynet.cpus import usable_cpus
from qualitynet.errors import QualityNetError
from qualitynet.runtime.preprocess import file_to_inputs

__all__ = ["FAST_DECODE_DEFAULT", "FAST_DECODE_HELP", "DecodePool", "Decoded", "decode_bytes", "decode_path",
           "default_workers", "precheck", "with_decode_override"]

logger = logging.getLogger(__name__)

# None: decode as the model's record says; True/False override it (DCT-scaled / full).
FAST_DECODE_DEFAULT: bool | None = None
FAST_DECODE_HELP = ("Override the model's decode: DCT-scaled (JPEG draft mode) or full JPEG decoding. Default: as the "
                    "model's record says (what it was trained and verified with); override only to match another "
                    "decoder.")

# (path, the image's (K, 3, H, W) inputs or None, error message or "")
Decoded = tuple[str, "np.ndarray | None", str]

# In a worker: (preprocessing, the shared memory, its slots as an array).
_worker: tuple[PreprocessCfg, SharedMemory, np.ndarray] | None = None


def with_decode_override(cfg: PreprocessCfg, fast: bool | None) -> PreprocessCfg:
    """The preprocessing to decode with: the record's (``fast`` None), or with its decode overridden.

    ``True`` decodes JPEGs DCT-scaled (at the record's ``decode_side`` when it already says
    ``dct``, else at the view's :meth:`~PreprocessCfg.natural_decode_side`); ``False`` decodes
    in full. An override is for matching another decoder: the record's decode is the one the
    model was trained and verified with.

    Raises:
        QualityNetError: ``True`` for crops at native resolution (no DCT scale keeps them).
    """
    if fast is None or fast == (cfg.decode == "dct"):
        return cfg
    return cfg.with_decode("dct" if fast else "full")


def default_workers(inference_on_cpu: bool = False) -> int:
    """Decode processes by default, at most 16: every usable CPU when the model runs on the CPU too
    (inference and decoding take turns on the same cores, its idle threads sleeping), else every
    usable CPU but one, for the process that feeds the GPU (at least 1).

    On 2 quiet cores, the demo's INT8 model scored camera-size JPEGs at 25.0-25.1 img/s with 2 workers
    against 18.1-18.6 with 1 (inference threads sleeping both times), 1024x768 JPEGs at 46.5-49.0
    against 44.6-47.1 (BENCHMARKS.md, the runtime defaults' A/B).
    """
    return max(1, min(16, usable_cpus() if inference_on_cpu else usable_cpus() - 1))


def precheck(path: str) -> str:
    """Reasons Pillow would report poorly or never (a FIFO would block forever)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symlink (target {os.readlink(path)!r} does not exist)"
        return "file not found"
    except OSError as exc:
        return f"cannot access file ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return ""


def decode_path(path: str, cfg: PreprocessCfg, fast: bool | None = FAST_DECODE_DEFAULT) -> Decoded:
    """Decode and preprocess one file; never raises for a bad file.

    Args:
        path: the image file.
        cfg: the artifact's preprocessing (its decode and view).
        fast: override the record's decode (see :func:`with_decode_override`); None follows it.

    Returns:
        ``(path, inputs, "")`` on success, ``(path, None, reason)`` otherwise.
    """
    reason = precheck(path)
    if reason:
        return path, None, reason
    return _decode(path, path, with_decode_override(cfg, fast))


def decode_bytes(data: bytes, cfg: PreprocessCfg, fast: bool | None = FAST_DECODE_DEFAULT,
                 name: str = "<bytes>") -> Decoded:
    """Decode and preprocess an encoded image held in memory (JPEG, PNG, ...), as :func:`decode_path` does a file.

    Returns:
        ``(name, inputs, "")`` on success, ``(name, None, reason)`` otherwise; never raises.
    """
    return _decode(name, io.BytesIO(data), with_decode_override(cfg, fast))


def _decode(name: str, source: str | io.BytesIO, cfg: PreprocessCfg) -> Decoded:
    try:
        return name, file_to_inputs(source, cfg), ""
    except QualityNetError as exc:
        return name, None, str(exc).removeprefix(f"{source}: ").replace(str(source), name)
    except Exception as exc:  # noqa: BLE001 - a corrupt file may raise anything from a codec
        logger.debug("decoding %s failed", name, exc_info=True)
        return name, None, f"cannot read image ({type(exc).__name__}: {exc})".replace(str(source), name)


def _slots(shm: SharedMemory, cfg: PreprocessCfg) -> np.ndarray:
    """The shared memory as ``(slots, K, 3, H, W)`` float32 (the segment may be rounded up to a page)."""
    shape = (cfg.inputs_per_image, 3, cfg.height, cfg.width)
    return np.ndarray((shm.size // (4 * math.prod(shape)), *shape), np.float32, buffer=shm.buf)


def _exit_when_parent_dies(lifeline: Connection) -> None:
    """Block until the parent's end of ``lifeline`` closes, then end this worker at once."""
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _init_worker(cfg: PreprocessCfg, shm_name: str, lifeline: Connection) -> None:
    """Worker start-up: attach the slot ring, keep the settings, leave Ctrl-C to the parent, and
    exit when the parent dies."""
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_parent_dies, args=(lifeline,), daemon=True).start()
    shm = SharedMemory(name=shm_name)
    _worker = (cfg, shm, _slots(shm, cfg))


def _ready() -> int:
    """A no-op task: returns once a worker has started and run its initializer."""
    return os.getpid()


def _decode_noting_large(path: str, cfg: PreprocessCfg) -> tuple[Decoded, bool]:
    """:func:`decode_path`, and whether Pillow warned that the image is a possible decompression bomb."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        decoded = decode_path(path, cfg)
    large = any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    for other in caught:
        if not issubclass(other.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    return decoded, large


def _decode_into_slots(jobs: list[tuple[str, int]]) -> tuple[list[str], list[str]]:
    """Decode each ``(path, slot)`` into its slot of the ring.

    Returns:
        The errors ("" on success), and the paths Pillow warned about as very large.
    """
    assert _worker is not None, "worker not initialised"
    cfg, _, slots = _worker
    errors, large = [], []
    for path, slot in jobs:
        (_, tensor, error), is_large = _decode_noting_large(path, cfg)
        if tensor is not None:
            slots[slot] = tensor
        errors.append(error)
        if is_large:
            large.append(path)
    return errors, large


class DecodePool:
    """Ordered, bounded, multi-process decoding; use as a context manager.

    Args:
        cfg: the artifact's preprocessing.
        workers: decode processes; 0 decodes in the calling thread (no overlap).
        fast: override the record's decode (see :func:`with_decode_override`); None follows it.
        prefetch: images in flight at most; default ``4 * workers``.

    Images go to the workers in chunks of up to 8 (fewer when the window is small), which
    spreads the per-task cost of the process pool (~1-2 ms) over several images.
    """

    def __init__(self, cfg: PreprocessCfg, workers: int, fast: bool | None = FAST_DECODE_DEFAULT,
                 prefetch: int | None = None) -> None:
        if workers < 0:
            raise QualityNetError(f"workers must be >= 0, got {workers}")
        self.cfg = with_decode_override(cfg, fast)
        self.workers = workers
        self.prefetch = max(1, prefetch or 4 * workers)
        self.chunk = max(1, min(8, self.prefetch // (2 * max(1, workers))))
        self._executor: ProcessPoolExecutor | None = None
        self._shm: SharedMemory | None = None
        self._lifeline: tuple[Connection, Connection] | None = None
        self._warned_large = False

    def _start(self) -> ProcessPoolExecutor:
        # forkserver (spawn on Windows): workers never inherit the inference library's threads.
        context = multiprocessing.get_context("spawn" if sys.platform == "win32" else "forkserver")
        if self._shm is None:
            image_bytes = self.cfg.inputs_per_image * 3 * self.cfg.height * self.cfg.width * 4
            self._shm = SharedMemory(create=True, size=self.prefetch * image_bytes)
        if self._lifeline is None:
            self._lifeline = context.Pipe(duplex=False)  # (workers' end, parent's end); nothing is ever sent
        self._executor = ProcessPoolExecutor(
            self.workers, mp_context=context,
            initializer=_init_worker, initargs=(self.cfg, self._shm.name, self._lifeline[0]),
        )
        return self._executor

    def _note_large(self, paths: list[str]) -> None:
        """Log the first very large image of the run, once, in the tool's words."""
        if paths and not self._warned_large:
            self._warned_large = True
            logger.warning("%s has more than %s pixels (Pillow's decompression-bomb warning limit); it is decoded "
                           "anyway, which takes much memory, and images over twice that are refused",
                           paths[0], f"{Image.MAX_IMAGE_PIXELS:,}")

    def start(self) -> None:
        """Start every worker now and wait until each is ready (otherwise the first images pay for it)."""
        if self.workers == 0 or self._executor is not None:
            return
        executor = self._start()
        for future in [executor.submit(_ready) for _ in range(self.workers)]:
            future.result()

    def imap(self, paths: Iterable[str]) -> Iterator[Decoded]:
        """Decode ``paths`` and yield ``(path, inputs or None, error)`` in input order."""
        if self.workers == 0:
            for path in paths:
                decoded, is_large = _decode_noting_large(path, self.cfg)
                self._note_large([path] if is_large else [])
                yield decoded
            return
        executor = self._executor or self._start()
        assert self._shm is not None
        slots = _slots(self._shm, self.cfg)
        # Slot = submission number mod prefetch: with at most prefetch images in flight and
        # consumption in order, a slot is reused only after its image was copied out.
        pending: deque[tuple[list[tuple[str, int]], Future[tuple[list[str], list[str]]]]] = deque()
        source = iter(paths)
        in_flight = submitted = 0
        exhausted = False
        while pending or not exhausted:
            while not exhausted and in_flight < self.prefetch:
                jobs = []
                for path in itertools.islice(source, min(self.chunk, self.prefetch - in_flight)):
                    jobs.append((path, submitted % self.prefetch))
                    submitted += 1
                exhausted = len(jobs) < min(self.chunk, self.prefetch - in_flight)
                if jobs:
                    pending.append((jobs, executor.submit(_decode_into_slots, jobs)))
                    in_flight += len(jobs)
            if not pending:
                break
            jobs, future = pending.popleft()
            in_flight -= len(jobs)
            try:
                errors, large = future.result()
                self._note_large(large)
            except BrokenProcessPool:
                logger.warning("a decode worker died on one of %s; restarting the workers", [p for p, _ in jobs])
                errors = ["decoder process crashed on this file or one decoded with it; retry it alone"] * len(jobs)
                executor.shutdown(wait=False, cancel_futures=True)
                executor = self._start()
                pending = deque((j, executor.submit(_decode_into_slots, j)) for j, _ in pending)
            for (path, slot), error in zip(jobs, errors, strict=True):
                yield (path, None, error) if error else (path, slots[slot].copy(), "")

    def close(self) -> None:
        """Stop the workers (pending decodes are cancelled) and free the shared memory."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
