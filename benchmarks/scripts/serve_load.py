"""A bounded load test of ``iqa-serve`` on 127.0.0.1: throughput and p50/p99 latency at 1, 8 and 32 clients.

Run from the repository root in the serve venv (``scripts/test-serve.sh`` makes ``.venv-serve``):

    .venv-serve/bin/python benchmarks/scripts/serve_load.py --out-dir runs/bench-serve

Starts a real Triton server (PyTriton) with the ``small`` config (random weights, BatchNorm
calibrated; speed does not depend on weights) on free local ports, then for each client count
sends at most ``--requests`` requests of one 1024x768 JPEG each (``--seconds`` caps each level),
every client a thread with its own ``tritonclient.http`` client. Talks to 127.0.0.1 only.
Prints one JSON object and writes ``serve_load.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_fixtures import REPO, free_port, photos, small_onnx  # noqa: E402

from qualitynet.cpus import usable_cpus  # noqa: E402
from qualitynet.runtime.serve import ScoreServer, ServeSettings  # noqa: E402


def prepare(out: Path) -> tuple[Path, list[bytes]]:
    """The ``small`` model exported to ONNX and 50 photo-like 1024x768 JPEGs, made under ``out`` once."""
    out.mkdir(parents=True, exist_ok=True)
    images = [Path(p).read_bytes() for p in photos(out / "photos_1024x768", 50, (1024, 768))]
    return small_onnx(out), images


def _level(url: str, images: list[bytes], clients: int, requests: int, seconds: float) -> dict[str, float]:
    """``clients`` threads send one-image requests until ``requests`` are done or ``seconds`` pass."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench-serve")
    parser.add_argument("--requests", type=int, default=200, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=60, help="time per level at most")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()
    out = args.out_dir
    model, images = prepare(out)
    settings = ServeSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                             max_batch_size=args.max_batch_size)
    report: dict[str, object] = {"cores": os.cpu_count(), "usable_cpus": usable_cpus(),
                                 "max_batch_size": args.max_batch_size,
                                 "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    started = time.perf_counter()
    with ScoreServer(model, settings) as server:
        report["server_start_s"] = round(time.perf_counter() - started, 2)
        _level(server.url, images, 1, 4, args.seconds)  # warm-up
        report["levels"] = [_level(server.url, images, c, args.requests, args.seconds) for c in args.clients]
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    (out / "serve_load.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
