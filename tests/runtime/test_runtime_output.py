"""Output rows: CSV and JSONL, flushed per batch, resumable after a kill mid-write."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from qualitynet.errors import QualityNetError
from qualitynet.runtime.discovery import path_key
from qualitynet.runtime.summary import RunStats
from qualitynet.runtime.types import ScoreRecord
from qualitynet.runtime.writer import RecordWriter, format_for, read_done

ODD = os.fsdecode(b"caf\xe9, \"quoted\" (1).jpg")  # not UTF-8, a comma, quotes, parentheses
RECORDS = [ScoreRecord("a.jpg", 3.25), ScoreRecord(ODD, 4.0), ScoreRecord("bad.png", None, "cannot read image")]


def test_format_from_suffix_unless_given() -> None:
    assert format_for(Path("s.jsonl"), None) == "jsonl" and format_for(Path("s.NDJSON"), None) == "jsonl"
    assert format_for(Path("s.csv"), None) == "csv" and format_for(None, None) == "csv"
    assert format_for(Path("s.txt"), "jsonl") == "jsonl"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_round_trip_and_resume_keys(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"scores.{fmt}"
    writer = RecordWriter.to_file(out, fmt, append=False)
    writer.write_batch(RECORDS[:2])
    assert read_done(out, fmt) == {path_key("a.jpg"), path_key(ODD)}, "flushed after the batch"
    writer.write_batch(RECORDS[2:])
    writer.close()
    assert read_done(out, fmt) == {path_key(r.path) for r in RECORDS}
    appended = RecordWriter.to_file(out, fmt, append=True)
    appended.write_batch([ScoreRecord("c.jpg", 1.0)])
    appended.close()
    text = out.read_text(encoding="utf-8", errors="surrogateescape")
    if fmt == "csv":
        assert text.splitlines()[0] == "path,score,error" and text.count("path,score,error") == 1
        assert text.splitlines()[3] == "bad.png,,cannot read image"
    else:
        rows = [json.loads(line) for line in text.splitlines()]
        assert rows[2] == {"path": "bad.png", "score": None, "error": "cannot read image"}
        assert rows[0] == {"path": "a.jpg", "score": 3.25, "error": ""}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_half_written_last_row_is_dropped_on_resume(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "scores.out"
    writer = RecordWriter.to_file(out, fmt, append=False)
    writer.write_batch(RECORDS[:1])
    writer.close()
    with open(out, "ab") as handle:
        handle.write(b'/photos/half-writ')  # killed mid-write
    assert read_done(out, fmt) == {path_key("a.jpg")}
    assert out.read_bytes().endswith(b"\n")


def test_resume_refuses_a_foreign_file(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("name,value\nx,1\n")
    with pytest.raises(QualityNetError, match="header"):
        read_done(other, "csv")
    with pytest.raises(QualityNetError, match="not a JSONL row"):
        read_done(other, "jsonl")
    assert read_done(tmp_path / "missing.csv", "csv") == set()


def test_stdout_writer_detaches_without_closing() -> None:
    binary = io.BytesIO()
    writer = RecordWriter.to_binary(binary, "csv")
    writer.write_batch(RECORDS[:1])
    writer.close()
    assert not binary.closed and binary.getvalue() == b"path,score,error\na.jpg,3.25,\n"


def test_summary_counts_and_percentiles() -> None:
    stats = RunStats()
    stats.add([ScoreRecord(str(i), float(i)) for i in range(1, 101)] + RECORDS[2:])
    text = stats.summary()
    assert stats.scored == 100 and stats.failed == 1
    assert "scored 100, failed 1" in text and "img/s" in text and "mean 50.500" in text
    assert "p5/p50/p95 5.950/50.500/95.050" in text
