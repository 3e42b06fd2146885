"""The whole code base type-checks (mypy) and passes the linter (ruff), as CI requires."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trt_stubs import REPO

PACKAGES = ["qualitynet", "trainer", "export", "runtime", "benchmarks"]


def test_mypy_finds_no_type_error(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), *PACKAGES],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_finds_no_lint_error() -> None:
    pytest.importorskip("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
