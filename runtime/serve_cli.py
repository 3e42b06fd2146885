"""``iqa-serve``: a Triton server (PyTriton) scoring encoded images with an exported model."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import click

from qualitynet._cli import cli_errors, setup_logging
from qualitynet.runtime.ort_runner import PROVIDERS
from qualitynet.runtime.pipeline import FAST_DECODE_DEFAULT, FAST_DECODE_HELP

__all__ = ["main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default="qualitynet", show_default=True, help="Model name clients call.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Largest batch Triton's dynamic batcher forms from concurrent requests.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=2000, show_default=True,
              help="How long the batcher waits to fill a batch, microseconds.")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="Model instances (each its own model copy; batches run concurrently).")
@click.option("--provider", type=click.Choice(["auto", *PROVIDERS]), default="auto", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime intra-op threads per instance.")
@click.option("--fast-decode/--exact-decode", default=FAST_DECODE_DEFAULT, help=FAST_DECODE_HELP)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="qualitynet")
@cli_errors
def main(model: Path, name: str, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch_size: int,
         queue_delay_us: int, instances: int, provider: str, threads: int | None, fast_decode: bool | None,
         quiet: bool) -> None:
    """Serve MODEL (.onnx or .plan) behind Triton Inference Server until Ctrl-C.

    Requests carry encoded images (input "image", BYTES, shape [N, 1]); each gets "score"
    (FP64, MOS scale, NaN when it cannot be scored) and "error" (BYTES, empty when scored).
    Needs pip install 'qualitynet[serve]' in a venv of the system's Python (see the README).

    \b
    Example:
        iqa-serve model.onnx --max-batch-size 32
        iqa-serve model.plan --host 0.0.0.0 --instances 2
    """
    from qualitynet.runtime.serve import ScoreServer, ServeSettings

    setup_logging(quiet)
    settings = ServeSettings(name=name, host=host, http_port=http_port, grpc_port=grpc_port,
                             metrics_port=metrics_port, max_batch_size=max_batch_size, queue_delay_us=queue_delay_us,
                             instances=instances, provider=None if provider == "auto" else provider,
                             threads=threads, fast_decode=fast_decode)
    server = ScoreServer(model, settings)
    signal.signal(signal.SIGTERM, _stop_requested)  # a service manager's stop is Ctrl-C's
    try:
        server.start()
        click.echo(f"serving {model} as {name!r} on http://{host}:{http_port} (gRPC {host}:{grpc_port}, metrics "
                   f":{metrics_port}); Ctrl-C stops", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        click.echo("stopping", err=True)
    finally:
        server.stop()


def _stop_requested(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
