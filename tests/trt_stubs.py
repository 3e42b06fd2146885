"""TensorRT's real API as ``tensorrt-stubs`` declares it, and sidecar values that differ from a
real plan's, shared by the export and runtime tests.

The stubs wheel installs ``tensorrt/__init__.pyi`` without ``py.typed`` (so mypy skips it
unless it is on MYPYPATH), and 10.13.0.35.1 has a few lines Python cannot parse (a parameter
named ``in``, a non-default parameter after default ones) in APIs this toolkit does not use.
Run as a script, this module prepares the folder mypy checks the TensorRT code with::

    python tests/trt_stubs.py build/mypy-trt   # the repaired stubs + a qualitynet link tree
    MYPYPATH=build/mypy-trt:tests python -m mypy -p qualitynet.export.tensorrt ...

(the link tree maps the package folders to their ``qualitynet.*`` names, which the editable
install resolves with an import hook mypy cannot follow).
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# qualitynet's import names -> the repository folders (pyproject's package-dir).
PACKAGE_DIRS = {"qualitynet/export": "export", "qualitynet/runtime": "runtime", "qualitynet/trainer": "trainer",
                "qualitynet/bench": "benchmarks"}


def other_capability(capability: str) -> str:
    """A compute capability other than this GPU's ``"major.minor"`` (so every GPU, a P5000 too, refuses it)."""
    major, minor = capability.split(".")
    return f"{int(major) + 1}.{minor}"


def other_release(version: str) -> str:
    """A TensorRT release other than ``version`` (the patch level bumped: "8.6.1" -> "8.6.2")."""
    parts = (version.split(".") + ["0", "0"])[:3]
    return ".".join([*parts[:2], str(int("".join(c for c in parts[2] if c.isdigit()) or 0) + 1)])


def stubs_site() -> Path:
    """The site-packages folder holding tensorrt-stubs' ``tensorrt`` and ``tensorrt_bindings``.

    Raises:
        FileNotFoundError: tensorrt-stubs is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs==10.13.0.35.1")
    return Path(spec.origin).parent.parent


def repaired_lines(stub: Path) -> list[str]:
    """The stub file's lines with the ``def`` lines Python cannot parse repaired."""
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
    return lines


def stub_api() -> dict[str, set[str]]:
    """Every class of ``tensorrt_bindings.tensorrt`` -> the names it declares, its bases' included;
    and ``""`` -> the names the ``tensorrt`` module exports."""
    tree = ast.parse("\n".join(repaired_lines(stubs_site() / "tensorrt_bindings" / "tensorrt.pyi")))
    own: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
            own[node.name] = {name for item in node.body for name in _declared(item)}

    def members(name: str) -> set[str]:
        return own.get(name, set()).union(*(members(base) for base in bases.get(name, [])))

    api = {name: members(name) for name in own}
    exported = ast.parse("\n".join(repaired_lines(stubs_site() / "tensorrt" / "__init__.pyi")))
    api[""] = {name for node in exported.body for name in _declared(node)} | {
        alias.asname or alias.name for node in exported.body if isinstance(node, ast.ImportFrom)
        for alias in node.names}
    return api


def _declared(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    return []


def prepare_mypy_path(target: Path) -> Path:
    """Write the repaired stubs and a ``qualitynet`` link tree of the repository into ``target``."""
    shutil.rmtree(target, ignore_errors=True)
    site = stubs_site()
    for package in ("tensorrt", "tensorrt_bindings"):
        (target / package).mkdir(parents=True)
        for stub in (site / package).glob("*.pyi"):
            (target / package / stub.name).write_text("\n".join(repaired_lines(stub)) + "\n", encoding="utf-8")
    (target / "qualitynet").mkdir()
    for module in (REPO / "qualitynet").iterdir():
        if module.suffix == ".py" or module.name == "py.typed":
            (target / "qualitynet" / module.name).symlink_to(module)
    for name, folder in PACKAGE_DIRS.items():
        (target / name).symlink_to(REPO / folder, target_is_directory=True)
    return target


if __name__ == "__main__":
    print(prepare_mypy_path(Path(sys.argv[1] if len(sys.argv) > 1 else "build/mypy-trt").resolve()))
