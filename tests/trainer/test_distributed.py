"""DDP training: two real processes on the gloo backend, started the way ``iqa-train --nproc 2`` starts them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.export.cli import main as export_command
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.cli import eval_command, train_command
from qualitynet.trainer.datasets import load_dataset
from qualitynet.trainer.distributed import GlobalBatchLoss, World, launch, train_worker
from qualitynet.trainer.loss import MaePlccLoss
from qualitynet.trainer.torch_data import IqaDataset
from qualitynet.trainer.train import TrainSettings

EPOCHS, STEPS = 2, 2


def _gradient_gap() -> float:
    """Largest difference between the DDP gradient of the global-batch loss and one process's gradient."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(1)
    model, x, y = torch.nn.Linear(3, 1), torch.randn(8, 3), torch.rand(8)
    reference = torch.nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    MaePlccLoss()(reference(x), y).backward()
    ddp, share = DistributedDataParallel(model), 8 // world
    GlobalBatchLoss(MaePlccLoss())(ddp(x[rank * share:(rank + 1) * share]), y[rank * share:(rank + 1) * share]) \
        .backward()
    assert reference.weight.grad is not None and model.weight.grad is not None
    return max((a.grad - b.grad).abs().max().item()  # type: ignore[operator]
               for a, b in zip(reference.parameters(), model.parameters(), strict=True))


def _probe(index: Any, out: Path, settings: TrainSettings) -> dict[str, Any]:
    """One rank: after every optimizer step, gather all ranks' weights and record how far they differ."""
    import torch.distributed as dist
    from torch.optim.optimizer import register_optimizer_step_post_hook

    gaps: list[float] = []
    record: dict[str, Any] = {"rank": int(os.environ["RANK"])}

    def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if "gradient_gap" not in record:
            record["gradient_gap"] = _gradient_gap()
        flat = torch.cat([p.detach().reshape(-1) for group in optimizer.param_groups for p in group["params"]])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        gaps.append(max((g - gathered[0]).abs().max().item() for g in gathered))

    handle = register_optimizer_step_post_hook(after_step)
    try:
        result = train_worker(index, out, settings)
    finally:
        handle.remove()
    (out / f"rank{record['rank']}.json").write_text(json.dumps({**record, "gaps": gaps}))
    return {"best_epoch": result.best_epoch, "test_metrics": result.test_metrics}


@pytest.mark.slow
def test_two_gloo_processes_train_in_step(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    settings = TrainSettings(config="tiny", epochs=EPOCHS, batch_size=4, lr=1e-3, workers=0, quiet=True,
                             max_steps=STEPS, device="cpu")
    out = tmp_path / "run"
    summary = launch(2, _probe, index, out, settings)
    assert summary["test_metrics"]["n"] > 0  # rank 0 scored the test split
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert len(rank["gaps"]) == EPOCHS * STEPS
        assert max(rank["gaps"]) == 0.0, rank  # bit-identical weights on both ranks after every step
        assert rank["gradient_gap"] < 1e-6  # DDP gradient == gradient of the loss over the global batch
    for name in ("model.pt", "last.pt", "split.json", "history.csv", "metrics.json"):
        assert (out / name).is_file(), name
    checkpoint = load_checkpoint(out / "model.pt")
    assert not any(key.startswith("module.") for key in checkpoint.state_dict)
    assert "test_srocc" in checkpoint.metrics
    result = CliRunner().invoke(eval_command, [str(out / "model.pt"), "--dataset", "csv", "--csv", str(demo_dataset),
                                               "--split", "test", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "SROCC" in result.output
    result = CliRunner().invoke(export_command, [str(out / "model.pt"), "--out-dir", str(tmp_path / "export"),
                                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "export" / "model.onnx").stat().st_size > 0


def test_global_batch_must_split_evenly(demo_dataset: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    dataset = IqaDataset(index, range(len(index)), PreprocessCfg(height=64, width=64), index.score_scale)
    with pytest.raises(QualityNetError, match="--batch-size 6 is the global batch"):
        World(rank=0, size=4).loader(dataset, 6, 0, 0)
    assert len(World(rank=1, size=2).loader(dataset, 6, 0, 0)) == len(index) // 2 // 3


def test_nproc_under_torchrun_is_refused(demo_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(demo_dataset), "--config", "tiny",
                                                "--nproc", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "under torchrun leave it out" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setenv("WORLD_SIZE", "1")
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(demo_dataset), "--config", "tiny",
                                                "--nproc", "2", "--batch-size", "3", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "--batch-size 3 is the global batch" in result.output
