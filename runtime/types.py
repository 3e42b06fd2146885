"""Small value types the runtime's modules pass between them."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["OUTPUT_FIELDS", "ScoreRecord"]

OUTPUT_FIELDS = ("path", "score", "error")


@dataclass(frozen=True)
class ScoreRecord:
    """The outcome for one input file: a MOS-scale score, or why there is none.

    Attributes:
        path: the file as it was found (the folder as given, joined with the name).
        score: the predicted score on the model's MOS scale; ``None`` when it failed.
        error: empty when scored, otherwise a one-line reason.
    """

    path: str
    score: float | None
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the file was scored."""
        return self.score is not None and not math.isnan(self.score) and not self.error
