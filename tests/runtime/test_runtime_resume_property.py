"""Property: however a run is killed and resumed, each file ends up in the output exactly once,
with the score an uninterrupted run gives it.

Seeded random cases: a folder of files whose names are random bytes (anything a Linux name may
hold: newlines, carriage returns, quotes, commas, invalid UTF-8), random bad files among good
photos, and a random sequence of runs from random working directories, each killed at a random
moment. A kill leaves the output cut at some byte of what that run appended; most steps cut it
so (cheap, in process), and the last seed kills real ``iqa-run`` processes with SIGKILL.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from qualitynet.runtime.cli import main

IQA_RUN = str(Path(sys.executable).parent / "iqa-run")
SEEDS = range(21)  # about 0.5 s each in process; the real-kill one about 10 s
REAL_KILL_SEED = 20
_NAME_BYTES = bytes(b for b in range(1, 256) if b != ord("/"))


def _random_name(rng: random.Random, taken: set[bytes]) -> bytes:
    while True:
        stem = bytes(rng.choice(_NAME_BYTES) for _ in range(rng.randint(1, 10)))
        name = stem + rng.choice([b".jpg", b".JPG", b".png", b""])
        if name not in taken and name not in (b".", b".."):
            taken.add(name)
            return name


def _folder(rng: random.Random, root: Path, photo_dir: Path, count: int) -> None:
    photos = sorted(photo_dir.iterdir())
    taken: set[bytes] = set()
    folder = os.fsencode(root)
    for _ in range(count):
        path = os.path.join(folder, _random_name(rng, taken))
        kind = rng.choice(["good"] * 5 + ["empty", "truncated", "text", "fifo", "broken_link"])
        if kind == "good":
            Path(os.fsdecode(path)).write_bytes(rng.choice(photos).read_bytes())
        elif kind == "truncated":
            data = rng.choice(photos).read_bytes()
            Path(os.fsdecode(path)).write_bytes(data[: len(data) // 3])
        elif kind == "text":
            Path(os.fsdecode(path)).write_bytes(b"not an image\n")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "broken_link":
            os.symlink(b"missing-target", path)
        else:
            Path(os.fsdecode(path)).write_bytes(b"")


def _scores(out: Path) -> list[tuple[str, str, str]]:
    """``(file name, score, error)`` per row (names compared without their folder: the runs' differ)."""
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return [(os.path.basename(r["path"]), r["score"], r["error"]) for r in csv.DictReader(handle)]


def _in_process(model: Path, target: str, out: Path, resume: bool) -> None:
    args = [str(model), target, "-o", str(out), "--workers", "0", "--batch-size", "3", "--threads", "1", "-q"]
    result = CliRunner().invoke(main, [*args, "--resume"] if resume else args)
    # A resume may find only bad files left to do: exit 1, by design.
    left_only_bad = result.exit_code == 1 and "no image could be scored" in result.output
    assert result.exit_code == 0 or left_only_bad, result.output


def _real_kill(rng: random.Random, model: Path, target: str, out: Path, resume: bool) -> None:
    command = [IQA_RUN, str(model), target, "-o", str(out), "--workers", "1", "--batch-size", "2",
               "--threads", "1", "-q", *(["--resume"] if resume else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(rng.uniform(1.0, 4.0))  # start-up takes about a second here: some kills land before any row
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


@pytest.mark.parametrize("seed", SEEDS)
def test_any_kill_and_resume_sequence_ends_with_each_file_once_and_its_score(
        onnx_models: tuple[Path, Path], photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        seed: int) -> None:
    rng = random.Random(seed)
    model = onnx_models[0]
    photos = tmp_path / "work" / "photos"
    photos.mkdir(parents=True)
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    _folder(rng, photos, photo_dir, count=14)

    monkeypatch.chdir(tmp_path)
    reference_out = tmp_path / "reference.csv"
    _in_process(model, str(photos), reference_out, resume=False)
    reference = {name: (score, error) for name, score, error in _scores(reference_out)}
    suffixed = [n for n in os.listdir(os.fsencode(photos)) if os.path.splitext(n)[1]]
    assert len(reference) == len(_scores(reference_out)) and len(suffixed) <= len(reference)

    out = tmp_path / "scores.csv"
    for step in range(rng.randint(1, 4)):
        cwd = rng.choice([tmp_path / "work", tmp_path / "elsewhere" / "deeper", tmp_path])
        monkeypatch.chdir(cwd)
        target = rng.choice([str(photos), os.path.relpath(photos, cwd)])
        if seed == REAL_KILL_SEED:
            _real_kill(rng, model, target, out, resume=step > 0)
            continue
        before = out.stat().st_size if out.exists() else 0
        _in_process(model, target, out, resume=step > 0)
        after = out.read_bytes()
        # Killed somewhere in what this run wrote (it may have cut a torn record first: then less is there).
        out.write_bytes(after[: rng.randint(min(before, len(after)), len(after))])
    monkeypatch.chdir(rng.choice([tmp_path / "work", tmp_path / "elsewhere"]))
    _in_process(model, os.path.relpath(photos), out, resume=True)

    rows = _scores(out)
    names = [name for name, _, _ in rows]
    assert sorted(names) == sorted(reference), "each file exactly once"
    for name, score, error in rows:
        expected_score, expected_error = reference[name]
        assert bool(error) == bool(expected_error), name  # the message may name the path as given
        if score or expected_score:
            assert float(score) == pytest.approx(float(expected_score), abs=1e-5), name
