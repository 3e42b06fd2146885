"""The demo data: distortions at the photo's own scale, crops without rescaling, the camera-size series."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qualitynet.artifact import FIVE_CROPS, PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.runtime.preprocess import view_scaled
from qualitynet.trainer.datasets import load_dataset, make_split
from qualitynet.trainer.demo_dataset import (
    CAMERA_SERIES,
    DATASET_SOURCES,
    DISTORTIONS,
    camera_frame,
    make_camera_series,
    make_demo_dataset,
    make_view_dataset,
    native_photo,
)


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_bundled_photo_loads_as_rgb() -> None:
    for name in DATASET_SOURCES:
        photo = native_photo(name)
        assert photo.mode == "RGB" and min(photo.size) >= 256, name
    assert native_photo("china").size == (640, 427)  # scikit-learn's, at its own resolution


def test_crops_are_cut_from_the_whole_distorted_photo_without_rescaling(tmp_path: Path) -> None:
    csv_path = make_demo_dataset(tmp_path, sources=("coffee",), side=128, crops=2, scales=(1.0, 2.0))
    rows = _rows(csv_path)
    assert len(rows) == 2 * 2 * (1 + 4 * 4)  # scales x crops x (pristine + 4 distortions x 4 levels)
    photo = native_photo("coffee")
    jpeg, levels = DISTORTIONS["jpeg"]
    distorted = np.asarray(jpeg(photo, levels[2]))  # level 3, applied to the whole photo at 600x400
    crop = np.asarray(Image.open(tmp_path / "images" / "coffee_x1_0_jpeg_3.png"))
    assert crop.shape == (128, 128, 3)
    # the crop is one 128-pixel window of the distorted photo, pixel for pixel, on the 8-pixel JPEG grid
    hits = [(y, x) for y in range(0, 400 - 127, 8) for x in range(0, 600 - 127, 8)
            if np.array_equal(distorted[y:y + 128, x:x + 128], crop)]
    assert len(hits) == 1
    pristine = np.asarray(Image.open(tmp_path / "images" / "coffee_x1_0_pristine_0.png"))
    y, x = hits[0]
    assert np.array_equal(np.asarray(photo)[y:y + 128, x:x + 128], pristine)
    # versions of one crop share a reference; the photo (both scales) is one group
    by_ref: dict[str, set[float]] = {}
    for row in rows:
        by_ref.setdefault(row["reference"], set()).add(float(row["score"]))
        assert row["group"] == "coffee"
    assert sorted(by_ref) == ["coffee_x1_0", "coffee_x1_1", "coffee_x2_0", "coffee_x2_1"]
    assert all(scores == {1.0, 2.0, 3.0, 4.0, 5.0} for scores in by_ref.values())


def test_split_keeps_each_photo_and_its_scales_in_one_part(tmp_path: Path) -> None:
    csv_path = make_demo_dataset(tmp_path, sources=("chelsea", "coffee", "rocket"), side=96, crops=1,
                                 scales=(1.0, 2.0))
    index = load_dataset("csv", csv_path=csv_path)
    split = make_split(index, seed=0)
    parts = [{index.groups[i] for i in index.subset(getattr(split, name))} for name in ("train", "val", "test")]
    assert sorted(g for part in parts for g in part) == ["chelsea", "coffee", "rocket"]


def test_camera_series_ranks_each_photos_files(tmp_path: Path) -> None:
    csv_path = make_camera_series(tmp_path, ("chelsea",), size=(400, 300))
    rows = _rows(csv_path)
    assert len(rows) == sum(len(values) for values in CAMERA_SERIES.values())
    jpeg = [row for row in rows if row["reference"] == "chelsea_jpeg"]
    assert [int(row["level"]) for row in jpeg] == list(CAMERA_SERIES["jpeg"])
    assert [float(row["score"]) for row in jpeg] == sorted(float(row["score"]) for row in jpeg)  # worst first
    sizes = [(tmp_path / row["image"]).stat().st_size for row in jpeg]
    assert sizes == sorted(sizes)  # higher quality, bigger file
    with Image.open(tmp_path / jpeg[0]["image"]) as image:
        assert image.size == (400, 300) and image.format == "JPEG"
    noisy = [row for row in rows if row["reference"] == "chelsea_noise"]
    assert [int(row["level"]) for row in noisy] == list(CAMERA_SERIES["noise"])


def test_view_data_is_distorted_at_frame_size_and_brought_to_the_views_scale(tmp_path: Path) -> None:
    cfg = PreprocessCfg().with_view("crops", FIVE_CROPS, 256)
    csv_path = make_view_dataset(tmp_path, cfg, sources=("coffee",), frame_scales=(2.0,))
    rows = _rows(csv_path)
    assert len(rows) == 1 + 4 * 4 and {row["reference"] for row in rows} == {"coffee_f2"}
    assert sorted({float(row["score"]) for row in rows}) == [1.0, 2.0, 3.0, 4.0, 5.0]
    frame = camera_frame(native_photo("coffee"), 512)  # 600x400 -> short side 2 x 256, with grain
    assert frame.size == (768, 512)
    for name, level in (("pristine", 0), ("jpeg", 3), ("blur", 2)):
        distort, values = DISTORTIONS.get(name, (lambda image, value: image, (0, 0, 0, 0)))
        value = values[level - 1] * (2 if name == "blur" else 1)  # blur sigmas scale with the frame
        expected = view_scaled(distort(frame, value) if level else frame, cfg)  # the runtime's own scaling
        saved = Image.open(tmp_path / f"images/coffee_f2_{name}_{level}.png")
        assert saved.size == (384, 256) and np.array_equal(np.asarray(saved), np.asarray(expected)), name
    with pytest.raises(QualityNetError, match="needs a crops view at a stated short side"):
        make_view_dataset(tmp_path, PreprocessCfg(), sources=("coffee",))
