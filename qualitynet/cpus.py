"""How many CPUs this process may really use: the one place every stage sizes a thread pool from.

``os.cpu_count()`` counts the machine's CPUs. A process pinned by ``taskset`` (or by a launcher
giving each rank its cores) may run on fewer, and a container's CPU quota (cgroup ``cpu.max``, or
``cpu.cfs_quota_us`` in cgroup v1) caps the time it gets whatever its affinity says. Threads beyond
that only contend: two-node DDP on one host ran 5-10x slower with pools sized from the machine.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cpus"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def _read_quota(folder: Path, version: int) -> float | None:
    """The CPU limit set on one cgroup folder (CPUs, fractional), or None when it sets none."""
    try:
        if version == 2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _limits_along(mount: Path, path: str, version: int) -> list[float]:
    """Limits on the process's cgroup and on each ancestor up to the mount (the tightest one rules)."""
    folder = mount / path.lstrip("/")
    if not folder.is_dir():  # a cgroup namespace or container may show the host's path: read the mount's root
        folder = mount
    limits = []
    while True:
        limit = _read_quota(folder, version)
        if limit is not None:
            limits.append(limit)
        if folder == mount or mount not in folder.parents:
            return limits
        folder = folder.parent


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (``1.5`` for 150 ms per 100 ms), if one is set.

    Args:
        root: where the cgroup file systems are mounted.
        proc_cgroup: the process's cgroup membership (``/proc/self/cgroup``).

    Returns:
        The tightest quota of cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``), on the process's
        cgroup or an ancestor; None when none is set or the files cannot be read.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2, alone or beside v1 ("hybrid": mounted at unified/)
            for mount in (root, root / "unified"):
                limits += _limits_along(mount, path, 2)
        elif "cpu" in controllers.split(","):
            for mount in {root / "cpu", root / controllers, root / "cpu,cpuacct"}:
                limits += _limits_along(mount, path, 1)
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota (rounded up), >= 1.

    Use this, never ``os.cpu_count()``, to size thread pools and worker processes.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)
