"""The view and decode of the preprocessing record: old records, refusal of unknown values, crop
geometry and the DCT-scaling rule, each checked against Pillow directly."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qualitynet.artifact import FIVE_CROPS, ArtifactMeta, PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.runtime.decode_pool import with_decode_override
from qualitynet.runtime.preprocess import (
    crop_boxes,
    file_to_inputs,
    image_to_inputs,
    image_to_tensor,
    load_rgb,
    view_scaled,
)
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.demo_dataset import demo_photo

NEW_FIELDS = ("view", "crops", "short_side", "decode", "decode_side")
CFG = PreprocessCfg(height=64, width=80)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000x700 JPEG of a real photo (big enough for every DCT scale to apply)."""
    path = tmp_path_factory.mktemp("big") / "coffee.jpg"
    demo_photo("coffee", max_side=1000).resize((1000, 700)).save(path, quality=90)
    return path


def test_an_old_record_means_the_whole_image_resized_and_decoded_in_full(big_jpeg: Path) -> None:
    old = {k: v for k, v in dataclasses.asdict(CFG).items() if k not in NEW_FIELDS}
    cfg = PreprocessCfg.from_dict(old)
    assert cfg == CFG and cfg.view == "resize" and cfg.decode == "full" and cfg.inputs_per_image == 1
    assert load_rgb(big_jpeg, cfg).size == (1000, 700)
    with Image.open(big_jpeg) as image:
        expected = image_to_tensor(image.convert("RGB"), cfg)
    np.testing.assert_array_equal(file_to_inputs(big_jpeg, cfg), expected[None])


@pytest.mark.parametrize(("change", "message"), [
    ({"view": "tiles"}, "view 'tiles' is not one of resize, crops"),
    ({"decode": "nvjpeg"}, "decode 'nvjpeg' is not one of full, dct"),
    ({"view": "crops", "crops": ["middle"]}, "crops ('middle',) are not distinct names"),
    ({"view": "crops", "crops": ["center"], "short_side": 10}, "short side 10 is neither 0"),
    ({"decode": "dct"}, "decode side 0 is not a whole number"),
    ({"view": "crops", "crops": ["center"], "decode": "dct", "decode_side": 300}, "crops at native resolution"),
])
def test_unknown_or_inconsistent_view_and_decode_are_refused_at_load(tiny_checkpoint: Path, tmp_path: Path,
                                                                      change: dict[str, object], message: str) -> None:
    record = ArtifactMeta("tiny", CFG, ScoreScale()).to_dict()
    record["preprocess"].update(change)
    with pytest.raises(QualityNetError, match="damaged artifact record") as refused:
        ArtifactMeta.from_dict(record, "model.onnx")
    assert message in str(refused.value) and "\n" not in str(refused.value)
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["preprocess"].update(change)
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(QualityNetError, match="re-train") as refused:
        load_checkpoint(tmp_path / "model.pt")
    assert message in str(refused.value)


def test_crop_boxes_follow_the_anchors_at_the_stated_scale() -> None:
    crops = CFG.with_view("crops", FIVE_CROPS)  # 80 wide, 64 high, native resolution
    scaled, boxes = crop_boxes((400, 300), crops)
    assert scaled == (400, 300)
    assert boxes == [(160, 118, 240, 182), (0, 0, 80, 64), (320, 0, 400, 64), (0, 236, 80, 300), (320, 236, 400, 300)]
    scaled, boxes = crop_boxes((400, 300), crops.with_view("crops", ("center", "bottom"), short_side=150))
    assert scaled == (200, 150) and boxes == [(60, 43, 140, 107), (60, 86, 140, 150)]
    assert crop_boxes((300, 400), crops.with_view("crops", ("right",), short_side=150))[0] == (150, 200)
    # native resolution: an image smaller than a crop is enlarged, aspect kept, until the crop fits
    assert crop_boxes((60, 60), crops)[0] == (80, 80)


def test_crops_are_cut_from_the_scaled_image() -> None:
    photo = demo_photo("astronaut", max_side=300)
    cfg = CFG.with_view("crops", ("top-left", "center"), short_side=100)
    inputs = image_to_inputs(photo, cfg)
    assert inputs.shape == (2, 3, 64, 80) and cfg.inputs_per_image == 2
    scaled = photo.resize((100, 100), Image.Resampling.BILINEAR)  # the bundled astronaut is square
    assert view_scaled(photo, cfg).size == (100, 100) and view_scaled(photo, CFG) is photo
    grey_level = 1 / 255 / min(cfg.std) + 1e-6
    for crop, box in zip(inputs, [(0, 0, 80, 64), (10, 18, 90, 82)]):  # resized from its box: float rounding only
        whole = image_to_tensor(scaled.crop(box), cfg)
        assert np.abs(crop - whole).max() <= grey_level and np.mean(crop != whole) < 0.01


@pytest.mark.parametrize(("side", "size"), [(150, (250, 175)), (300, (500, 350)), (90, (250, 175)), (87, (125, 88)),
                                           (700, (1000, 700))])
def test_dct_decode_keeps_the_smallest_scale_whose_sides_stay_at_least_the_side(big_jpeg: Path, side: int,
                                                                               size: tuple[int, int]) -> None:
    cfg = CFG.with_decode("dct", side)
    assert load_rgb(big_jpeg, cfg).size == size
    data = big_jpeg.read_bytes()
    with Image.open(io.BytesIO(data)) as image:  # Pillow's own draft, the contract's definition
        image.draft("RGB", (side, side))
        expected = image.convert("RGB")
    np.testing.assert_array_equal(np.asarray(load_rgb(io.BytesIO(data), cfg)), np.asarray(expected))


def test_dct_decode_leaves_other_formats_in_full(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    demo_photo("coffee", max_side=600).save(path)
    assert load_rgb(path, CFG.with_decode("dct", 100)).size == load_rgb(path).size


def test_a_decode_override_follows_the_view() -> None:
    assert with_decode_override(CFG, None) is CFG
    assert with_decode_override(CFG, True).decode_side == 80  # the input's longer side, as --fast-decode was
    dct = CFG.with_view("crops", FIVE_CROPS, short_side=256).with_decode("dct")
    assert dct.decode_side == 256 and with_decode_override(dct, True) is dct
    assert with_decode_override(dct, False).decode == "full"
    with pytest.raises(QualityNetError, match="native resolution"):
        with_decode_override(CFG.with_view("crops", FIVE_CROPS), True)
