"""The scaffold of a benchmark's report (the machine, the load average around the run, JSON and Markdown),
and the timing of a whole ``iqa-run`` process.

A figure measured on a shared machine means little without the load it was measured under, so
every report records the load average when it starts and when it ends::

    with measurement(out / "ray_throughput.json", threads=2) as report:
        report["iqa_run"] = ...
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

__all__ = ["load_average", "markdown_table", "measurement", "time_iqa_run"]


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def measurement(path: Path, threads: int = 0, machine: bool = True) -> Iterator[dict[str, Any]]:
    """A report to fill in: written to ``path`` as JSON and printed when the block ends normally.

    Args:
        path: the JSON file (its folder is made).
        threads: the intra-op threads the measurement gives torch and ONNX Runtime (for the machine record).
        machine: record the machine (CPU, cores, versions; imports torch). The serve venv's scripts can too.
    """
    from qualitynet.bench.machine import machine_info

    report: dict[str, Any] = {"machine": machine_info(threads)} if machine else {}
    report["load_average_at_start"] = load_average()
    yield report
    report["load_average_at_end"] = load_average()
    text = json.dumps(report, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    click.echo(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def time_iqa_run(command: list[str], out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run an ``iqa-run`` command line that writes its rows to ``out``, timing the whole process.

    Returns:
        ``images`` (rows written), ``seconds`` and ``img_per_s`` of the wall clock (start-up and
        model load included), and ``summary``, the run's own ``scored ...`` line.
    """
    out.unlink(missing_ok=True)
    Path(str(out) + ".iqa-run.json").unlink(missing_ok=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    seconds = time.perf_counter() - start
    rows = out.read_bytes().count(b"\n") - 1
    summary = [line for line in result.stderr.splitlines() if line.startswith("scored")]
    return {"images": rows, "seconds": round(seconds, 2), "img_per_s": round(rows / seconds, 2),
            "summary": summary[-1] if summary else ""}
