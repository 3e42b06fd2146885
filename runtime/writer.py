"""Writing score rows as CSV or JSONL, flushed per batch, and resuming an interrupted file.

Each batch's rows are written and flushed together, so a run that is killed keeps every
batch it finished. Resuming first cuts a half-written last line (a kill mid-write), then
reads the paths already present so they are skipped, and appends. Paths are written as
found; names that are not valid UTF-8 round-trip through ``surrogateescape``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, TextIO

from qualitynet.errors import QualityNetError
from qualitynet.runtime.discovery import path_key
from qualitynet.runtime.types import OUTPUT_FIELDS, ScoreRecord

__all__ = ["FORMATS", "RecordWriter", "format_for", "read_done"]

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Paths that are not valid UTF-8 (possible on POSIX) round-trip through surrogateescape.
_ERRORS = "surrogateescape"


def format_for(output: Path | None, fmt: str | None) -> str:
    """The output format: ``fmt`` when given, else from the file suffix (``.jsonl``/``.ndjson``), else csv."""
    if fmt:
        return fmt
    return "jsonl" if output is not None and output.suffix.lower() in _JSONL_SUFFIXES else "csv"


def _drop_partial_line(path: Path) -> None:
    """Cut the file back to its last newline (a run killed mid-write leaves half a row)."""
    with open(path, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - 65536)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = start + newline + 1
                break
            position = start
        if position != end:
            logger.warning("%s: dropped a half-written last row (%d bytes)", path, end - position)
            handle.truncate(position)


def read_done(output: Path, fmt: str) -> set[str]:
    """Keys (:func:`path_key`) of the files an earlier run already wrote to ``output``.

    Args:
        output: the existing output file (a missing or empty one holds nothing).
        fmt: ``csv`` or ``jsonl``.

    Raises:
        QualityNetError: the file is not an output of this command in that format.
    """
    if not output.is_file() or output.stat().st_size == 0:
        return set()
    _drop_partial_line(output)
    done: set[str] = set()
    with open(output, newline="", encoding="utf-8", errors=_ERRORS) as handle:
        if fmt == "csv":
            rows = csv.reader(handle)
            header = next(rows, None)
            if header is not None and tuple(header) != OUTPUT_FIELDS:
                raise QualityNetError(
                    f"{output}: cannot resume, its header is {header} instead of {list(OUTPUT_FIELDS)}; "
                    "is it another file, or JSONL (pass --format jsonl)?"
                )
            done.update(path_key(row[0]) for row in rows if row)
        else:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        done.add(path_key(json.loads(line)["path"]))
                    except (ValueError, KeyError, TypeError):
                        raise QualityNetError(
                            f"{output}:{number}: cannot resume, not a JSONL row with a 'path' "
                            "(is it CSV? pass --format csv)"
                        ) from None
    return done


class RecordWriter:
    """Writes :class:`ScoreRecord` rows to a text stream, flushing after each batch.

    Args:
        stream: an open text stream (``newline=""`` for CSV).
        fmt: ``csv`` or ``jsonl``.
        header: write the CSV header first (a new or empty file).
        borrowed: the stream wraps one the caller owns (stdout): detach instead of closing.
    """

    def __init__(self, stream: TextIO, fmt: str, header: bool = True, borrowed: bool = False) -> None:
        if fmt not in FORMATS:
            raise QualityNetError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.stream = stream
        self.fmt = fmt
        self.borrowed = borrowed
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None and header:
            self._csv.writerow(OUTPUT_FIELDS)
            stream.flush()

    @classmethod
    def to_file(cls, output: Path, fmt: str, append: bool) -> RecordWriter:
        """Open ``output`` (appending when resuming); the header goes only into an empty file."""
        try:
            stream = open(output, "a" if append else "w", newline="", encoding="utf-8", errors=_ERRORS)
        except OSError as exc:
            raise QualityNetError(f"{output}: cannot write the output ({exc.strerror or exc})") from None
        return cls(stream, fmt, header=stream.tell() == 0)

    @classmethod
    def to_binary(cls, binary: BinaryIO, fmt: str) -> RecordWriter:
        """Write to a binary stream such as stdout's buffer (left open on :meth:`close`)."""
        return cls(io.TextIOWrapper(binary, encoding="utf-8", errors=_ERRORS, newline=""), fmt, borrowed=True)

    def write_batch(self, records: Iterable[ScoreRecord]) -> None:
        """Write the rows of one batch and flush them."""
        for record in records:
            score = None if record.score is None else round(float(record.score), 6)
            if self._csv is not None:
                self._csv.writerow((record.path, "" if score is None else score, record.error))
            else:
                row = {"path": record.path, "score": score, "error": record.error}
                self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Flush; close a file, or detach from a borrowed binary stream."""
        self.stream.flush()
        if self.borrowed and isinstance(self.stream, io.TextIOWrapper):
            self.stream.detach()
        else:
            self.stream.close()
