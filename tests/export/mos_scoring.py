"""One check the export tests of every model family share: ``iqa-run`` on an exported graph scores photos on the
MOS scale as the checkpoint's PyTorch model does, its MOS mapping inside the graph."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from qualitynet.export import load_photos
from qualitynet.runtime.cli import main as run_main
from qualitynet.trainer.checkpoint import load_checkpoint


def assert_iqa_run_scores_as_torch(onnx_path: Path, checkpoint_path: Path, photo_dir: Path) -> np.ndarray:
    """Run ``iqa-run`` on ``photo_dir``; returns its MOS-scale scores in ``load_photos`` order."""
    result = CliRunner().invoke(run_main, [str(onnx_path), str(photo_dir), "--format", "csv", "--quiet",
                                           "--workers", "0"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(io.StringIO(result.stdout))}
    checkpoint = load_checkpoint(checkpoint_path)
    inputs, names = load_photos(photo_dir, checkpoint.preprocess)
    with torch.no_grad():
        mapped = checkpoint.build_model()(torch.from_numpy(inputs))[:, 0].numpy()
        raw = checkpoint.build_model(mapped=False)(torch.from_numpy(inputs))[:, 0].numpy()
    got = np.array([rows[Path(n).name] for n in names])
    assert len(rows) == len(names) and np.allclose(got, checkpoint.score_scale.to_mos(mapped), atol=1e-4)
    assert not np.allclose(mapped, raw, atol=1e-4)  # the MOS mapping is in the graph, not the identity
    return got
