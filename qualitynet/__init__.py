"""QualityNet toolkit: train, export and run a blind image-quality model at scale.

The distribution is split by stage, each importable on its own:

- ``qualitynet.trainer``: the model, datasets, loss, metrics and training loop (torch).
- ``qualitynet.export``: torch -> ONNX -> FP16 ONNX -> TensorRT plan, with parity checks.
- ``qualitynet.runtime``: lean scoring of image folders (numpy + Pillow, no torch).
- ``qualitynet.bench``: side-by-side throughput, latency and accuracy of the backends.

This top-level package holds only what every stage shares and that needs nothing but the
standard library: the version, the package exception and the artifact contract.
"""

from qualitynet.errors import QualityNetError

__version__ = "0.1.0"

__all__ = ["QualityNetError", "__version__"]
