"""Preprocessing parity: the runtime's decode workers produce the trainer's tensors, every colour mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qualitynet.artifact import PreprocessCfg, ScoreScale
from qualitynet.runtime.decode_pool import DecodePool, decode_path
from qualitynet.runtime.preprocess import image_to_tensor, load_rgb
from qualitynet.trainer.datasets import DatasetIndex
from qualitynet.trainer.torch_data import IqaDataset

CFG = PreprocessCfg(height=64, width=80)
_EXIF_ORIENTATION = 0x0112


def _mode_files(folder: Path, photo: Image.Image) -> dict[str, Path]:
    """One file per colour mode the issue names, all made from the same photo."""
    rgb = photo.convert("RGB").resize((120, 90))
    grey = rgb.convert("L")
    alpha = Image.linear_gradient("L").resize(rgb.size)
    palette = rgb.quantize(64)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = grey.copy()
    la.putalpha(alpha)
    grey16 = Image.fromarray((np.asarray(grey, np.uint16) * 257).astype(np.uint16))
    assert grey16.mode.startswith("I;16")
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    files = {
        "RGB": ("rgb.jpg", rgb, {}),
        "L": ("grey.png", grey, {}),
        "LA": ("grey_alpha.png", la, {}),
        "P": ("palette.png", palette, {}),
        "P+transparency": ("palette_transparent.png", transparent, {"transparency": 0}),
        "RGBA": ("rgba.png", rgba, {}),
        "CMYK": ("cmyk.jpg", rgb.convert("CMYK"), {}),
        "I;16": ("grey16.png", grey16, {}),
        "EXIF-rotated": ("rotated.jpg", rgb, {"exif": exif.tobytes()}),
    }
    paths = {}
    for mode, (name, image, options) in files.items():
        image.save(folder / name, **options)
        paths[mode] = folder / name
    return paths


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> dict[str, Path]:
    photo = Image.open(sorted(photo_dir.glob("*.jpg"))[0])
    return _mode_files(tmp_path_factory.mktemp("modes"), photo)


def _trainer_tensors(paths: list[Path]) -> list[np.ndarray]:
    index = DatasetIndex(name="modes", root=paths[0].parent, paths=paths, mos=np.zeros(len(paths)),
                         groups=[p.name for p in paths], score_scale=ScoreScale())
    dataset = IqaDataset(index, range(len(paths)), CFG, ScoreScale())
    return [dataset[i][0].numpy() for i in range(len(paths))]


def test_worker_tensors_equal_trainer_tensors_for_every_mode(mode_files: dict[str, Path]) -> None:
    paths = list(mode_files.values())
    expected = _trainer_tensors(paths)
    with DecodePool(CFG, workers=2) as pool:
        decoded = list(pool.imap(str(p) for p in paths))
    assert [d[0] for d in decoded] == [str(p) for p in paths]
    for mode, (path, tensor, error), reference in zip(mode_files, decoded, expected, strict=True):
        assert not error, f"{mode}: {error}"
        assert tensor is not None and tensor.dtype == np.float32 and tensor.shape == (1, 3, CFG.height, CFG.width)
        np.testing.assert_allclose(tensor[0], reference, rtol=0, atol=1e-6, err_msg=mode)


def test_modes_mean_what_they_say(mode_files: dict[str, Path]) -> None:
    """Not just equal to the trainer: grey stays grey, alpha goes over white, EXIF is applied."""
    rgb = load_rgb(mode_files["RGB"])
    grey = np.asarray(load_rgb(mode_files["L"]))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    grey16 = np.asarray(load_rgb(mode_files["I;16"]), np.int16)
    assert np.abs(grey16 - grey).max() <= 1
    rotated = load_rgb(mode_files["EXIF-rotated"])
    assert rotated.size == (rgb.size[1], rgb.size[0])
    upright = np.asarray(rgb.transpose(Image.Transpose.ROTATE_270), np.int16)
    assert np.abs(np.asarray(rotated, np.int16) - upright).mean() < 3  # only JPEG re-encoding noise
    rgba = np.asarray(load_rgb(mode_files["RGBA"]))
    assert rgba[0].min() >= 250  # alpha 0 along the top (vertical gradient): white shows through


def test_fast_decode_is_a_near_copy_and_only_affects_jpeg(photo_dir: Path) -> None:
    jpeg = str(sorted(photo_dir.glob("*.jpg"))[0])
    png = str(sorted(photo_dir.glob("*.png"))[0])
    cfg = PreprocessCfg(height=64, width=64)
    _, exact, _ = decode_path(jpeg, cfg, fast=False)
    _, fast, _ = decode_path(jpeg, cfg, fast=True)
    assert exact is not None and fast is not None
    assert 0 < np.abs(exact - fast).mean() < 0.1  # reduced-scale DCT decode: close, not identical
    assert np.array_equal(decode_path(png, cfg, fast=True)[1], decode_path(png, cfg, fast=False)[1])
    with Image.open(jpeg) as image:
        draft = load_rgb(jpeg, cfg.with_decode("dct")).size
        assert min(draft) >= 64 and draft[0] < image.size[0]


def test_load_rgb_default_is_full_resolution(photo_dir: Path) -> None:
    jpeg = sorted(photo_dir.glob("*.jpg"))[0]
    with Image.open(jpeg) as image:
        assert load_rgb(jpeg).size == image.size
    assert np.array_equal(image_to_tensor(load_rgb(jpeg), CFG), image_to_tensor(load_rgb(jpeg, None), CFG))
