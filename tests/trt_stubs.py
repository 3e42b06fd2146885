"""Type-checking the TensorRT code against tensorrt-stubs, and sidecar values that differ from a
real plan's, shared by the export and runtime tests.

The stubs wheel installs ``tensorrt/__init__.pyi`` without ``py.typed`` (so mypy skips it
unless it is on MYPYPATH), and 10.13.0.35.1 has a few lines Python cannot parse (a parameter
named ``in``, a non-default parameter after default ones) in APIs this toolkit does not use.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def other_capability(capability: str) -> str:
    """A compute capability other than this GPU's ``"major.minor"`` (so every GPU, a P5000 too, refuses it)."""
    major, minor = capability.split(".")
    return f"{int(major) + 1}.{minor}"


def other_release(version: str) -> str:
    """A TensorRT release other than ``version`` (the patch level bumped: "8.6.1" -> "8.6.2")."""
    parts = (version.split(".") + ["0", "0"])[:3]
    return ".".join([*parts[:2], str(int("".join(c for c in parts[2] if c.isdigit()) or 0) + 1)])


def sanitised_stubs(target: Path) -> Path:
    """A copy of tensorrt-stubs in ``target`` with the unparsable lines repaired."""
    spec = pytest.importorskip("tensorrt_stubs")
    site = Path(spec.__file__).parent.parent
    for package in ("tensorrt", "tensorrt_bindings"):
        (target / package).mkdir(parents=True)
        for stub in (site / package).glob("*.pyi"):
            lines = stub.read_text(encoding="utf-8").splitlines()
            for i, line in enumerate(lines):
                if not line.strip().startswith("def "):
                    continue
                for fix in (lambda s: re.sub(r"([(,]\s*)in:", r"\1in_:", s),
                            lambda s: re.sub(r"\s*=\s*(None|\.\.\.)(?=[,)])", "", s)):
                    try:
                        ast.parse(line.strip() + " ...")
                        break
                    except SyntaxError:
                        line = fix(line)
                lines[i] = line
            (target / package / stub.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def mypy_errors(files: list[str], tmp_path: Path, strict: bool = False) -> tuple[list[str], str]:
    """Run mypy on ``files`` (paths relative to the repository) with the stubs; return the error
    lines in those files (the stubs' own complaints are not ours) and mypy's whole output.

    A control file that uses a misspelt TensorRT name is checked too: its error must appear,
    which proves the stubs were really read (with TensorRT typed as Any everything passes).
    The control's error is removed from the returned list.
    """
    pytest.importorskip("mypy")
    stubs = sanitised_stubs(tmp_path / "stubs")
    control = tmp_path / "misspelt.py"
    control.write_text("import tensorrt as trt\n\nflag = trt.BuilderFlag.FP61\n")
    args = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
            "--no-incremental", "--cache-dir", str(tmp_path / "cache"), *(["--strict"] if strict else []),
            str(control), *files]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={"MYPYPATH": str(stubs), "PATH": ""})
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    control_errors = [e for e in errors if "misspelt.py" in e]
    assert len(control_errors) == 1 and 'has no attribute "FP61"' in control_errors[0], \
        "the stubs were not used:\n" + result.stdout[-2000:] + result.stderr[-2000:]
    return [e for e in errors if e.startswith(tuple(files))], result.stdout
