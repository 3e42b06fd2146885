"""A Triton Inference Server model repository for the exported models.

Layout (Triton's): ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (platform
``onnxruntime_onnx``), and for a TensorRT engine ``REPO/NAME_trt/1/model.plan`` (platform
``tensorrt_plan``, its sidecar beside it). Each config states the input and output names and
dims, ``max_batch_size`` (the batch profile's MAX), ``dynamic_batching`` with the profile's OPT
and MAX as preferred sizes, an ``instance_group``, and the artifact record (preprocessing, score
scale, versions) as the parameter ``qualitynet_artifact``. The server takes preprocessed
``(N, 3, H, W)`` tensors and returns unit-scale scores; the client applies the record's
preprocessing and score scale (``iqa-serve`` instead takes encoded images and returns MOS).

Every written config is parsed back with Triton's own protobuf schema (``model_config_pb2``
from ``tritonclient[grpc]``) when that is installed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnx

from qualitynet.artifact import ArtifactMeta, BatchProfile, sidecar_path
from qualitynet.errors import QualityNetError
from qualitynet.export._io import ensure_writable_dir
from qualitynet.export.onnx import read_meta

__all__ = ["ARTIFACT_PARAMETER", "check_config", "config_text", "write_triton_repo"]

log = logging.getLogger(__name__)

ARTIFACT_PARAMETER = "qualitynet_artifact"
_DEFAULT_MAX_QUEUE_DELAY_US = 2000


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    """The per-sample dims of an ONNX input/output (the batch axis dropped)."""
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return dims[1:] or [1]


def config_text(name: str, platform: str, meta: ArtifactMeta, input_dims: list[int], output_dims: list[int],
                profile: BatchProfile, kind: str, data_type: str = "TYPE_FP32") -> str:
    """The ``config.pbtxt`` of one model (protobuf text format of Triton's ``ModelConfig``)."""
    cfg = meta.preprocess
    preferred = sorted({profile.opt, profile.max})
    # Compact JSON: its escapes (\" and \\) are valid in protobuf text format strings.
    record = json.dumps(json.dumps(meta.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True))
    return (
        f'name: "{name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {profile.max}\n"
        f'input [\n  {{\n    name: "{cfg.input_name}"\n    data_type: {data_type}\n'
        f"    dims: [ {', '.join(map(str, input_dims))} ]\n  }}\n]\n"
        f'output [\n  {{\n    name: "{cfg.output_name}"\n    data_type: {data_type}\n'
        f"    dims: [ {', '.join(map(str, output_dims))} ]\n  }}\n]\n"
        f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {_DEFAULT_MAX_QUEUE_DELAY_US}\n}}\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
        f'parameters {{\n  key: "{ARTIFACT_PARAMETER}"\n  value {{\n    string_value: {record}\n  }}\n}}\n'
    )


def check_config(path: Path) -> object:
    """Parse a ``config.pbtxt`` with Triton's ``ModelConfig`` schema; returns the message.

    Raises:
        QualityNetError: it does not parse (tritonclient[grpc] must be installed).
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):
        raise QualityNetError("checking a Triton config needs tritonclient; pip install 'qualitynet[serve]'") from None
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise QualityNetError(f"{path}: not a valid Triton model config ({exc})") from None


def _write_model(repo: Path, name: str, platform: str, model: Path, filename: str, config: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / "1" / filename)
    path = folder / "config.pbtxt"
    path.write_text(config, encoding="utf-8")
    try:
        check_config(path)
    except QualityNetError as exc:
        if "needs tritonclient" not in str(exc):
            raise
        log.info("%s written but not checked: %s", path, exc)
    return path


def write_triton_repo(repo: str | Path, onnx_path: str | Path, plan: str | Path | None = None, *,
                      name: str = "qualitynet", profile: BatchProfile = BatchProfile()) -> list[Path]:
    """Write a Triton model repository for an exported ONNX model (and its TensorRT engine).

    Args:
        repo: the repository folder (created; existing models of the same names are updated).
        onnx_path: the FP32 or FP16 ``.onnx`` from ``iqa-export``; served as ``NAME``.
        plan: the ``.plan`` from ``iqa-export --fp16`` (its sidecar must be beside it); served as
            ``NAME_trt`` on the GPU it was built for.
        name: the model name clients call.
        profile: batch sizes for the ONNX model (the plan uses its own build profile).

    Returns:
        The ``config.pbtxt`` files written.
    """
    root = Path(repo)
    ensure_writable_dir(root)
    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = read_meta(model, str(onnx_path))
    inputs = [i for i in model.graph.input if i.name == meta.preprocess.input_name]
    outputs = [o for o in model.graph.output if o.name == meta.preprocess.output_name]
    if not inputs or not outputs:
        raise QualityNetError(f"{onnx_path}: has no input {meta.preprocess.input_name!r} or output "
                              f"{meta.preprocess.output_name!r}; re-export it with iqa-export")
    input_dims, output_dims = _dims(inputs[0]), _dims(outputs[0])
    data_type = "TYPE_FP16" if inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else "TYPE_FP32"
    written = [_write_model(root, name, "onnxruntime_onnx", Path(onnx_path), "model.onnx",
                            config_text(name, "onnxruntime_onnx", meta, input_dims, output_dims, profile,
                                        "KIND_AUTO", data_type))]
    if plan is not None:
        plan_path = Path(plan)
        plan_meta = ArtifactMeta.read_sidecar(plan_path)
        plan_profile = plan_meta.batch_profile or profile
        written.append(_write_model(root, f"{name}_trt", "tensorrt_plan", plan_path, "model.plan",
                                    config_text(f"{name}_trt", "tensorrt_plan", plan_meta, input_dims, output_dims,
                                                plan_profile, "KIND_GPU")))
        shutil.copyfile(sidecar_path(plan_path), sidecar_path(root / f"{name}_trt" / "1" / "model.plan"))
    return written
