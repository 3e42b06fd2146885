"""Presenting a :class:`BenchReport`: text or Markdown table, JSON file, throughput plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from qualitynet.bench.run import WIDE_SPREAD, BenchReport, Point

__all__ = ["format_speedup", "format_table", "plot_throughput", "write_json"]

_COLUMNS = ("mode", "backend", "precision", "device", "batch", "img/s", "ms/img", "p50 ms/batch", "p90 ms/batch",
            "p99 ms/batch", "device p50 ms/batch", "speed-up", "max abs err", "SROCC", "threads", "load s")


CLOCKS = ("clocks: ms/batch = wall clock per call, host float32 batch in -> host scores out, for every backend "
          "(end-to-end pipeline rows: interval between consecutive batches of scores; naive loop: one image, decode "
          "included); ms/img = 1000 / img/s; device ms/batch = CUDA events around the model alone (PyTorch on CUDA; "
          "- where a backend cannot measure it); p90 needs 20 and p99 200 timed batches, else -.")


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_speedup(point: Point) -> str:
    """``2.01x``; end to end with rounds ``2.01x [1.95-2.10]``, and ``WIDE`` when their range is too wide to trust."""
    text = _fmt(point.speedup, 2) + "x"
    if point.speedup_rounds:
        text += f" [{min(point.speedup_rounds):.2f}-{max(point.speedup_rounds):.2f}]"
    return text + (" WIDE" if point.wide_spread else "")


def _row(point: Point) -> list[str]:
    return [point.mode, point.backend, point.precision, point.device, str(point.batch_size),
            _fmt(point.throughput_img_s, 1), _fmt(point.ms_per_image, 2), _fmt(point.latency_p50_ms, 2),
            _fmt(point.latency_p90_ms, 2), _fmt(point.latency_p99_ms, 2), _fmt(point.device_p50_ms, 2),
            format_speedup(point), f"{point.max_abs_error:.1e}", _fmt(point.srocc, 4),
            "-" if point.threads is None else str(point.threads), _fmt(point.load_seconds, 1)]


def format_table(report: BenchReport, markdown: bool = False) -> str:
    """The points as an aligned text table (or Markdown), then the skipped points and the machine."""
    columns: tuple[str, ...] = _COLUMNS
    rows = [_row(p) for p in report.points]
    if any(p.peak_device_mib is not None for p in report.points):  # a GPU run: device memory too
        columns = (*_COLUMNS, "peak device MiB")
        rows = [row + [_fmt(p.peak_device_mib, 0)] for row, p in zip(rows, report.points, strict=True)]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    machine = report.machine
    gpu = machine["gpu"]["name"] if machine.get("gpu") else "no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines.append("")
    lines.append(f"{report.config_name} config; speed-up vs torch-eager fp32 at the same batch size (model-only) "
                 "or vs the naive per-image loop (end-to-end); max abs err and SROCC vs "
                 f"{report.accuracy_reference}.")
    lines.append(CLOCKS)
    if "e2e_order" in report.settings:
        lines.append(f"end-to-end order: {report.settings['e2e_order']}; speed-up = median of the "
                     f"{report.settings['e2e_rounds']} rounds' ratios [their range]; WIDE: a range over "
                     f"{WIDE_SPREAD:.0%} of the median, the machine was too busy to trust the ratio.")
    lines.append(f"machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, {gpu}; threads "
                 f"{machine['threads']}; {versions}")
    lines += [f"skipped: {s.backend} {s.precision} on {s.device}: {s.reason}" for s in report.skipped]
    return "\n".join(lines)


def write_json(report: BenchReport, path: Path) -> None:
    """Every figure, the settings and the machine, as one JSON document."""
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def plot_throughput(report: BenchReport, path: Path) -> None:
    """Model-only throughput against batch size, one line per backend/precision/device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[Point]] = {}
    for point in report.points:
        if point.mode == "model-only":
            series.setdefault(f"{point.backend} {point.precision} ({point.device})", []).append(point)
    for label, points in series.items():
        ax.plot([p.batch_size for p in points], [p.throughput_img_s for p in points], "o-", label=label)
    ax.set(xscale="log", xlabel="batch size", ylabel="images / s", title=f"{report.config_name}: model-only throughput")
    ax.set_xticks(sorted({p.batch_size for p in report.points if p.mode == "model-only"}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
