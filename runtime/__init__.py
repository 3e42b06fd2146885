"""Lean scoring of image folders with an exported QualityNet model (``iqa-run``).

Needs numpy, Pillow, click and tqdm, plus onnxruntime for ``.onnx`` models or TensorRT and
cuda-python for ``.plan`` engines, both imported only when such a model is loaded. Nothing
here imports torch, the trainer or the export stage: the artifact's metadata is the whole
contract (:mod:`qualitynet.artifact`).

Modules: ``discovery`` (which files), ``preprocess`` (image -> tensor, shared with the
trainer), ``decode_pool`` (decode worker processes), ``runner`` / ``ort_runner`` /
``trt_runner`` (backends), ``scorer`` (the Python API), ``writer``, ``output`` (the locked,
resumable output file and its run record) and ``summary`` (output), ``cli`` (``iqa-run``).
"""

from qualitynet.runtime.scorer import Scorer
from qualitynet.runtime.types import ScoreRecord

__all__ = ["ScoreRecord", "Scorer"]
