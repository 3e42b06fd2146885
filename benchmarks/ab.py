"""``iqa-run`` img/s of two versions of the code on the same photos, runs alternated (A B A B ...).

Each version is a git ref (or ``WORKTREE`` for the files as they are), unpacked into a temporary
import tree laid out as the installed package and run with that tree first on ``PYTHONPATH``
(``python -c "from qualitynet.runtime.cli import main; main()"``); everything else (Python,
onnxruntime, Pillow, the model, the photos, the options) is shared. Alternating spreads a busy
machine's noise over both sides.

    iqa-bench ab --old HEAD~3 --new WORKTREE --repeats 5      # in a git checkout

Prints one JSON object (also written to ``<out-dir>/iqa_run_ab.json``): per run the wall-clock
img/s of the whole process (start-up and model load included) and the rate ``iqa-run`` reports
itself (model load excluded), and the median of each per version. The model is the ``small``
config with random weights (throughput does not depend on the weights); the photos are 200
generated 1024x768 JPEGs, made once.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from qualitynet.bench.fixtures import photo_folder, untrained_onnx
from qualitynet.bench.record import measurement, time_iqa_run
from qualitynet.errors import QualityNetError

__all__ = ["compare_versions", "import_tree"]

# Import name -> folder, as pyproject.toml's package-dir maps them.
LAYOUT = {"qualitynet": "qualitynet", "qualitynet/runtime": "runtime", "qualitynet/trainer": "trainer",
          "qualitynet/export": "export", "qualitynet/bench": "benchmarks"}
_RATE = re.compile(r"\(([\d.]+) img/s\)")


def _checkout() -> Path:
    """The git checkout the current directory is in."""
    found = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise QualityNetError(f"{Path.cwd()}: not inside a git checkout of the toolkit; run iqa-bench ab from one")
    return Path(found.stdout.strip())


def import_tree(ref: str, into: Path) -> Path:
    """The package as ``ref`` (a git ref, or ``WORKTREE``) has it, laid out for ``PYTHONPATH``."""
    source = into / "source"
    repo = _checkout()
    if ref == "WORKTREE":
        shutil.copytree(repo, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(repo), "archive", ref, *set(LAYOUT.values())],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(source, filter="data")
    tree = into / "site"
    for name, folder in sorted(LAYOUT.items()):  # parents first
        shutil.copytree(source / folder, tree / name, dirs_exist_ok=True)
    return tree


def one_run(tree: Path, model: Path, folder: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """Score the folder once with the code in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", "from qualitynet.runtime.cli import main; main()", str(model), str(folder),
               "-o", str(out), *extra]
    run = time_iqa_run(command, out, env)
    reported = _RATE.findall(run["summary"])
    return {"wall_img_per_s": round(run["img_per_s"], 1),
            "reported_img_per_s": float(reported[-1]) if reported else 0.0}


def compare_versions(old: str, new: str, repeats: int, count: int, out: Path, extra: list[str]) -> None:
    """Alternate ``repeats`` runs of each version; the report is ``out/iqa_run_ab.json``.

    Args:
        old: git ref of the baseline.
        new: git ref, or ``WORKTREE`` for the files as they are.
        repeats: runs per version.
        count: photos (1024x768 JPEGs, made under ``out`` once).
        out: working folder.
        extra: more ``iqa-run`` options.
    """
    folder = Path(photo_folder(out / f"photos_ab_{count}", count)[0]).parent  # iqa-run scores the whole folder
    model = untrained_onnx(out)
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with measurement(out / "iqa_run_ab.json", machine=False) as report, tempfile.TemporaryDirectory() as scratch:
        trees = {side: import_tree(ref, Path(scratch) / side) for side, ref in (("old", old), ("new", new))}
        one_run(trees["new"], model, folder, Path(scratch) / "warm.csv", extra)  # page cache, forkserver files
        for _ in range(repeats):
            for side in ("old", "new"):
                runs[side].append(one_run(trees[side], model, folder, Path(scratch) / f"{side}.csv", extra))
        report.update({"old": old, "new": new, "photos": count, "options": extra, "runs": runs,
                       "median": {side: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
                                  for side, rows in runs.items()}})
