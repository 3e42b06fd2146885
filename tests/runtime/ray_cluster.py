"""Real Ray heads (``ray start --head --block``) for tests, inside a loopback-only network namespace.

Ray binds some ports on every interface, so a test cluster runs in ``unshare -rnpf --mount-proc``:
a user, network and PID namespace whose only interface is ``lo``. The script given runs as the
namespace's first process; when it ends, the kernel ends every process it started (heads, raylets,
workers, drivers), so nothing outlives the test. In the script:

- ``start_head DIR [MASKED]`` starts a head whose processes work in ``DIR`` (as a service manager
  starting Ray from ``/`` would) on ``127.0.0.1:6379``; with ``MASKED``, that folder is an empty
  tmpfs for the head's node only (files the driver sees and the workers do not);
- ``stop_head`` ends it by its PID; ``IQA_RUN`` is the ``iqa-run`` of this interpreter.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cluster_env", "namespace_unavailable", "run_in_namespace"]

BIN = Path(sys.executable).parent
_PRELUDE = r"""
set -u
ip link set lo up
IQA_RUN="$BIN/iqa-run"
HEAD_PID=
start_head() {
  local dir=$1 masked=${2:-}
  : > "$RAY_TEMP/head.log"
  unshare -m bash -c '[ -z "$1" ] || mount -t tmpfs none "$1"; cd "$0" && exec "$2/ray" start --head \
      --port 6379 --node-ip-address 127.0.0.1 --num-cpus 1 --include-dashboard false --disable-usage-stats \
      --temp-dir "$3/t" --block' "$dir" "$masked" "$BIN" "$RAY_TEMP" >> "$RAY_TEMP/head.log" 2>&1 &
  HEAD_PID=$!
  for _ in $(seq 180); do
    grep -q "Ray runtime started" "$RAY_TEMP/head.log" && return 0
    kill -0 "$HEAD_PID" 2>/dev/null || break
    sleep 1
  done
  echo "the Ray head did not start:" >&2; cat "$RAY_TEMP/head.log" >&2; return 1
}
stop_head() { kill "$HEAD_PID"; wait "$HEAD_PID" || true; }
"""


@functools.cache
def namespace_unavailable() -> str:
    """Why a loopback-only namespace cannot be made here ("" when it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs util-linux's unshare and iproute2's ip"
    try:
        subprocess.run(["unshare", "-rnpf", "--mount-proc", "ip", "link", "set", "lo", "up"], check=True,
                       capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unprivileged user and network namespaces are not available ({exc})"
    return ""


@contextmanager
def cluster_env(home: Path) -> Iterator[dict[str, str]]:
    """The environment of a namespace script: its own HOME (no token file of the user's), Ray's files
    under a short temporary folder (socket paths must stay under 108 bytes), no ``RAY_ADDRESS``."""
    temp = tempfile.mkdtemp(prefix="iqa-ray-", dir="/tmp")
    home.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(home), RAY_TMPDIR=temp, RAY_TEMP=temp, BIN=str(BIN), RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0")
    try:
        yield env
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def run_in_namespace(script: str, env: dict[str, str], cwd: Path, timeout: float = 420) -> \
        subprocess.CompletedProcess[str]:
    """Run a bash ``script`` (after the prelude above) in a fresh loopback-only namespace."""
    return subprocess.run(["unshare", "-rnpf", "--mount-proc", "bash", "-c", _PRELUDE + script], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)
