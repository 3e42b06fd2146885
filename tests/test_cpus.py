"""Thread pools sized from the CPUs a process may use (affinity, cgroup quota), not the machine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qualitynet.cpus import cgroup_cpu_limit

from trt_stubs import REPO


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> float | None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self-cgroup").write_text(membership)
    return cgroup_cpu_limit(tmp_path / "fs", tmp_path / "self-cgroup")


def test_cgroup_v2_quota_is_read_and_the_tightest_ancestor_rules(tmp_path: Path) -> None:
    limit = _cgroup(tmp_path, "0::/job/rank0\n", {"fs/cpu.max": "max 100000\n", "fs/job/cpu.max": "150000 100000\n",
                                                    "fs/job/rank0/cpu.max": "max 100000\n"})
    assert limit == 1.5


def test_cgroup_v1_quota_is_read_and_unlimited_is_none(tmp_path: Path) -> None:
    v1 = {"fs/cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "fs/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path, "4:memory:/x\n1:cpu,cpuacct:/\n", v1) == 0.5
    assert _cgroup(tmp_path / "u", "1:cpu:/\n0::/\n",
                   {"fs/cpu/cpu.cfs_quota_us": "-1\n", "fs/cpu/cpu.cfs_period_us": "100000\n",
                    "fs/cpu.max": "max 100000\n"}) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path, tmp_path / "missing") is None


_PROBE = """
import json
from qualitynet.cpus import usable_cpus
from qualitynet.runtime.decode_pool import default_workers as decode_workers
from qualitynet.trainer.torch_data import default_workers as loader_workers
from qualitynet.trainer.distributed import rank_threads
print(json.dumps({"usable": usable_cpus(), "decode_workers": decode_workers(), "loader_workers": loader_workers(),
                  "rank_threads_1": rank_threads(1), "rank_threads_2": rank_threads(2)}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine with 2 or more CPUs (one is allowed)")
def test_thread_counts_follow_a_restricted_affinity() -> None:
    """As under ``taskset -c N``: one CPU allowed, however many the machine has."""
    cpu = min(os.sched_getaffinity(0))
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO, timeout=120,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}), check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout)
    assert counts == {"usable": 1, "decode_workers": 1, "loader_workers": 0, "rank_threads_1": 1, "rank_threads_2": 1}
