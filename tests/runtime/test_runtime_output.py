"""Output rows: CSV and JSONL, flushed per batch, locked, resumable after a kill mid-write."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from qualitynet.errors import QualityNetError
from qualitynet.runtime.discovery import path_key
from qualitynet.runtime.output import ModelIdentity, open_output, runs_path, scan_output
from qualitynet.runtime.summary import RunStats
from qualitynet.runtime.types import ScoreRecord
from qualitynet.runtime.writer import RecordWriter, format_for

MODEL = ModelIdentity("ab" * 32, "fp32", "tiny", "model.onnx")
ODD = os.fsdecode(b"caf\xe9, \"quoted\" (1).jpg")  # not UTF-8, a comma, quotes, parentheses
RECORDS = [ScoreRecord("a.jpg", 3.25), ScoreRecord(ODD, 4.0), ScoreRecord("bad.png", None, "cannot read image")]
# Every kind of name a Linux file system allows that CSV or a spreadsheet could trip on.
HOSTILE = [os.fsdecode(name) for name in (
    b"bare\rreturn.jpg", b"line\nfeed.jpg", b"crlf\r\n.jpg", b"\r", b"\n", b'"', b",", b" lead and trail ",
    b"=HYPERLINK(\"x\").jpg", b"+1.jpg", b"-2.jpg", b"@SUM(A1).jpg", b"\tcell.jpg", b"\xff\xfe\x85\xe2\x80\xa8.jpg",
)]


def _open(out: Path, fmt: str, resume: bool = False, model: ModelIdentity = MODEL,
          **kwargs: bool) -> tuple[RecordWriter, set[str]]:
    return open_output(out, fmt, resume=resume, overwrite=False, model=model, **kwargs)


def _paths(out: Path, fmt: str) -> list[str]:
    with open(out, "rb") as handle:
        return scan_output(handle, fmt).paths


def test_format_from_suffix_unless_given() -> None:
    assert format_for(Path("s.jsonl"), None) == "jsonl" and format_for(Path("s.NDJSON"), None) == "jsonl"
    assert format_for(Path("s.csv"), None) == "csv" and format_for(None, None) == "csv"
    assert format_for(Path("s.txt"), "jsonl") == "jsonl"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_round_trip_and_resume_keys(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"scores.{fmt}"
    writer, done = _open(out, fmt)
    assert done == set()
    writer.write_batch(RECORDS[:2])
    assert _paths(out, fmt) == ["a.jpg", ODD], "flushed after the batch"
    writer.write_batch(RECORDS[2:])
    writer.close()
    appended, done = _open(out, fmt, resume=True)
    assert done == {path_key(r.path) for r in RECORDS}
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
def test_every_legal_name_round_trips_exactly(tmp_path: Path, fmt: str) -> None:
    """Bare \\r, newlines, quotes and formula-looking names come back as written, one row each."""
    out = tmp_path / f"scores.{fmt}"
    writer, _ = _open(out, fmt)
    writer.write_batch([ScoreRecord(name, float(i)) for i, name in enumerate(HOSTILE)])
    writer.close()
    assert _paths(out, fmt) == HOSTILE
    _, done = _open(out, fmt, resume=True)
    assert done == {path_key(name) for name in HOSTILE}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("cut", [1, 5, 12, -1])
def test_a_torn_last_record_is_found_by_parsing_and_cut(tmp_path: Path, fmt: str, cut: int) -> None:
    """A kill inside a quoted multi-line field (CSV) or a JSON line leaves a torn record: it is cut."""
    out = tmp_path / "scores.out"
    writer, _ = _open(out, fmt)
    writer.write_batch(RECORDS[:1])
    writer.close()
    whole = out.read_bytes()
    writer, _ = _open(out, fmt, resume=True)
    writer.write_batch([ScoreRecord("multi\nline\r\nname.jpg", 2.5)])
    writer.close()
    full = out.read_bytes()
    out.write_bytes(full[: len(whole) + cut] if cut > 0 else full[:-1])
    _, done = _open(out, fmt, resume=True)
    assert done == {path_key("a.jpg")}
    assert out.read_bytes() == whole


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_never_changes_a_file_that_is_not_a_scores_file(tmp_path: Path, photo_dir: Path, fmt: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"name,value\nx,1\nhalf a line without newline")
    photo = tmp_path / "a.jpg"
    photo.write_bytes(next(photo_dir.glob("*.jpg")).read_bytes())
    header_only = tmp_path / "looks.csv"
    header_only.write_bytes(b"path,score,error\nx.jpg,not a number,\ntorn")
    for victim in (notes, photo, header_only):
        before = victim.read_bytes()
        with pytest.raises(QualityNetError, match="not a .* scores file of iqa-run.*nothing was changed"):
            _open(victim, fmt, resume=True)
        assert victim.read_bytes() == before and not runs_path(victim).exists(), victim.name


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    first, _ = _open(out, "csv")
    first.write_batch(RECORDS[:1])
    with pytest.raises(QualityNetError, match=rf"being written by process {os.getpid()}\b"):
        _open(out, "csv", resume=True)
    first.close()
    second, done = _open(out, "csv", resume=True)
    second.close()
    assert done == {path_key("a.jpg")}


def test_resume_with_another_model_is_refused_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    writer, _ = _open(out, "csv")
    writer.write_batch(RECORDS)
    writer.close()
    record = json.loads(runs_path(out).read_text())
    assert record["runs"][0]["model"]["checkpoint_sha256"] == MODEL.checkpoint_sha256
    assert record["runs"][0]["model"]["precision"] == "fp32"
    fp16 = ModelIdentity(MODEL.checkpoint_sha256, "fp16", "tiny", "model.fp16.onnx")
    before = out.read_bytes()
    with pytest.raises(QualityNetError, match="another model.*--allow-other-model"):
        _open(out, "csv", resume=True, model=fp16)
    assert out.read_bytes() == before
    same = ModelIdentity(MODEL.checkpoint_sha256, "fp32", "tiny", "renamed.onnx")
    _open(out, "csv", resume=True, model=same)[0].close()
    writer, done = _open(out, "csv", resume=True, model=fp16, allow_other_model=True)
    writer.close()
    assert len(done) == 3 and len(json.loads(runs_path(out).read_text())["runs"]) == 3


def test_resume_keys_rows_by_the_directory_they_were_written_from(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "photos").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    out = tmp_path / "scores.csv"
    monkeypatch.chdir(tmp_path / "a")
    writer, _ = _open(out, "csv")
    writer.write_batch([ScoreRecord("photos/x.jpg", 1.0)])
    writer.close()
    monkeypatch.chdir(tmp_path / "b")
    writer, done = _open(out, "csv", resume=True)
    writer.write_batch([ScoreRecord("../a/photos/y.jpg", 2.0)])
    writer.close()
    assert done == {path_key(str(tmp_path / "a" / "photos" / "x.jpg"))}
    monkeypatch.chdir(tmp_path)
    _, done = _open(out, "csv", resume=True)
    assert done == {path_key(f"a/photos/{name}") for name in ("x.jpg", "y.jpg")}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_retry_errors_removes_error_rows_so_their_files_are_scored_again(tmp_path: Path, fmt: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Error rows stay (and are skipped) on a plain resume; with retry_errors they go, the rest stays byte for
    byte, the runs record still keys each kept row by its run's directory, and the lock holds on the new file."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = tmp_path / f"scores.{fmt}"
    monkeypatch.chdir(tmp_path / "a")
    writer, _ = _open(out, fmt)
    writer.write_batch([ScoreRecord("x.jpg", None, "file not found"), ScoreRecord("y.jpg", 1.5)])
    writer.close()
    monkeypatch.chdir(tmp_path / "b")
    writer, _ = _open(out, fmt, resume=True)
    writer.write_batch([ScoreRecord(name, None, "file not found") for name in HOSTILE[:3]]
                       + [ScoreRecord(ODD, 2.0), ScoreRecord("z.jpg", None, "cannot read image (x, y)")])
    writer.close()
    plain, done = _open(out, fmt, resume=True)
    plain.close()
    assert len(done) == 7, "a plain resume skips error rows too"
    with open(out, "rb") as handle:
        kept_bytes = [line for line in handle.read().split(b"\n") if b"1.5" in line or b"2.0" in line]

    writer, done = _open(out, fmt, resume=True, retry_errors=True)
    assert done == {path_key(str(tmp_path / "a" / "y.jpg")), path_key(ODD)}
    assert _paths(out, fmt) == ["y.jpg", ODD]
    assert all(line in out.read_bytes() for line in kept_bytes)
    with pytest.raises(QualityNetError, match="being written by process"):
        _open(out, fmt, resume=True)
    writer.write_batch([ScoreRecord("z.jpg", 3.0)])
    writer.close()
    assert _paths(out, fmt) == ["y.jpg", ODD, "z.jpg"]
    assert not list(tmp_path.glob(".*.tmp")), "no copy left behind"
    monkeypatch.chdir(tmp_path)
    _, done = _open(out, fmt, resume=True)
    assert done == {path_key(p) for p in ("a/y.jpg", f"b/{ODD}", "b/z.jpg")}


def test_stdout_writer_detaches_without_closing() -> None:
    binary = io.BytesIO()
    writer = RecordWriter.to_binary(binary, "csv")
    writer.write_batch(RECORDS[:1])
    writer.close()
    assert not binary.closed and binary.getvalue() == b"path,score,error\na.jpg,3.25,\n"


def test_a_failed_write_is_one_error_naming_the_output(tmp_path: Path) -> None:
    writer, _ = open_output(Path("/dev/full"), "csv", resume=False, overwrite=False, model=MODEL)
    with pytest.raises(QualityNetError, match=r"^/dev/full: cannot write the output \(No space left on device\)"):
        writer.write_batch(RECORDS)
    writer.close()  # nothing more is tried, nothing raised


def test_summary_counts_and_percentiles() -> None:
    stats = RunStats()
    stats.add([ScoreRecord(str(i), float(i)) for i in range(1, 101)] + RECORDS[2:])
    text = stats.summary()
    assert stats.scored == 100 and stats.failed == 1
    assert "scored 100, failed 1" in text and "img/s" in text and "mean 50.500" in text
    assert "p5/p50/p95 5.950/50.500/95.050" in text
