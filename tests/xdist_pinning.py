"""Imported first by the tests' root conftest: pins a pytest-xdist worker to its share of the CPUs.

Under ``pytest -n N``, worker k keeps every N-th usable CPU from the k-th on (one CPU each on a
2-core machine with ``-n 2``). Every pool in the toolkit is sized from the CPUs a process may use
(:mod:`qualitynet.cpus`), and torch sizes its own when it is first imported, which is why this runs
before anything imports torch: N workers pinned apart never oversubscribe the machine. Without
xdist, it does nothing.
"""

from __future__ import annotations

import os


def pin_worker(worker: str | None, count: int) -> None:
    """Restrict this process to xdist worker ``worker``'s CPUs (``gw0``, ``gw1``, ...) of ``count`` workers."""
    if not worker or count < 2:
        return
    k, cpus = int(worker.removeprefix("gw")), sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[k::count] or [cpus[k % len(cpus)]])


pin_worker(os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
