"""Running totals of a scoring run and the one-paragraph summary printed at its end."""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable

import numpy as np

from qualitynet.runtime.types import ScoreRecord

__all__ = ["RunStats"]


class RunStats:
    """Counts and scores of one run (scores kept as a compact float array for the percentiles)."""

    def __init__(self) -> None:
        self.scored = 0
        self.failed = 0
        self.started = time.perf_counter()
        self._scores = array("d")

    def add(self, records: Iterable[ScoreRecord]) -> None:
        """Count a batch of records."""
        for record in records:
            if record.ok:
                self.scored += 1
                self._scores.append(float(record.score))  # type: ignore[arg-type]
            else:
                self.failed += 1

    @property
    def seconds(self) -> float:
        """Wall time since the run started."""
        return time.perf_counter() - self.started

    def summary(self) -> str:
        """``scored 198, failed 2 in 4.1 s (48.3 img/s); score mean 3.12, p5/p50/p95 2.1/3.1/4.0``."""
        seconds = self.seconds
        rate = self.scored / seconds if seconds > 0 else 0.0
        text = f"scored {self.scored}, failed {self.failed} in {seconds:.1f} s ({rate:.1f} img/s)"
        if self.scored:
            scores = np.frombuffer(self._scores, dtype=np.float64)
            p5, p50, p95 = np.percentile(scores, [5, 50, 95])
            text += f"; score mean {scores.mean():.3f}, p5/p50/p95 {p5:.3f}/{p50:.3f}/{p95:.3f}"
        return text
