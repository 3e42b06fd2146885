"""The FP32 ONNX export: metadata round-trip, names, dynamic batch, self-contained file, opsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qualitynet.artifact import ONNX_METADATA_KEY, ArtifactMeta, file_sha256
from qualitynet.errors import QualityNetError
from qualitynet.export import ExportResult, export_onnx, load_photos
from qualitynet.export.onnx import check_opset, read_meta
from qualitynet.trainer.checkpoint import load_checkpoint


def test_metadata_round_trips_through_onnx_and_onnxruntime(tiny_export: ExportResult) -> None:
    checkpoint = load_checkpoint(tiny_export.checkpoint)
    via_onnx = read_meta(onnx.load(str(tiny_export.onnx)), "model.onnx")
    session = ort.InferenceSession(str(tiny_export.onnx), providers=["CPUExecutionProvider"])
    record = session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY]
    via_ort = ArtifactMeta.from_json(record, "model.onnx")

    assert via_onnx == via_ort
    assert via_ort.config_name == "tiny"
    assert via_ort.preprocess == checkpoint.preprocess
    assert via_ort.score_scale == checkpoint.score_scale
    assert via_ort.precision == "fp32"
    assert via_ort.checkpoint_sha256 == file_sha256(tiny_export.checkpoint)
    assert via_ort.versions["onnx_opset"] == "17"
    assert {"torch", "onnx", "qualitynet"} <= set(via_ort.versions)


def test_io_names_opset_and_single_file(tiny_export: ExportResult) -> None:
    model = onnx.load(str(tiny_export.onnx))
    onnx.checker.check_model(model, full_check=True)
    (image,), (quality,) = model.graph.input, model.graph.output
    assert (image.name, quality.name) == ("image", "quality")
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 3, 96, 96]
    assert [d.dim_param or d.dim_value for d in quality.type.tensor_type.shape.dim] == ["batch", 1]
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    written = sorted(p.name for p in tiny_export.onnx.parent.iterdir() if p.name.startswith("model.onnx"))
    assert written == ["model.onnx"]


def test_dynamic_batch_1_and_7(tiny_export: ExportResult, photo_dir: Path) -> None:
    checkpoint = load_checkpoint(tiny_export.checkpoint)
    inputs, _ = load_photos(photo_dir, checkpoint.preprocess)
    batch7 = inputs[:7]
    session = ort.InferenceSession(str(tiny_export.onnx), providers=["CPUExecutionProvider"])
    together = session.run(["quality"], {"image": batch7})[0]
    alone = np.concatenate([session.run(["quality"], {"image": batch7[i:i + 1]})[0] for i in range(7)])
    assert together.shape == (7, 1) and alone.shape == (7, 1)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.ptp(together) > 0.1  # real photos get different scores


def test_export_onnx_defaults_next_to_the_checkpoint(varied_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(varied_checkpoint.read_bytes())
    out = export_onnx(checkpoint, opset=13)
    assert out == tmp_path / "last.onnx"
    assert read_meta(onnx.load(str(out))).versions["onnx_opset"] == "13"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("opset", [12, 21])
def test_unsupported_opset_is_refused(opset: int) -> None:
    with pytest.raises(QualityNetError, match=f"opset {opset} is not supported.*--opset 17"):
        check_opset(opset)


def test_model_without_metadata_is_refused(tmp_path: Path) -> None:
    model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    with pytest.raises(QualityNetError, match="no QualityNet metadata"):
        read_meta(model, "other.onnx")
