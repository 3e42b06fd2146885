"""A bounded load test of ``iqa-serve`` on 127.0.0.1: throughput and p50/p99 latency at 1, 8 and 32 clients.

Run in the serve venv (``scripts/test-serve.sh`` makes ``.venv-serve``):

    .venv-serve/bin/iqa-bench serve-load --out-dir runs/bench-serve

Starts a real Triton server (PyTriton) with the ``small`` config (random weights, BatchNorm
calibrated; speed does not depend on weights) on free local ports, then for each client count
sends at most ``--requests`` requests of one 1024x768 JPEG each (``--seconds`` caps each level),
every client a thread with its own ``tritonclient.http`` client. Talks to 127.0.0.1 only.
Prints one JSON object and writes ``serve_load.json``.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qualitynet.bench.fixtures import free_port, photo_folder, untrained_onnx
from qualitynet.bench.record import measurement

__all__ = ["measure_serving", "prepare"]


def prepare(out: Path) -> tuple[Path, list[bytes]]:
    """The ``small`` model exported to ONNX and 50 photo-like 1024x768 JPEGs, made under ``out`` once."""
    out.mkdir(parents=True, exist_ok=True)
    images = [Path(p).read_bytes() for p in photo_folder(out / "photos_1024x768", 50)]
    return untrained_onnx(out), images


def _level(url: str, images: list[bytes], clients: int, requests: int, seconds: float) -> dict[str, float]:
    """``clients`` threads send one-image requests until ``requests`` are done or ``seconds`` pass."""
    import tritonclient.http as httpclient

    counter, lock, latencies = itertools.count(), threading.Lock(), []
    deadline = time.perf_counter() + seconds

    def client_loop() -> None:
        client = httpclient.InferenceServerClient(url)
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= requests:
                    return
                data = np.array([[images[i % len(images)]]], dtype=np.object_)
                request = httpclient.InferInput("image", [1, 1], "BYTES")
                request.set_data_from_numpy(data)
                start = time.perf_counter()
                result = client.infer("qualitynet", [request])
                elapsed = time.perf_counter() - start
                assert result.as_numpy("error")[0, 0] in (b"", ""), result.as_numpy("error")
                with lock:
                    latencies.append(elapsed)
        finally:
            client.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "seconds": round(wall, 2),
            "img_per_s": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def measure_serving(out: Path, requests: int, seconds: float, clients: tuple[int, ...], max_batch_size: int) -> None:
    """The load test; the report is ``out/serve_load.json``.

    Args:
        out: working folder (photos and the model are made there once).
        requests: requests per client level at most.
        seconds: time per level at most.
        clients: the client counts, one level each.
        max_batch_size: the server's dynamic-batching limit.
    """
    from qualitynet.runtime.serve import ScoreServer, ServeSettings

    model, images = prepare(out)
    settings = ServeSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                             max_batch_size=max_batch_size)
    with measurement(out / "serve_load.json") as report:
        report["max_batch_size"] = max_batch_size
        started = time.perf_counter()
        with ScoreServer(model, settings) as server:
            report["server_start_s"] = round(time.perf_counter() - started, 2)
            _level(server.url, images, 1, 4, seconds)  # warm-up
            report["levels"] = [_level(server.url, images, c, requests, seconds) for c in clients]
