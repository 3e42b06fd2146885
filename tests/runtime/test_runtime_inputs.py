"""Which files are found, and bad input of every kind: reported once each, never fatal."""

from __future__ import annotations

import builtins
import csv
import io
import os
import shutil
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from qualitynet.artifact import PreprocessCfg
from qualitynet.runtime.cli import main
from qualitynet.runtime.decode_pool import DecodePool, decode_path
from qualitynet.runtime.discovery import iter_folder, iter_inputs, looks_like_image

from runtime_helpers import bomb_png

CFG = PreprocessCfg(height=32, width=32)


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> tuple[Path, set[str], set[str]]:
    """A folder with good images in every format and every kind of bad file.

    Returns:
        ``(folder, names that must score, names that must fail)`` (names relative to folder).
    """
    root = tmp_path_factory.mktemp("messy")
    photo = Image.open(sorted(photo_dir.glob("*.jpg"))[0]).convert("RGB")
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG")
    good = {
        "plain.jpg": "JPEG", "UPPER.JPEG": "JPEG", "name with spaces (1).jpg": "JPEG",
        "ñandú фото.png": "PNG", "image.WebP": "WEBP", "scan.TIF": "TIFF", "pic.bmp": "BMP",
        "sub/deeper/nested.jpg": "JPEG", "no_suffix": "PNG",
    }
    for name, fmt in good.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(root / name, fmt)
    os.link(root / "plain.jpg", os.path.join(os.fsencode(root), b"latin1_caf\xe9.jpg"))
    good_names = set(good) | {os.fsdecode(b"latin1_caf\xe9.jpg")}
    (root / "zero.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "text.png").write_text("this is not an image\n")
    bomb_png(root / "bomb.png")
    (root / "unreadable.jpg").write_bytes(jpeg.getvalue())
    os.chmod(root / "unreadable.jpg", 0)
    os.symlink("missing.jpg", root / "broken_link.jpg")
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink("..", root / "sub" / "up")  # a directory loop
    (root / "notes.txt").write_text("not scored, not reported")
    (root / "README").write_text("suffix-less but not an image")
    bad = {"zero.jpg", "truncated.jpg", "text.png", "bomb.png", "broken_link.jpg", "loop.jpg"}
    (good_names if os.geteuid() == 0 else bad).add("unreadable.jpg")  # root reads anything
    return root, good_names, bad


def test_looks_like_image_by_suffix_any_case_or_signature(messy_dir: tuple[Path, set[str], set[str]]) -> None:
    root, _, _ = messy_dir
    assert looks_like_image(str(root / "UPPER.JPEG")) and looks_like_image(str(root / "scan.TIF"))
    assert looks_like_image(str(root / "no_suffix")) and not looks_like_image(str(root / "README"))
    assert not looks_like_image(str(root / "notes.txt"))


def test_folder_walk_is_sorted_recursive_and_ends_symlink_loops(messy_dir: tuple[Path, set[str], set[str]]) -> None:
    root, good, bad = messy_dir
    found = [os.path.relpath(p, root) for p in iter_folder(root)]
    assert sorted(found) == sorted(good | bad) and len(found) == len(set(found))
    flat = [os.path.relpath(p, root) for p in iter_folder(root, recursive=False)]
    assert "sub/deeper/nested.jpg" not in flat and "plain.jpg" in flat


def test_inputs_are_deduplicated(messy_dir: tuple[Path, set[str], set[str]]) -> None:
    root, good, bad = messy_dir
    paths = list(iter_inputs([root, root / "plain.jpg", str(root) + "/./", root / "sub"]))
    assert len(paths) == len(good | bad)


def test_every_bad_file_has_its_reason(messy_dir: tuple[Path, set[str], set[str]]) -> None:
    root, _, _ = messy_dir
    reasons = {name: decode_path(str(root / name), CFG)[2] for name in
               ("zero.jpg", "truncated.jpg", "text.png", "bomb.png", "broken_link.jpg", "loop.jpg")}
    assert "UnidentifiedImageError" in reasons["zero.jpg"] and "UnidentifiedImageError" in reasons["text.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "DecompressionBomb" in reasons["bomb.png"]
    assert "broken symlink" in reasons["broken_link.jpg"]
    assert "symbolic links" in reasons["loop.jpg"]
    os.mkfifo(root.parent / "fifo.jpg")  # would block a naive open() forever
    assert decode_path(str(root.parent / "fifo.jpg"), CFG)[2] == "not a regular file"


def test_permission_denied_is_reported(tmp_path: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "secret.jpg"
    shutil.copy(sorted(photo_dir.glob("*.jpg"))[0], target)
    real_open = builtins.open

    def denying_open(file: object, *args: object, **kwargs: object) -> object:
        if os.fspath(file) == str(target):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(target))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", denying_open)  # root ignores chmod, so simulate it
    assert "Permission denied" in decode_path(str(target), CFG)[2]


def test_a_crashed_worker_fails_one_file_and_the_run_goes_on(photo_dir: Path) -> None:
    paths = [str(p) for p in sorted(photo_dir.iterdir())] * 4
    results = []
    with DecodePool(CFG, workers=1, prefetch=4) as pool:
        for i, item in enumerate(pool.imap(paths)):
            results.append(item)
            if i == 1:
                assert pool._executor is not None
                for pid in list(pool._executor._processes):  # noqa: SLF001 - simulate a codec crash
                    os.kill(pid, signal.SIGKILL)
    assert [r[0] for r in results] == paths
    crashed = [r for r in results if r[1] is None]
    assert 1 <= len(crashed) <= 4 and all("crashed" in r[2] for r in crashed)


def test_cli_scores_the_good_and_reports_each_bad_file_once(
        messy_dir: tuple[Path, set[str], set[str]], onnx_models: tuple[Path, Path], tmp_path: Path) -> None:
    root, good, bad = messy_dir
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, [str(onnx_models[0]), str(root), "-o", str(out), "--batch-size", "4",
                                       "--workers", "2"])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.DictReader(handle))
    names = [os.path.relpath(r["path"], root) for r in rows]
    assert sorted(names) == sorted(good | bad), "each file exactly once"
    by_name = dict(zip(names, rows, strict=True))
    for name in good:
        assert by_name[name]["error"] == "" and float(by_name[name]["score"]) == float(by_name[name]["score"]), name
    for name in bad:
        assert by_name[name]["score"] == "" and by_name[name]["error"], name
    assert "failed" in result.output and "img/s" in result.output
