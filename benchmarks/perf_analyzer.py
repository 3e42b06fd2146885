"""NVIDIA's ``perf_analyzer`` against ``iqa-serve`` on 127.0.0.1: real JPEGs over HTTP and gRPC, 1-16 in flight.

Set-up, once (PyPI's ``perf-analyzer`` wheels need glibc 2.38; the binary inside the
``tritonclient`` 2.40.0 wheel runs on these machines' 2.36 with two libraries added)::

    apt-get install libb64-0d
    pip download --no-deps --only-binary=:all: --platform manylinux1_x86_64 tritonclient==2.40.0 -d /tmp/pa
    pip download --no-deps --only-binary=:all: nvidia-cuda-runtime-cu12 -d /tmp/pa
    cd /tmp/pa && unzip -o 'tritonclient-2.40.0-*.whl' 'tritonclient-2.40.0.data/data/bin/perf_analyzer' \
        && unzip -o 'nvidia_cuda_runtime_cu12-*.whl' 'nvidia/cuda_runtime/lib/*'

Then, in the serve venv (``scripts/test-serve.sh`` makes ``.venv-serve``)::

    .venv-serve/bin/iqa-bench perf-analyzer \\
        --perf-analyzer /tmp/pa/tritonclient-2.40.0.data/data/bin/perf_analyzer \\
        --cuda-runtime /tmp/pa/nvidia/cuda_runtime/lib --out-dir runs/bench-perf-analyzer

What it does, and what any ``perf_analyzer`` run against ``iqa-serve`` needs:

- ``--input-data`` JSON sends ``{"b64": ...}`` as an already serialised BYTES tensor, so each
  JPEG is prefixed with its 4-byte little-endian length before base64 (:func:`input_data`);
- ``perf_analyzer`` reads the server's statistics, an admin endpoint: over HTTP it sends the
  token with ``-H triton-access-token:TOKEN``; 2.40 ignores ``-H`` for gRPC, so the gRPC rounds
  use a server started with ``--open-admin-endpoints`` (loopback only);
- bounded: each level measures windows of ``--requests`` requests (``count_windows``), at most
  ``--max-trials`` windows, and each ``perf_analyzer`` run is killed after ``--timeout`` seconds;
  a level whose windows never agree within ``--stability`` % gets its error instead of figures.

Starts a real Triton server (PyTriton) with the ``small`` config (random weights; speed does not
depend on them) per protocol, on free ports of 127.0.0.1. Writes ``perf_analyzer.json`` (one row
per protocol and level: img/s, p50/p90/p99 latency, server queue and compute times) with the CPU,
load average and versions, and prints it.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import platform
import secrets
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from qualitynet.bench.fixtures import free_port
from qualitynet.bench.record import load_average, measurement
from qualitynet.bench.serve_load import prepare

__all__ = ["PerfAnalyzerSettings", "input_data", "measure_perf_analyzer"]


@dataclass(frozen=True)
class PerfAnalyzerSettings:
    """Where ``perf_analyzer`` is and how hard and how long it drives the server (``iqa-bench perf-analyzer``)."""

    perf_analyzer: Path
    cuda_runtime: Path
    out_dir: Path
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    protocols: tuple[str, ...] = ("http", "grpc")
    requests: int = 50
    max_trials: int = 6
    stability: float = 50
    timeout: float = 240
    images: int = 16
    max_batch_size: int = 32


def input_data(images: list[bytes], path: Path) -> Path:
    """Write ``perf_analyzer``'s ``--input-data`` file: each image as a serialised BYTES element."""
    rows = [{"image": {"b64": base64.b64encode(struct.pack("<I", len(image)) + image).decode()}} for image in images]
    path.write_text(json.dumps({"data": rows}))
    return path


def _run_level(args: PerfAnalyzerSettings, protocol: str, url: str, token: str | None, concurrency: int,
               data: Path, out: Path) -> dict[str, object]:
    report = out / f"{protocol}-c{concurrency}.csv"
    command = [str(args.perf_analyzer), "-m", "qualitynet", "-u", url, "-i", protocol, "-b", "1",
               "--input-data", str(data), "--concurrency-range", f"{concurrency}:{concurrency}",
               "--measurement-mode", "count_windows", "--measurement-request-count", str(args.requests),
               "--max-trials", str(args.max_trials), "--stability-percentage", str(args.stability), "-f", str(report)]
    if token is not None:
        command += ["-H", f"triton-access-token:{token}"]
    env = {**os.environ, "LD_LIBRARY_PATH": f"{args.cuda_runtime}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    load = load_average()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    row: dict[str, object] = {"protocol": protocol, "concurrency": concurrency,
                              "seconds": round(time.perf_counter() - started, 1),
                              "load_average": load}
    if result.returncode != 0 or not report.exists():
        row["error"] = (result.stdout + result.stderr).strip()[-1500:]
        return row
    with open(report, newline="") as handle:
        (measured,) = list(csv.DictReader(handle))
    row.update({"img_per_s": round(float(measured["Inferences/Second"]), 2),
                "p50_ms": round(float(measured["p50 latency"]) / 1000, 1),
                "p90_ms": round(float(measured["p90 latency"]) / 1000, 1),
                "p99_ms": round(float(measured["p99 latency"]) / 1000, 1),
                "server_queue_ms": round(float(measured["Server Queue"]) / 1000, 1),
                "server_compute_ms": round(float(measured["Server Compute Infer"]) / 1000, 1)})
    return row


def measure_perf_analyzer(args: PerfAnalyzerSettings) -> None:
    """Every protocol at every concurrency; the report is ``<out_dir>/perf_analyzer.json``."""
    from qualitynet.runtime.serve import ScoreServer, ServeSettings

    out = args.out_dir
    model, images = prepare(out)
    data = input_data(images[: args.images], out / "input-data.json")
    version = subprocess.run([str(args.perf_analyzer), "--version"], capture_output=True, text=True, check=False,
                             env={**os.environ, "LD_LIBRARY_PATH": str(args.cuda_runtime)}).stdout.strip()
    with measurement(out / "perf_analyzer.json") as report:
        report.update({"python": platform.python_version(), "perf_analyzer": version,
                       "images": f"{len(images[: args.images])} JPEGs 1024x768",
                       "max_batch_size": args.max_batch_size, "rows": []})
        for protocol in args.protocols:
            token = secrets.token_urlsafe(32) if protocol == "http" else None  # 2.40 sends no gRPC headers
            settings = ServeSettings(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                                     max_batch_size=args.max_batch_size, access_token=token,
                                     open_admin_endpoints=token is None)
            with ScoreServer(model, settings) as server:
                url = server.url if protocol == "http" else f"127.0.0.1:{settings.grpc_port}"
                for concurrency in args.concurrency:
                    row = _run_level(args, protocol, url, server.access_token, concurrency, data, out)
                    print(json.dumps(row), flush=True)
                    report["rows"].append(row)
