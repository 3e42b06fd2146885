"""``iqa-serve``: a real Triton server (PyTriton) on 127.0.0.1, called through ``tritonclient.http``.

The server tests need PyTriton in a venv of the system's Python (``scripts/test-serve.sh``
makes one); elsewhere they skip, and the check that refuses a mismatched Python runs instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qualitynet.errors import QualityNetError
from qualitynet.runtime.cli import main as run_command
from qualitynet.runtime.serve import (
    ERROR_SCORE,
    ScoreServer,
    ServeSettings,
    check_python,
    libpython_version,
    pixel_limit_error,
    python_mismatch,
)

SYSTEM_LIBPYTHON = Path("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")


def _pytriton_usable() -> str:
    """Why the server cannot run here ("" when it can)."""
    try:
        check_python()
    except QualityNetError as exc:
        return str(exc)
    return ""


needs_server = pytest.mark.skipif(bool(_pytriton_usable()), reason=_pytriton_usable()[:200])


def test_python_mismatch_says_what_to_do() -> None:
    library = Path("/usr/lib/libpython3.11.so.1.0")
    message = python_mismatch("3.11.2", "3.11.7", library)
    assert message is not None
    assert "Python 3.11.2" in message and "Python 3.11.7" in message and "/usr/bin/python3.11 -m venv" in message
    assert python_mismatch("3.11.2", "3.11.2", library) is None


@pytest.mark.skipif(not SYSTEM_LIBPYTHON.is_file(), reason=f"{SYSTEM_LIBPYTHON} is absent")
def test_libpython_version_comes_from_the_library() -> None:
    version = libpython_version(SYSTEM_LIBPYTHON)
    assert re.fullmatch(r"3\.11\.\d+", version)
    if version != platform.python_version():  # e.g. the pyenv Python of these machines
        with pytest.raises(QualityNetError, match="cannot serve from this environment|not installed"):
            check_python()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _infer(client: object, images: list[bytes]) -> tuple[np.ndarray, list[str]]:
    import tritonclient.http as httpclient

    data = np.array([[image] for image in images], dtype=np.object_)
    request = httpclient.InferInput("image", list(data.shape), "BYTES")
    request.set_data_from_numpy(data)
    result = client.infer("qualitynet", [request])  # type: ignore[attr-defined]
    errors = [e.decode() if isinstance(e, bytes) else str(e) for e in result.as_numpy("error").reshape(-1)]
    return result.as_numpy("score").reshape(-1), errors


@needs_server
@pytest.mark.slow
def test_served_scores_equal_iqa_run(scored_onnx: Path, photo_dir: Path, tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    out = tmp_path / "scores.csv"
    assert CliRunner().invoke(run_command, [str(scored_onnx), str(photo_dir), "-o", str(out),
                                            "--workers", "0"]).exit_code == 0
    with open(out, newline="", encoding="utf-8") as handle:
        expected = {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(handle)}
    ports = {"http_port": _free_port(), "grpc_port": _free_port(), "metrics_port": _free_port()}
    server = ScoreServer(scored_onnx, ServeSettings(max_batch_size=8, **ports))
    with server:
        client = httpclient.InferenceServerClient(server.url)
        assert client.is_model_ready("qualitynet")
        names = sorted(expected)
        images = [(photo_dir / name).read_bytes() for name in names]
        scores, errors = _infer(client, images)  # all photos in one request
        assert errors == [""] * len(names)
        for name, score in zip(names, scores, strict=True):
            assert abs(score - expected[name]) <= 1e-6, name
        one, _ = _infer(client, images[:1])  # and one alone
        assert abs(one[0] - expected[names[0]]) <= 1e-6

        scores, errors = _infer(client, [b"\xff\xd8 not really a jpeg", images[1]])
        assert scores[0] == ERROR_SCORE and errors[0].startswith("cannot read image")
        assert errors[1] == "" and abs(scores[1] - expected[names[1]]) <= 1e-6
        again, errors = _infer(client, images[2:3])  # the server keeps serving
        assert errors == [""] and abs(again[0] - expected[names[2]]) <= 1e-6
        client.close()
    with socket.socket() as sock:  # stopped: nothing listens any more
        assert sock.connect_ex(("127.0.0.1", ports["http_port"])) != 0


@needs_server
@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_iqa_serve_command_stops_cleanly(onnx_models: tuple[Path, Path], photo_dir: Path, stop: int) -> None:
    import tritonclient.http as httpclient

    port = _free_port()
    command = [str(Path(sys.executable).parent / "iqa-serve"), str(onnx_models[0]), "--http-port", str(port),
               "--grpc-port", str(_free_port()), "--metrics-port", str(_free_port()), "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(Exception):
                if client.is_model_ready("qualitynet"):
                    break
            time.sleep(0.5)
        scores, errors = _infer(client, [next(photo_dir.glob("*.jpg")).read_bytes()])
        assert errors == [""] and np.isfinite(scores[0])
        client.close()
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert "serving" in stderr and "stopping" in stderr and "Traceback" not in stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "PNG")
    return buffer.getvalue()


def test_pixel_limit_reads_only_the_header() -> None:
    large = _png(2000, 1500)
    assert len(large) < 100_000, "a few kB that would decode to 9 MB"
    message = pixel_limit_error(large, 2_000_000)
    assert message.startswith("image too large: 2000x1500 is 3,000,000 pixels") and "--max-pixels" in message
    assert pixel_limit_error(large, 3_000_000) == "" and pixel_limit_error(large, 0) == ""
    assert pixel_limit_error(b"not an image", 10) == "", "the decoder reports what Pillow cannot open"


@pytest.fixture(scope="module")
def served(onnx_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``iqa-serve`` as a user starts it, with a token file it creates and a pixel limit of 1 M."""
    token_file = tmp_path_factory.mktemp("serve") / "token"
    http, grpc = _free_port(), _free_port()
    command = [str(Path(sys.executable).parent / "iqa-serve"), str(onnx_models[0]), "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(_free_port()), "--access-token-file", str(token_file),
               "--max-pixels", "1000000", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{http}/v2/models/qualitynet/ready", timeout=5) as reply:
                if reply.status == 200:
                    break
            time.sleep(0.5)
        assert process.poll() is None, "iqa-serve exited"
        yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "token_file": str(token_file)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@needs_server
@pytest.mark.slow
def test_statistics_through_tritonclient_with_the_users_token(served: dict[str, str]) -> None:
    """Triton's own tools (perf_analyzer, tritonclient's statistics) need the admin token: the user has it."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    token_file = Path(served["token_file"])
    assert os.stat(token_file).st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    client = httpclient.InferenceServerClient(served["http"])
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_inference_statistics("qualitynet")
    stats = client.get_inference_statistics("qualitynet", headers={"triton-access-token": token})
    assert [model["name"] for model in stats["model_stats"]] == ["qualitynet"]
    client.close()
    grpc = grpcclient.InferenceServerClient(served["grpc"])
    stats = grpc.get_inference_statistics("qualitynet", headers={"triton-grpc-protocol-triton-access-token": token},
                                          as_json=True)
    assert [model["name"] for model in stats["model_stats"]] == ["qualitynet"]
    grpc.close()


def _json_infer(url: str, texts: list[str]) -> bytes:
    body = {"inputs": [{"name": "image", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    request = urllib.request.Request(f"http://{url}/v2/models/qualitynet/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return bytes(reply.read())


def _strict(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


@needs_server
@pytest.mark.slow
def test_a_failed_image_gets_a_strict_json_reply(served: dict[str, str]) -> None:
    reply = json.loads(_json_infer(served["http"], ["not an image"]), parse_constant=_strict)
    outputs = {output["name"]: output["data"] for output in reply["outputs"]}
    assert outputs["score"] == [ERROR_SCORE]
    assert outputs["error"][0].startswith("cannot read image")


@needs_server
@pytest.mark.slow
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(served: dict[str, str], photo_dir: Path) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(served["http"])
    photo = next(photo_dir.glob("*.jpg")).read_bytes()
    scores, errors = _infer(client, [_png(1200, 1000), photo])
    assert scores[0] == ERROR_SCORE and errors[0].startswith("image too large: 1200x1000 is 1,200,000 pixels")
    assert errors[1] == "" and np.isfinite(scores[1])
    client.close()
