"""Data-parallel training with ``torch.distributed`` (DDP), beside the single-process loop.

``train.py`` stays one loop; a :class:`World` tells it what differs with several processes
(the shape of torchvision's reference ``utils.init_distributed_mode`` / ``save_on_master``):

- the training loader uses a :class:`~torch.utils.data.DistributedSampler`, and
  ``--batch-size`` stays the *global* batch (the paper's 10), split evenly over the ranks;
- the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`;
- the loss is computed over the global batch (see :class:`GlobalBatchLoss`);
- rank 0 alone evaluates the validation split and broadcasts the figures, so the LR
  scheduler and early stopping take the same decision on every rank;
- rank 0 alone writes the split, checkpoints (the same format as a single-process run),
  history, plots and metrics; the other ranks log warnings only.

Two ways in: ``torchrun --nproc-per-node N -m qualitynet.trainer ...`` (any torchrun set-up,
multi-node included: ``iqa-train`` reads the torchrun environment), or ``iqa-train --nproc N``,
which starts N local processes itself (:func:`launch`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from qualitynet.cpus import usable_cpus
from qualitynet.errors import QualityNetError
from qualitynet.trainer.loss import MaePlccLoss
from qualitynet.trainer.torch_data import IqaDataset, make_loader

__all__ = ["GlobalBatchLoss", "World", "check_global_batch", "init_world", "launch", "launched_by_torchrun",
           "rank_threads", "run_training", "train_worker"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class GlobalBatchLoss(torch.nn.Module):
    """The paper's MAE + PLCC loss over the batch of *all* ranks, not each rank's slice.

    PLCC is a statistic of the whole batch (means and variances), so averaging per-rank
    PLCCs would change the objective (and a rank holding 2 or 3 images gives a noisy or
    undefined correlation). Each rank gathers every rank's predictions and targets
    (``all_gather``), puts its own predictions (which carry the gradient) in its slot, and
    computes the loss exactly as a single process would on the global batch. A rank's
    gradient then covers only the terms through its own predictions; DDP *averages*
    gradients over the N ranks, so the backward pass is scaled by N and the average equals
    the gradient of the global-batch loss. The value returned (logged) is the unscaled loss,
    the same on every rank.
    """

    def __init__(self, base: MaePlccLoss) -> None:
        super().__init__()
        self.base = base

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.reshape(-1), target.reshape(-1)
        world, rank = dist.get_world_size(), dist.get_rank()
        preds = [torch.empty_like(pred) for _ in range(world)]
        targets = [torch.empty_like(target) for _ in range(world)]
        dist.all_gather(preds, pred.detach())
        dist.all_gather(targets, target)
        preds[rank] = pred
        loss = self.base(torch.cat(preds), torch.cat(targets))
        # Value: loss. Gradient: world * d(loss), undone by DDP's average over the ranks.
        return loss + (world - 1) * (loss - loss.detach())


@dataclass(frozen=True)
class World:
    """Where this process stands: ``size`` processes, this one ``rank``. The default is alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and logs."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """``cuda`` -> this process's own GPU (``cuda:LOCAL_RANK``); anything else unchanged."""
        return f"cuda:{self.local_rank}" if self.size > 1 and device == "cuda" else device

    def loader(self, dataset: IqaDataset, batch_size: int, workers: int,
               seed: int) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        """The shuffled training loader: all of it alone, this rank's share of each batch with DDP."""
        if self.size == 1:
            return make_loader(dataset, batch_size, True, workers, seed)
        check_global_batch(batch_size, self.size)
        sampler: DistributedSampler[Any] = DistributedSampler(dataset, self.size, self.rank, shuffle=True, seed=seed,
                                                              drop_last=True)
        # Equal batches on every rank (all_gather needs equal shapes); a short last batch is dropped.
        return DataLoader(dataset, batch_size=batch_size // self.size, sampler=sampler, num_workers=workers,
                          drop_last=True)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: ``model`` itself, or its DDP wrapper."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = next(model.parameters()).is_cuda
        return DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None)

    def criterion(self, base: MaePlccLoss) -> torch.nn.Module:
        """The training loss: ``base``, or ``base`` over the global batch."""
        return base if self.size == 1 else GlobalBatchLoss(base)

    def start_epoch(self, loader: DataLoader[Any], epoch: int) -> None:
        """Reshuffle the distributed sampler, differently each epoch and identically on all ranks."""
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)

    def from_main(self, compute: Callable[[], T]) -> T:
        """Run ``compute`` on rank 0 only and hand its result to every rank."""
        if self.size == 1:
            return compute()
        box: list[Any] = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]


def check_global_batch(batch_size: int, processes: int) -> None:
    """Refuse a global batch that does not split into equal per-process batches of 2 or more."""
    if batch_size % processes or batch_size // processes < 2:
        raise QualityNetError(f"--batch-size {batch_size} is the global batch: it must split evenly over "
                              f"{processes} processes into at least 2 images each (BatchNorm needs 2)")


def rank_threads(local_processes: int) -> int:
    """Intra-op threads of one CPU rank: the CPUs this process may use, shared by the node's ranks.

    The usable CPUs (affinity and cgroup quota, :func:`~qualitynet.cpus.usable_cpus`), not the
    machine's: under ``taskset`` or a container quota, threads sized from the machine only contend.
    """
    return max(1, usable_cpus() // max(1, local_processes))


def launched_by_torchrun() -> bool:
    """True in a process that ``torchrun`` (or :func:`launch`) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: str) -> World:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    NCCL for CUDA, gloo for CPU. Each CUDA process uses the GPU of its local rank; CPU
    processes share the node's cores.
    """
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_gpu:
        if world.local_rank >= torch.cuda.device_count():
            raise QualityNetError(f"local rank {world.local_rank} has no GPU: this node has "
                                  f"{torch.cuda.device_count()}; start at most that many processes per node")
        torch.cuda.set_device(world.local_rank)
    else:
        torch.set_num_threads(rank_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    dist.init_process_group("nccl" if on_gpu else "gloo")
    return world


def train_worker(index: Any, out_dir: str | Path, settings: Any, resume: str | Path | None = None) -> Any:
    """One rank of a DDP run: join the group, run :func:`qualitynet.trainer.train.train`, leave.

    Returns rank 0's :class:`~qualitynet.trainer.train.TrainResult` (the others' has no test metrics).
    """
    from qualitynet.trainer.train import train

    world = init_world(settings.device)
    try:
        if not world.is_main:
            logging.getLogger().setLevel(logging.WARNING)
            settings = dataclasses.replace(settings, quiet=True)
        result = train(index, out_dir, settings, resume, world=world)
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def launch(nproc: int, entry: Callable[..., T], *args: Any) -> T:
    """Start ``nproc`` local processes (torchrun's ``--standalone``) running ``entry(*args)``.

    Returns rank 0's return value. A failure on any rank stops all of them and raises
    :class:`QualityNetError` naming the rank and its error.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    try:
        results = elastic_launch(config, entry)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
        last_line = (message.strip().splitlines() or ["see its output above"])[-1]
        raise QualityNetError(f"training process {rank} of {nproc} failed: {last_line}") from None
    return results[0]  # type: ignore[no-any-return]


def run_training(nproc: int, index: Any, out_dir: str | Path, settings: Any,
                 resume: str | Path | None = None) -> Any:
    """Train in one process, in ``nproc`` local DDP processes, or as one rank of a torchrun job.

    Returns the :class:`~qualitynet.trainer.train.TrainResult` on rank 0 (or alone), None on
    the other ranks of a torchrun job.
    """
    if launched_by_torchrun():
        if nproc > 1:
            raise QualityNetError("--nproc starts local processes itself; under torchrun leave it out")
        result = train_worker(index, out_dir, settings, resume)
        return result if int(os.environ["RANK"]) == 0 else None
    if nproc > 1:
        check_global_batch(settings.batch_size, nproc)  # here, before any process starts
        return launch(nproc, train_worker, index, out_dir, settings, resume)
    from qualitynet.trainer.train import train

    return train(index, out_dir, settings, resume)
