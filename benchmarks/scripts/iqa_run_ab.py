"""``iqa-run`` img/s of two versions of the code on the same photos, runs alternated (A B A B ...).

Each version is a git ref (or ``WORKTREE`` for the files as they are), unpacked into a temporary
import tree laid out as the installed package and run with that tree first on ``PYTHONPATH``
(``python -c "from qualitynet.runtime.cli import main; main()"``); everything else (Python,
onnxruntime, Pillow, the model, the photos, the options) is shared. Alternating spreads a busy
machine's noise over both sides.

    python benchmarks/scripts/iqa_run_ab.py --old 93c0a79 --new WORKTREE --repeats 5

Prints one JSON object (also written to ``<out-dir>/iqa_run_ab.json``): per run the wall-clock
img/s of the whole process (start-up and model load included) and the rate ``iqa-run`` reports
itself (model load excluded), and the median of each per version. The model is the ``small``
config with random weights (throughput does not depend on the weights); the photos are 200
generated 1024x768 JPEGs, made once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Import name -> folder, as pyproject.toml's package-dir maps them.
LAYOUT = {"qualitynet": "qualitynet", "qualitynet/runtime": "runtime", "qualitynet/trainer": "trainer",
          "qualitynet/export": "export", "qualitynet/bench": "benchmarks"}
_RATE = re.compile(r"\(([\d.]+) img/s\)")


def import_tree(ref: str, into: Path) -> Path:
    """The package as ``ref`` (a git ref, or ``WORKTREE``) has it, laid out for ``PYTHONPATH``."""
    source = into / "source"
    if ref == "WORKTREE":
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, *set(LAYOUT.values())],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(source, filter="data")
    tree = into / "site"
    for name, folder in sorted(LAYOUT.items()):  # parents first
        shutil.copytree(source / folder, tree / name, dirs_exist_ok=True)
    return tree


def one_run(tree: Path, model: Path, folder: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """Score the folder once with the code in ``tree``."""
    out.unlink(missing_ok=True)
    Path(str(out) + ".iqa-run.json").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", "from qualitynet.runtime.cli import main; main()", str(model), str(folder),
               "-o", str(out), *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    seconds = time.perf_counter() - start
    rows = out.read_bytes().count(b"\n") - 1
    reported = _RATE.findall(result.stderr)
    return {"wall_img_per_s": round(rows / seconds, 1), "reported_img_per_s": float(reported[-1]) if reported else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="git ref of the baseline (e.g. the commit before a change)")
    parser.add_argument("--new", default="WORKTREE", help="git ref, or WORKTREE for the files as they are")
    parser.add_argument("--repeats", type=int, default=3, help="runs per version, alternated")
    parser.add_argument("--count", type=int, default=200, help="photos (1024x768 JPEGs)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench-runtime")
    parser.add_argument("extra", nargs="*", help="more iqa-run options, after --, e.g. -- --workers 1")
    args = parser.parse_args()

    from qualitynet.export import export_onnx
    from qualitynet.trainer.checkpoint import save_untrained_checkpoint
    from qualitynet.trainer.demo_data import make_photo_folder

    out = args.out_dir
    folder = out / f"photos_ab_{args.count}"
    if len(list(folder.glob("*.jpg"))) < args.count:
        make_photo_folder(folder, count=args.count, size=(1024, 768))
    model = out / "small" / "model.onnx"
    if not model.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(save_untrained_checkpoint(model.parent / "model.pt", "small"), model)

    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as scratch:
        trees = {side: import_tree(ref, Path(scratch) / side) for side, ref in (("old", args.old), ("new", args.new))}
        one_run(trees["new"], model, folder, Path(scratch) / "warm.csv", args.extra)  # page cache, forkserver files
        for _ in range(args.repeats):
            for side in ("old", "new"):
                runs[side].append(one_run(trees[side], model, folder, Path(scratch) / f"{side}.csv", args.extra))
    report = {
        "old": args.old, "new": args.new, "photos": args.count, "options": args.extra,
        "load_average": [round(x, 2) for x in os.getloadavg()], "runs": runs,
        "median": {side: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
                   for side, rows in runs.items()},
    }
    text = json.dumps(report, indent=2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "iqa_run_ab.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
