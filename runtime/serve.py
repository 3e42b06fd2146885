"""Online scoring behind a real Triton Inference Server, through NVIDIA's PyTriton.

``iqa-serve MODEL`` binds one model to Triton: the endpoint takes encoded images (JPEG, PNG,
... as BYTES, one per sample, any number per request) and returns per sample ``score`` (FP64,
the model's MOS scale; :data:`ERROR_SCORE` when it cannot be scored, since NaN is not JSON) and
``error`` (BYTES, empty when scored). An image whose header declares more than ``max_pixels``
pixels is refused before it is decoded (decoding is sequential, so this bounds a request's
memory to one such image).
Decoding, preprocessing and inference are the runtime's own (:func:`decode_bytes`,
:meth:`Scorer.score_decoded`), so a served score equals ``iqa-run``'s on the same file; a
client needs only a Triton HTTP or gRPC client. Triton's dynamic batcher merges concurrent
requests into batches of up to ``max_batch_size``. A corrupt image is an error for that sample
only; the other samples of the batch, and the server, carry on.

PyTriton runs Triton's Python backend stub, a binary that links the *system's* libpython; the
interpreter of this process must be that same Python (:func:`check_python`).
"""

from __future__ import annotations

import ctypes
import io
import logging
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.runtime.decode_pool import FAST_DECODE_DEFAULT, Decoded, decode_bytes
from qualitynet.runtime.scorer import Scorer

__all__ = ["DEFAULT_EXIT_TIMEOUT_S", "DEFAULT_MAX_PIXELS", "ERROR_SCORE", "ScoreServer", "ServeSettings",
           "check_python", "libpython_version", "pixel_limit_error", "python_mismatch"]

logger = logging.getLogger(__name__)

# The score of an image that cannot be scored: the lowest float64, a value no model gives and that
# every JSON parser reads (Triton's HTTP/JSON replies would carry NaN as the bare word NaN).
ERROR_SCORE = float(np.finfo(np.float64).min)
# Decoded pixels allowed per image: 50 M covers full-frame camera sensors (8256x5504 is 45 M).
DEFAULT_MAX_PIXELS = 50_000_000
# On stop, how long Triton waits for in-flight requests before it exits (tritonserver's own default, 30 s,
# plus PyTriton's 30-s wait before it kills the server, let a stop take over a minute).
DEFAULT_EXIT_TIMEOUT_S = 5

# PyTriton 0.7 ships one stub per Python minor version.
_STUB = Path("tritonserver") / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / \
    "triton_python_backend_stub"


def libpython_version(library: Path) -> str:
    """The version (``3.11.2``) of a libpython shared library, asked from the library itself."""
    lib = ctypes.CDLL(str(library), mode=ctypes.RTLD_LOCAL)
    lib.Py_GetVersion.restype = ctypes.c_char_p
    return str(lib.Py_GetVersion().decode().split()[0])


def python_mismatch(stub_python: str, running: str, library: Path) -> str | None:
    """The instructions to give when the backend stub's Python differs from this interpreter's, else None."""
    if stub_python == running:
        return None
    return (f"PyTriton cannot serve from this environment: Triton's Python backend stub links {library} "
            f"(Python {stub_python}) but this interpreter is Python {running}, so the model would fail to load "
            "inside Triton. Create the environment with that Python, e.g. `/usr/bin/python3.11 -m venv .venv-serve "
            "&& .venv-serve/bin/pip install -e '.[serve]'`, and run iqa-serve from it (scripts/test-serve.sh "
            "makes such a venv)")


def check_python() -> None:
    """Refuse to start when PyTriton's backend stub would run another Python than this one.

    Raises:
        QualityNetError: PyTriton is missing, or its stub links a libpython of another version.
    """
    try:
        import pytriton
    except ImportError:
        raise QualityNetError("PyTriton is not installed; pip install 'qualitynet[serve]' (see the README for the "
                              "Python it needs)") from None
    stub = Path(pytriton.__file__).parent / _STUB
    if not stub.is_file():
        return  # another layout: nothing to compare, Triton will tell
    linked = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, check=False).stdout
    found = re.search(r"(libpython3\.\d+\S*)\s+=>\s+(\S+)", linked)
    if found is None or found.group(2) == "not":
        wanted = found.group(1) if found else "libpython"
        raise QualityNetError(f"Triton's Python backend stub ({stub}) finds no {wanted}; install the system's "
                              "Python 3 shared library (e.g. apt-get install libpython3.11)")
    library = Path(found.group(2))
    message = python_mismatch(libpython_version(library), platform.python_version(), library)
    if message:
        raise QualityNetError(message)


@dataclass
class ServeSettings:
    """How the server listens and batches."""

    name: str = "qualitynet"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 32
    queue_delay_us: int = 2000
    instances: int = 1
    provider: str | None = None
    threads: int | None = None
    fast_decode: bool | None = FAST_DECODE_DEFAULT
    max_pixels: int = DEFAULT_MAX_PIXELS  # 0: only Pillow's decompression-bomb limit
    access_token: str | None = None  # of Triton's admin endpoints; None: a random one (ScoreServer.access_token)
    open_admin_endpoints: bool = False  # statistics, shared memory, trace, logging, repository without a token
    exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S


def pixel_limit_error(data: bytes, max_pixels: int) -> str:
    """Why an encoded image is refused for its size ("" when it is not), from its header alone.

    Args:
        data: the encoded image.
        max_pixels: the most pixels allowed (width x height); 0 allows any.
    """
    if not max_pixels:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:  # noqa: BLE001 - not an image Pillow opens: the decoder says why
        return ""
    if width * height <= max_pixels:
        return ""
    return (f"image too large: {width}x{height} is {width * height:,} pixels, over this server's limit of "
            f"{max_pixels:,} (iqa-serve --max-pixels)")


def _decode(data: bytes, cfg: PreprocessCfg, fast: bool | None, max_pixels: int, name: str) -> Decoded:
    refused = pixel_limit_error(data, max_pixels)
    return (name, None, refused) if refused else decode_bytes(data, cfg, fast, name=name)


def _infer_function(scorer: Scorer, fast: bool | None, max_pixels: int) -> Callable[..., dict[str, np.ndarray]]:
    """The inference callable of one model instance: stacked request samples in, scores and errors out."""
    from pytriton.decorators import batch

    cfg = scorer.meta.preprocess

    @batch  # type: ignore[untyped-decorator]
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        items = [_decode(bytes(sample[0]), cfg, fast, max_pixels, f"image {i}") for i, sample in enumerate(image)]
        records = scorer.score_decoded(items)
        return {
            "score": np.array([[ERROR_SCORE if r.score is None else r.score] for r in records], dtype=np.float64),
            "error": np.array([[r.error.encode()] for r in records], dtype=np.object_),
        }

    return infer


class ScoreServer:
    """A Triton server (PyTriton) with one exported model behind it; use as a context manager.

    Args:
        model_path: the ``.onnx`` or ``.plan`` from ``iqa-export``.
        settings: ports, batching and instances.

    Raises:
        QualityNetError: PyTriton cannot serve from this Python, or the model cannot load.
    """

    def __init__(self, model_path: str | Path, settings: ServeSettings = ServeSettings()) -> None:
        check_python()
        self.settings = settings
        self.model_path = Path(model_path)
        self._scorers = [Scorer(model_path, provider=settings.provider, threads=settings.threads, workers=0,
                                batch_size=settings.max_batch_size, fast_decode=settings.fast_decode)
                         for _ in range(max(1, settings.instances))]
        self._triton: Any = None
        self.access_token: str | None = None  # set by start() unless the admin endpoints are open

    @property
    def url(self) -> str:
        """The HTTP endpoint's ``host:port`` (what ``tritonclient.http.InferenceServerClient`` takes)."""
        return f"{self.settings.host}:{self.settings.http_port}"

    def start(self) -> None:
        """Start Triton, bind the model and return once it is ready."""
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

        s = self.settings
        config = TritonConfig(http_address=s.host, http_port=s.http_port, grpc_address=s.host, grpc_port=s.grpc_port,
                              metrics_port=s.metrics_port, exit_timeout_secs=s.exit_timeout_s)
        # PyTriton guards these endpoints with a token (a random one unless given); [] leaves them open.
        security = (TritonSecurityConfig(restricted_endpoints=[]) if s.open_admin_endpoints
                    else TritonSecurityConfig(access_token=s.access_token))
        triton = Triton(config=config, security_config=security)
        try:
            triton.bind(
                model_name=s.name,
                infer_func=[_infer_function(scorer, s.fast_decode, s.max_pixels) for scorer in self._scorers],
                inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                outputs=[Tensor(name="score", dtype=np.float64, shape=(1,)),
                         Tensor(name="error", dtype=np.bytes_, shape=(1,))],
                config=ModelConfig(max_batch_size=s.max_batch_size,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=s.queue_delay_us)),
                strict=True,
            )
            triton.run()
        except Exception as exc:
            triton.stop()
            raise QualityNetError(f"Triton did not start: {exc}") from exc
        self._triton = triton
        self.access_token = security.access_token

    def serve_forever(self) -> None:
        """Block until Ctrl-C or SIGTERM (then stop)."""
        if self._triton is None:
            self.start()
        self._triton.serve()

    def stop(self) -> None:
        """Stop Triton and free the models."""
        if self._triton is not None:
            self._triton.stop()
            self._triton = None
        for scorer in self._scorers:
            scorer.close()

    def __enter__(self) -> ScoreServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
