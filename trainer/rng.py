"""Every random-number state a training run draws from, as plain data for ``last.pt``.

A resumed run continues exactly where the interrupted one stopped only if all of them
continue: torch's global generator (dropout, and the flips of a loader without workers),
the loader's generator (shuffle order and the base seed of its workers' flips), CUDA's
generators, and Python's and NumPy's global ones (seeded in loader workers, and free for
any code to use). The state is tensors and plain Python values only, so a checkpoint
holding it still loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["restore_rng_state", "rng_state"]


def rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Capture every generator's state.

    Args:
        loader_generator: the training DataLoader's ``generator``, when it has one.

    Returns:
        A dict of tensors and plain values, for :func:`restore_rng_state`.
    """
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    """Put every generator back to a state captured by :func:`rng_state`.

    Args:
        state: what :func:`rng_state` returned (as loaded from a checkpoint).
        loader_generator: the new training DataLoader's ``generator``.
    """
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": numpy["bit_generator"],
                         "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
