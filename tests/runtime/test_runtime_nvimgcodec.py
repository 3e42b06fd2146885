"""nvImageCodec as the decoder (``--decoder nvimgcodec``): the real library, its CPU codec here
(libjpeg-turbo: Pillow's pixels, so the path must score exactly as Pillow does) and nvJPEG on
the GPU where one is (a gated approximation)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qualitynet.artifact import FIVE_CROPS
from qualitynet.errors import QualityNetError
from qualitynet.runtime.cli import main as run_main
from qualitynet.runtime.decode_pool import decode_path
from qualitynet.runtime.nvimgcodec_decode import NvImageCodecPool, decode_agreement, nvimgcodec_missing
from qualitynet.runtime.scorer import Scorer

from runtime_helpers import photo_paths

pytestmark = pytest.mark.skipif(nvimgcodec_missing() is not None, reason=str(nvimgcodec_missing()))


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def _scores(output: str) -> dict[str, float]:
    return {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(output.splitlines())}


def test_the_cpu_codec_gives_pillows_inputs_for_every_view(onnx_models: tuple[Path, Path], photo_dir: Path,
                                                           tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes((photo_dir / "astronaut.jpg").read_bytes()[:300])
    paths = [str(p) for p in photo_paths(photo_dir)] + [str(tmp_path / "broken.jpg"), str(tmp_path / "gone.jpg")]
    with Scorer(onnx_models[0], workers=0) as scorer:
        resize = scorer.meta.preprocess
    for cfg in (resize, resize.with_view("crops", FIVE_CROPS, short_side=resize.height + 40)):
        decoded = NvImageCodecPool(cfg, "cpu", batch=3).decode_many(paths)
        assert [name for name, _, _ in decoded] == paths
        for (_, ours, error), path in zip(decoded[:-2], paths[:-2], strict=True):
            _, theirs, _ = decode_path(path, cfg)
            assert error == "" and ours is not None and theirs is not None, path
            assert ours.shape == theirs.shape and np.array_equal(ours, theirs), path
        assert decoded[-2][1] is None and "cannot read image" in decoded[-2][2]  # through Pillow, as today
        assert decoded[-1] == (paths[-1], None, "file not found")


def test_iqa_run_with_the_cpu_codec_scores_as_pillow_and_records_its_decoder(onnx_models: tuple[Path, Path],
                                                                             photo_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    pillow = runner.invoke(run_main, [str(onnx_models[0]), str(photo_dir), "--workers", "0", "-q"])
    out = tmp_path / "scores.csv"
    ours = runner.invoke(run_main, [str(onnx_models[0]), str(photo_dir), "--decoder", "nvimgcodec-cpu", "-o",
                                    str(out), "--batch-size", "3"])
    assert pillow.exit_code == 0 and ours.exit_code == 0, ours.output
    assert "nvImageCodec vs Pillow decode on 3 images: mean shift 0.0000, max 0.0000" in ours.output
    assert _scores(out.read_text()) == _scores(pillow.output)
    again = runner.invoke(run_main, [str(onnx_models[0]), str(photo_dir), "-o", str(out), "--resume", "-q"])
    assert again.exit_code == 1 and "by nvimgcodec-cpu" in again.output  # decoded another way: not mixed


def test_scores_that_move_too_far_are_refused(onnx_models: tuple[Path, Path], photo_dir: Path) -> None:
    paths = [str(p) for p in photo_paths(photo_dir)]
    with Scorer(onnx_models[0], workers=0) as scorer:
        cfg = scorer.meta.preprocess
        same = [decode_path(p, cfg) for p in paths]
        shuffled = same[1:] + same[:1]  # another image's pixels: what a broken decoder would give
        scale = scorer.meta.score_scale
        width = scale.high - scale.low
        assert decode_agreement(scorer.score_decoded, same, same, width).passed
        moved = decode_agreement(scorer.score_decoded, same, shuffled, width)
        assert not moved.passed and moved.images == len(paths) and moved.max_abs > 0


def test_ray_and_an_unknown_decoder_are_usage_errors(onnx_models: tuple[Path, Path], photo_dir: Path) -> None:
    result = CliRunner().invoke(run_main, [str(onnx_models[0]), str(photo_dir), "--decoder", "nvimgcodec", "--ray"])
    assert result.exit_code == 2 and "--decoder applies without --ray" in result.output
    with pytest.raises(QualityNetError, match="unknown decoder 'turbo'"):
        Scorer(onnx_models[0], decoder="turbo")


@pytest.mark.skipif(_cuda_devices() > 0, reason="a GPU is present; the GPU test covers this")
def test_without_a_gpu_the_gpu_decoder_is_refused_with_the_fix(onnx_models: tuple[Path, Path],
                                                               photo_dir: Path) -> None:
    result = CliRunner().invoke(run_main, [str(onnx_models[0]), str(photo_dir), "--decoder", "nvimgcodec"])
    assert result.exit_code == 1
    assert "nvImageCodec cannot start a gpu decoder" in result.output and "--decoder pillow" in result.output
    assert "Traceback" not in result.output


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() == 0, reason="needs a CUDA GPU (nvJPEG)")
def test_nvjpeg_on_the_gpu_stays_within_the_gate_on_real_photos(onnx_models: tuple[Path, Path],
                                                               photo_dir: Path) -> None:
    paths = [str(p) for p in photo_paths(photo_dir) if p.suffix == ".jpg"]
    with Scorer(onnx_models[0], workers=0, decoder="nvimgcodec") as scorer:
        agreement = scorer.check_decoder(paths)
        records = list(scorer.score_paths(paths))
    assert agreement is not None and agreement.passed and agreement.images == len(paths)
    assert all(r.error == "" for r in records)
