"""Training runs side by side: each run folder's test metrics (``metrics.json``), as a Markdown table
(``iqa-bench runs-table RUN...``)."""

from __future__ import annotations

import json
from pathlib import Path

from qualitynet.bench.record import markdown_table
from qualitynet.errors import QualityNetError

__all__ = ["runs_table"]

_HEADER = ("run", "test SROCC", "PLCC", "RMSE", "raw SROCC", "raw RMSE", "mapping", "best epoch", "train time")


def _figure(value: object) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def runs_table(runs: list[Path]) -> str:
    """One row per run folder: metrics after and before the MOS mapping, the best epoch, and the
    training time when the folder holds a ``seconds`` file (written by the script that timed it)."""
    rows = []
    for run in runs:
        path = run / "metrics.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise QualityNetError(f"{path}: not the metrics.json of a finished iqa-train run ({exc})") from None
        raw = metrics.get("before_mos_mapping", {})
        seconds = run / "seconds"
        rows.append([run.name, _figure(metrics["srocc"]), _figure(metrics["plcc"]), _figure(metrics["rmse"]),
                     _figure(raw.get("srocc")), _figure(raw.get("rmse")),
                     (metrics.get("mos_mapping") or {}).get("kind", "-"), metrics.get("best_epoch", "-"),
                     f"{seconds.read_text().strip()} s" if seconds.is_file() else "-"])
    return markdown_table(_HEADER, rows)
