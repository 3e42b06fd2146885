"""``iqa-serve``: a real Triton server (PyTriton) on 127.0.0.1, called through ``tritonclient.http``.

The server tests need PyTriton in a venv of the system's Python (``scripts/test-serve.sh``
makes one); elsewhere they skip, and the check that refuses a mismatched Python runs instead.
"""

from __future__ import annotations

import contextlib
import csv
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qualitynet.errors import QualityNetError
from qualitynet.runtime.cli import main as run_command
from qualitynet.runtime.serve import ScoreServer, ServeSettings, check_python, libpython_version, python_mismatch

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
def test_served_scores_equal_iqa_run(onnx_models: tuple[Path, Path], photo_dir: Path, tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    out = tmp_path / "scores.csv"
    assert CliRunner().invoke(run_command, [str(onnx_models[0]), str(photo_dir), "-o", str(out),
                                            "--workers", "0"]).exit_code == 0
    with open(out, newline="", encoding="utf-8") as handle:
        expected = {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(handle)}
    ports = {"http_port": _free_port(), "grpc_port": _free_port(), "metrics_port": _free_port()}
    server = ScoreServer(onnx_models[0], ServeSettings(max_batch_size=8, **ports))
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
        assert np.isnan(scores[0]) and errors[0].startswith("cannot read image")
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
