"""Old and new figures of two ``iqa-bench --json`` reports, side by side, as a Markdown table
(``iqa-bench compare OLD.json NEW.json``).

Rows are matched on mode, backend, precision, device and batch size; a row present in only
one report shows ``-`` on the other side. Reports written before the per-image column existed
get it computed from img/s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["compare"]

Key = tuple[str, str, str, str, int]


def _points(path: Path) -> dict[Key, dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {(p["mode"], p["backend"], p["precision"], p["device"], p["batch_size"]): p for p in data["points"]}


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _per_image(point: dict[str, Any] | None) -> float | None:
    if point is None:
        return None
    return point.get("ms_per_image") or 1000.0 / point["throughput_img_s"]


def compare(old: Path, new: Path) -> str:
    """The Markdown table: img/s, ms/img, p50 ms/batch and speed-up, old -> new."""
    before, after = _points(old), _points(new)
    lines = ["| mode | backend | precision | batch | img/s old → new | ms/img old → new | p50 ms/batch old → new "
             "| speed-up old → new |", "|---|---|---|---|---|---|---|---|"]
    for key in list(before) + [k for k in after if k not in before]:
        a, b = before.get(key), after.get(key)
        mode, backend, precision, _, batch = key

        def pair(field: str, digits: int, suffix: str = "", a: Any = a, b: Any = b) -> str:
            return (f"{_fmt(a and a.get(field), digits, suffix)} → {_fmt(b and b.get(field), digits, suffix)}")

        lines.append(f"| {mode} | {backend} | {precision} | {batch} | {pair('throughput_img_s', 1)} | "
                     f"{_fmt(_per_image(a), 2)} → {_fmt(_per_image(b), 2)} | {pair('latency_p50_ms', 2)} | "
                     f"{pair('speedup', 2, 'x')} |")
    return "\n".join(lines)

