"""Writing score rows as CSV or JSONL, flushed per batch.

Each batch's rows are written and flushed together, so a run that is killed keeps every
batch it finished (:mod:`~qualitynet.runtime.output` reads them back for ``--resume``).
Paths are written as found, exactly: names that are not valid UTF-8 round-trip through
``surrogateescape``, and a CSV field holding a comma, quote, ``\n`` or a bare ``\r`` is
quoted, so every name a file system allows reads back as one field. A failed write
raises :class:`QualityNetError` naming the output; the rows flushed before it stay valid.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from qualitynet.errors import QualityNetError
from qualitynet.runtime.types import OUTPUT_FIELDS, ScoreRecord

__all__ = ["ENCODING_ERRORS", "FORMATS", "RecordWriter", "format_for"]

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Paths that are not valid UTF-8 (possible on POSIX) round-trip through surrogateescape.
ENCODING_ERRORS = "surrogateescape"


def format_for(output: Path | None, fmt: str | None) -> str:
    """The output format: ``fmt`` when given, else from the file suffix (``.jsonl``/``.ndjson``), else csv."""
    if fmt:
        return fmt
    return "jsonl" if output is not None and output.suffix.lower() in _JSONL_SUFFIXES else "csv"


class RecordWriter:
    """Writes :class:`ScoreRecord` rows to a text stream, flushing after each batch.

    Args:
        stream: an open text stream (``newline=""``).
        fmt: ``csv`` or ``jsonl``.
        header: start with the CSV header (a new or empty file); written with the first rows, or on close.
        borrowed: the stream wraps one the caller owns (stdout): detach instead of closing.
        name: how messages name the output (default: the stream's name).

    Raises:
        QualityNetError: from any method, when the output cannot be written (full disk, ...).
    """

    def __init__(self, stream: TextIO, fmt: str, header: bool = True, borrowed: bool = False,
                 name: str | None = None) -> None:
        if fmt not in FORMATS:
            raise QualityNetError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.stream = stream
        self.fmt = fmt
        self.borrowed = borrowed
        self.name = name or str(getattr(stream, "name", "the output"))
        self._failed = False
        # Rows are formatted with a CRLF terminator, which makes the csv module quote a field holding
        # a bare \r as well as \n; the terminator itself is then written as \n.
        self._row = io.StringIO()
        self._csv = csv.writer(self._row, lineterminator="\r\n") if fmt == "csv" else None
        self._header = self._csv_line(OUTPUT_FIELDS) if self._csv is not None and header else ""

    @classmethod
    def to_binary(cls, binary: BinaryIO, fmt: str, name: str = "standard output") -> RecordWriter:
        """Write to a binary stream such as stdout's buffer (left open on :meth:`close`)."""
        stream = io.TextIOWrapper(binary, encoding="utf-8", errors=ENCODING_ERRORS, newline="")
        return cls(stream, fmt, borrowed=True, name=name)

    def _csv_line(self, fields: Sequence[object]) -> str:
        assert self._csv is not None
        self._row.seek(0)
        self._row.truncate()
        self._csv.writerow(fields)
        return self._row.getvalue()[:-2] + "\n"

    def _write(self, text: str) -> None:
        """Write (the header first, once) and flush."""
        text, self._header = self._header + text, ""
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as exc:
            self._failed = True
            raise QualityNetError(
                f"{self.name}: cannot write the output ({exc.strerror or exc}); the rows written before are "
                "intact, and --resume continues from them"
            ) from None

    def write_batch(self, records: Iterable[ScoreRecord]) -> None:
        """Write the rows of one batch and flush them."""
        lines = []
        for record in records:
            score = None if record.score is None else round(float(record.score), 6)
            if self._csv is not None:
                lines.append(self._csv_line((record.path, "" if score is None else score, record.error)))
            else:
                row = {"path": record.path, "score": score, "error": record.error}
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        self._write("".join(lines))

    def close(self) -> None:
        """Flush; close a file, or detach from a borrowed binary stream.

        After a failed write nothing more is tried: the unwritten rest is dropped, and a
        borrowed stream's descriptor is pointed at the null device so that the interpreter's
        own flush at exit does not fail again.
        """
        if self._failed and self.borrowed:
            _silence(self.stream)
        elif not self._failed:
            self._write("")
        try:
            if self.borrowed and isinstance(self.stream, io.TextIOWrapper):
                self.stream.detach()
            else:
                self.stream.close()
        except OSError as exc:
            if not self._failed:
                raise QualityNetError(f"{self.name}: cannot close the output ({exc.strerror or exc})") from None


def _silence(stream: TextIO) -> None:
    """Point a failed stream's descriptor at the null device (its buffered bytes then go nowhere)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
