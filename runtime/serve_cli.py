"""``iqa-serve``: a Triton server (PyTriton) scoring encoded images with an exported model."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from qualitynet._cli import cli_errors, setup_logging
from qualitynet.errors import QualityNetError
from qualitynet.runtime.decode_pool import FAST_DECODE_DEFAULT, FAST_DECODE_HELP
from qualitynet.runtime.ort_runner import PROVIDERS
from qualitynet.runtime.serve import DEFAULT_EXIT_TIMEOUT_S, DEFAULT_MAX_PIXELS

__all__ = ["TOKEN_ENV", "main"]

TOKEN_ENV = "IQA_SERVE_ACCESS_TOKEN"


def _read_or_create_token(path: Path) -> str:
    """The token in ``path``, or a new random one written there readable by its owner only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise QualityNetError(f"{path}: cannot read the access token ({exc.strerror or exc})") from None
        if not token:
            raise QualityNetError(f"{path}: the access token file is empty; write a token in it or delete it")
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            click.echo(f"warning: {path} is readable by other users; chmod 600 it", err=True)
        return token
    except OSError as exc:
        raise QualityNetError(f"{path}: cannot write the access token ({exc.strerror or exc})") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


@contextlib.contextmanager
def _access_token(token_file: Path | None, open_endpoints: bool, host: str) -> Iterator[tuple[str | None, str]]:
    """The admin endpoints' token and a phrase saying where it is (a private temporary file by default)."""
    if open_endpoints:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise click.UsageError("--open-admin-endpoints needs a loopback --host (127.0.0.1, ::1 or localhost)")
        yield None, "open, without a token (--open-admin-endpoints)"
        return
    if os.environ.get(TOKEN_ENV):
        yield os.environ[TOKEN_ENV], f"the token in ${TOKEN_ENV}"
        return
    folder = None
    if token_file is None:
        folder = Path(tempfile.mkdtemp(prefix="iqa-serve-"))  # mode 700
        token_file = folder / "access-token"
    try:
        yield _read_or_create_token(token_file), f"the token in {token_file}"
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


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
@click.option("--max-pixels", type=click.IntRange(0), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse (for that image only) an image whose header declares more pixels, before decoding it; "
                   "0: only Pillow's decompression-bomb limit.")
@click.option("--access-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Token of Triton's admin endpoints (statistics, shared memory, trace, logging, repository), read "
                   f"from this file, or written there (mode 600) when missing. Default: ${TOKEN_ENV} if set, else "
                   "a new token in a private temporary file, named at start-up.")
@click.option("--open-admin-endpoints", is_flag=True,
              help="Leave the admin endpoints open, without a token; only with a loopback --host.")
@click.option("--exit-timeout", type=click.IntRange(0), default=DEFAULT_EXIT_TIMEOUT_S, show_default=True,
              help="On Ctrl-C or SIGTERM, seconds Triton waits for in-flight requests before it exits.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="qualitynet")
@cli_errors
def main(model: Path, name: str, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch_size: int,
         queue_delay_us: int, instances: int, provider: str, threads: int | None, fast_decode: bool | None,
         max_pixels: int, access_token_file: Path | None, open_admin_endpoints: bool, exit_timeout: int,
         quiet: bool) -> None:
    """Serve MODEL (.onnx or .plan) behind Triton Inference Server until Ctrl-C.

    Requests carry encoded images (input "image", BYTES, shape [N, 1]); each gets "score"
    (FP64, MOS scale; -1.7976931348623157e308, the lowest float64, when it cannot be scored)
    and "error" (BYTES, empty when scored). Triton's admin endpoints need the access token in
    the header triton-access-token (gRPC: triton-grpc-protocol-triton-access-token).
    Needs pip install 'qualitynet[serve]' in a venv of the system's Python (see the README).

    \b
    Example:
        iqa-serve model.onnx --max-batch-size 32
        iqa-serve model.plan --host 0.0.0.0 --instances 2 --access-token-file ~/.iqa-serve-token
    """
    from qualitynet.runtime.serve import ScoreServer, ServeSettings

    setup_logging(quiet)
    with _access_token(access_token_file, open_admin_endpoints, host) as (token, where):
        settings = ServeSettings(name=name, host=host, http_port=http_port, grpc_port=grpc_port,
                                 metrics_port=metrics_port, max_batch_size=max_batch_size,
                                 queue_delay_us=queue_delay_us, instances=instances,
                                 provider=None if provider == "auto" else provider, threads=threads,
                                 fast_decode=fast_decode, max_pixels=max_pixels, access_token=token,
                                 open_admin_endpoints=open_admin_endpoints, exit_timeout_s=exit_timeout)
        server = ScoreServer(model, settings)
        signal.signal(signal.SIGTERM, _stop_requested)  # a service manager's stop is Ctrl-C's
        try:
            server.start()
            click.echo(f"serving {model} as {name!r} on http://{host}:{http_port} (gRPC {host}:{grpc_port}, "
                       f"metrics :{metrics_port}); admin endpoints: {where}; Ctrl-C stops", err=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.serve_forever()
            click.echo("stopping", err=True)
        finally:
            server.stop()


def _stop_requested(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
