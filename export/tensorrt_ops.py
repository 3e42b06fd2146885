"""The ONNX operators TensorRT 8.6 parses: the last TensorRT for Pascal, so the floor every export must clear.

From onnx-tensorrt's ``docs/operators.md`` at its ``8.6-GA`` tag (commit ee0b139), every row marked
supported. Restrictions of single operators (a Resize mode, an initializer-only input) are not
checked here; a real ``trtexec`` or ``iqa-export --fp16`` build on the GPU is the final word.
"""

from __future__ import annotations

import onnx

__all__ = ["TENSORRT_8_6_OPS", "ops_tensorrt_8_6_cannot_parse"]

TENSORRT_8_6_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSwish HardSigmoid
Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul
Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split())


def ops_tensorrt_8_6_cannot_parse(model: onnx.ModelProto) -> list[str]:
    """The operator types of ``model``'s graph (default domain) that TensorRT 8.6's ONNX parser lacks, sorted."""
    return sorted({node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx")} - TENSORRT_8_6_OPS)
