"""The output file of a run: locked for the whole run, checked before a byte changes, resumable.

:func:`open_output` takes an exclusive lock on the output (a second run on the same file is
refused, naming the process that holds it), then prepares it:

- new: refused when the file already has content (unless ``overwrite``);
- ``resume``: every record is parsed first, read-only; a file that is not a scores file
  in the chosen format is refused untouched. Only then is a torn last record (a kill in
  mid-write, found by parsing, so a quoted multi-line field counts) cut off. Rows that carry
  an error are kept, and their files not scored again, unless ``retry_errors``: then the
  file is rewritten without them (a copy renamed over it) and those files are scored anew.

Next to the output a small record, ``<output>.iqa-run.json``, lists the runs that wrote it:
the model (checkpoint hash and precision), the working directory and the first record of
each. ``resume`` refuses another model unless asked, and keys each existing row relative
to the directory its run worked in, so a resume from another directory still recognises
every file.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from qualitynet.artifact import ArtifactMeta, PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.runtime.discovery import path_key
from qualitynet.runtime.types import OUTPUT_FIELDS
from qualitynet.runtime.writer import ENCODING_ERRORS, RecordWriter

__all__ = ["RUNS_SUFFIX", "ModelIdentity", "Scan", "open_output", "runs_path", "scan_output"]

logger = logging.getLogger(__name__)

RUNS_SUFFIX = ".iqa-run.json"
_RUNS_FORMAT = "qualitynet-runs/1"
_HEADER = ",".join(OUTPUT_FIELDS) + "\n"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a run's scores, and how it saw the images: two runs mix cleanly only with the
    same checkpoint, precision and (where both recorded it) decode and view."""

    checkpoint_sha256: str
    precision: str
    config_name: str = ""
    file: str = ""
    preprocessing: str = ""  # PreprocessCfg.describe() of the decode and view used; "" from older runs

    @classmethod
    def of(cls, meta: ArtifactMeta, model_path: str | Path, preprocess: PreprocessCfg | None = None,
           decoder: str = "pillow") -> ModelIdentity:
        """The identity of a loaded artifact, scoring with ``preprocess`` (default: its record's) decoded by
        ``decoder`` (named only when it is not Pillow, so older runs' records still match)."""
        described = (preprocess or meta.preprocess).describe() + ("" if decoder == "pillow" else f", by {decoder}")
        return cls(meta.checkpoint_sha256, meta.precision, meta.config_name, Path(model_path).name, described)

    def same_scores(self, other: ModelIdentity) -> bool:
        """Whether both come from one checkpoint at one precision, decoding and viewing images alike
        (the file name may differ)."""
        views = {self.preprocessing, other.preprocessing} - {""}
        return (self.checkpoint_sha256, self.precision) == (other.checkpoint_sha256, other.precision) and len(views) < 2

    def __str__(self) -> str:
        checkpoint = self.checkpoint_sha256[:12] or "unknown"
        seen = f"; {self.preprocessing}" if self.preprocessing else ""
        return f"{self.file or self.config_name} ({self.precision}, checkpoint {checkpoint}{seen})"


@dataclass(frozen=True)
class _Run:
    model: ModelIdentity | None  # None: rows an older iqa-run wrote without a record
    cwd: str
    first_record: int
    pid: int
    started: str


@dataclass(frozen=True)
class Scan:
    """What an existing output holds: its records' paths, and where the last complete record ends.

    ``ends[i]`` is the byte offset after record ``i`` (the header, if any, ends at ``start``), and
    ``failed[i]`` whether its error field is set.
    """

    paths: list[str]
    end: int
    size: int
    ends: list[int] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)
    start: int = 0


def runs_path(output: Path) -> Path:
    """``scores.csv`` -> ``scores.csv.iqa-run.json``."""
    return output.with_name(output.name + RUNS_SUFFIX)


def _not_ours(output: object, why: str, fmt: str) -> QualityNetError:
    other = "jsonl" if fmt == "csv" else "csv"
    return QualityNetError(
        f"{output}: cannot resume, it is not a {fmt.upper()} scores file of iqa-run ({why}); nothing was changed. "
        f"Choose another --output, or pass --format {other} if it is {other.upper()}"
    )


def _lines(handle: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """Raw lines (split at ``\\n`` only) and the byte offset after each."""
    offset = 0
    for raw in handle:
        offset += len(raw)
        yield raw, offset


def _score_ok(text: str) -> bool:
    try:
        return text == "" or math.isfinite(float(text))
    except ValueError:
        return False


def _scan_csv(handle: BinaryIO, size: int, name: object) -> Scan:
    paths: list[str] = []
    state = {"offset": 0, "terminated": True, "line": 0}

    def text() -> Iterator[str]:
        for raw, offset in _lines(handle):
            state.update(offset=offset, terminated=raw.endswith(b"\n"), line=state["line"] + 1)
            yield raw.decode("utf-8", ENCODING_ERRORS)

    reader = csv.reader(text(), strict=True)
    end = start = 0
    ends: list[int] = []
    failed: list[bool] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if state["offset"] == size:  # the data ended inside a record: torn
                break
            raise _not_ours(name, f"line {state['line']}: {exc}", "csv") from None
        if not state["terminated"]:
            break  # the last record lacks its newline: torn
        if end == 0:
            if tuple(fields) != OUTPUT_FIELDS:
                raise _not_ours(name, f"its first line is {fields!r}, not {','.join(OUTPUT_FIELDS)}", "csv")
            start = state["offset"]
        elif len(fields) != 3 or not _score_ok(fields[1]):
            raise _not_ours(name, f"line {state['line']} is not a path,score,error row", "csv")
        else:
            paths.append(fields[0])
            ends.append(state["offset"])
            failed.append(fields[2] != "")
        end = state["offset"]
    if end == 0 and size:
        handle.seek(0)
        head = handle.read(len(_HEADER))
        if not _HEADER.encode().startswith(head):
            raise _not_ours(name, f"its first line is not {_HEADER.strip()}", "csv")
    return Scan(paths, end, size, ends, failed, start)


def _scan_jsonl(handle: BinaryIO, size: int, name: object) -> Scan:
    paths: list[str] = []
    ends: list[int] = []
    failed: list[bool] = []
    end = 0
    for number, (raw, offset) in enumerate(_lines(handle), 1):
        if not raw.endswith(b"\n"):
            break  # torn
        if raw.strip():
            try:
                row = json.loads(raw.decode("utf-8", ENCODING_ERRORS))
                valid = (isinstance(row, dict) and isinstance(row.get("path"), str)
                         and isinstance(row.get("error"), str) and _score_ok(str(row.get("score") or "")))
            except ValueError:
                valid = False
            if not valid:
                raise _not_ours(name, f"line {number} is not a JSON row with path, score and error", "jsonl")
            paths.append(row["path"])
            ends.append(offset)
            failed.append(row["error"] != "")
        end = offset
    return Scan(paths, end, size, ends, failed)


def scan_output(handle: BinaryIO, fmt: str, name: object = "output") -> Scan:
    """Parse an existing output, read-only.

    Args:
        handle: the file, opened binary at its start.
        fmt: ``csv`` or ``jsonl``.
        name: how messages name it.

    Returns:
        The records' paths, the offset where the last complete one ends (a torn record
        after it is the caller's to cut) and the file's size.

    Raises:
        QualityNetError: the file is not a scores file of this command in that format.
    """
    size = os.fstat(handle.fileno()).st_size
    return (_scan_csv if fmt == "csv" else _scan_jsonl)(handle, size, name)


def _read_runs(output: Path) -> list[_Run] | None:
    """The runs recorded next to ``output``; ``None`` when it has no record (an older iqa-run wrote it)."""
    path = runs_path(output)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != _RUNS_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        return [_Run(ModelIdentity(**run["model"]) if run["model"] else None, run["cwd"], int(run["first_record"]),
                     int(run["pid"]), run["started"]) for run in data["runs"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise QualityNetError(
            f"{path}: cannot read the record of the runs that wrote {output.name} ({exc}); "
            "delete it to resume without the model check"
        ) from None


def _write_runs(output: Path, fmt: str, runs: list[_Run]) -> None:
    """Replace the runs record atomically (a kill leaves the old or the new one)."""
    path = runs_path(output)
    data: dict[str, Any] = {
        "format": _RUNS_FORMAT, "output": output.name, "output_format": fmt,
        "runs": [{**asdict(run), "model": asdict(run.model) if run.model else None} for run in runs],
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise QualityNetError(f"{path}: cannot write the record of this run ({exc.strerror or exc})") from None


def _check_model(output: Path, runs: list[_Run], model: ModelIdentity, allow_other_model: bool) -> None:
    others = [run.model for run in runs if run.model is not None and not run.model.same_scores(model)]
    if others and not allow_other_model:
        raise QualityNetError(
            f"{output} holds scores of another model, {others[0]}; this run's model is {model}, so resuming "
            "would mix their scores. Choose another --output, pass --overwrite to start again, or "
            "--allow-other-model to mix them on purpose"
        )
    if others:
        logger.warning("%s: appending scores of %s to those of %s (--allow-other-model)", output, model, others[0])
    if any(run.model is None for run in runs):
        logger.warning("%s: its earlier rows record no model (an older iqa-run wrote them); assuming %s",
                       output, model)


def _keys(paths: list[str], runs: list[_Run]) -> set[str]:
    """Resume keys: each row's path, relative to the directory of the run that wrote it."""
    keys = set()
    for index, path in enumerate(paths):
        base = next((run.cwd for run in reversed(runs) if run.first_record <= index), None)
        keys.add(path_key(path, base))
    return keys


def _lock_holder(fd: int, runs: list[_Run] | None) -> str:
    """The process holding the lock on ``fd``'s file, from ``/proc/locks`` or else from the runs record."""
    info = os.fstat(fd)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2d:1234 0 EOF" (lines of waiting locks contain "->")
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and "->" not in parts and parts[5].endswith(f":{info.st_ino}"):
            pid = parts[4]
            try:
                words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split()
            except OSError:
                words = []
            return f"process {pid}" + (f" ({' '.join(words)[:120]})" if words else "")
    if runs:
        return f"process {runs[-1].pid} (the last run recorded in {RUNS_SUFFIX})"
    return "another process"


def _lock(fd: int, output: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; runs on one output are the user's to keep apart
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            runs = _read_runs(output)
        except QualityNetError:
            runs = None
        holder = _lock_holder(fd, runs)
        raise QualityNetError(
            f"{output} is being written by {holder}; wait for that run to end (or stop it), or choose another --output"
        ) from None


def _without_failed(fd: int, output: Path, scan: Scan) -> int:
    """Replace the locked output by a copy without its error rows; returns the copy's descriptor, locked.

    The copy is written and locked beside the output, then renamed over it: a kill leaves the old
    file or the new one, and a run that opens the path after the rename finds the lock.
    """
    temporary = output.with_name(f".{output.name}.{os.getpid()}.retry.tmp")
    new = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        _lock(new, temporary)
        os.fchmod(new, stat.S_IMODE(os.fstat(fd).st_mode))
        with os.fdopen(os.dup(fd), "rb") as source, os.fdopen(os.dup(new), "wb") as target:
            source.seek(0)
            target.write(source.read(scan.start))
            begin = scan.start
            for end, failed in zip(scan.ends, scan.failed, strict=True):
                if not failed:
                    source.seek(begin)
                    target.write(source.read(end - begin))
                begin = end
            target.flush()
            os.fsync(target.fileno())
        os.replace(temporary, output)
    except BaseException:
        os.close(new)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    return new


def _prepare(fd: int, output: Path, fmt: str, resume: bool, overwrite: bool, model: ModelIdentity,
             allow_other_model: bool, retry_errors: bool) -> tuple[int, set[str], int, list[_Run]]:
    """Check and trim the locked file (``fd``, replaced when error rows are dropped); return its
    descriptor, the resume keys, the records kept and the earlier runs."""
    size = os.fstat(fd).st_size
    if size and not resume and not overwrite:
        raise QualityNetError(
            f"{output} already exists; pass --resume to score only the files it lacks, or --overwrite to replace it"
        )
    if not resume or size == 0:
        os.ftruncate(fd, 0)
        return fd, set(), 0, []
    with os.fdopen(os.dup(fd), "rb") as handle:
        scan = scan_output(handle, fmt, output)
    runs = _read_runs(output)
    if runs is None:
        runs = [_Run(None, os.getcwd(), 0, 0, "")]
    _check_model(output, runs, model, allow_other_model)
    if scan.end < scan.size:
        logger.warning("%s: dropped a half-written last record (%d bytes)", output, scan.size - scan.end)
        os.ftruncate(fd, scan.end)
    paths = scan.paths
    if retry_errors and any(scan.failed):
        fd = _without_failed(fd, output, scan)
        kept = [i for i, failed in enumerate(scan.failed) if not failed]
        logger.info("%s: removed %d rows with an error (--retry-errors); those files are scored again", output,
                    len(paths) - len(kept))
        runs = [dataclasses.replace(run, first_record=sum(1 for i in kept if i < run.first_record)) for run in runs]
        paths = [paths[i] for i in kept]
    return fd, _keys(paths, runs), len(paths), runs


def open_output(output: Path, fmt: str, *, resume: bool, overwrite: bool, model: ModelIdentity,
                allow_other_model: bool = False, retry_errors: bool = False) -> tuple[RecordWriter, set[str]]:
    """Open, lock and prepare the output of a run.

    Args:
        output: the file (a device or FIFO is written as it is, unlocked, and cannot be resumed).
        fmt: ``csv`` or ``jsonl``.
        resume: keep the rows there and return their keys; otherwise the file must be empty or missing.
        overwrite: replace whatever is there.
        model: the model of this run (recorded; compared with earlier runs' when resuming).
        allow_other_model: resume even when earlier rows came from another model.
        retry_errors: with ``resume``, remove the rows that carry an error first, so their files
            are scored again (a transient cause: a missing mount, a node without the files).

    Returns:
        A writer appending to the file (closing it releases the lock), and the
        :func:`~qualitynet.runtime.discovery.path_key` keys of the files already there.

    Raises:
        QualityNetError: the file is locked by another run, is not a scores file, holds
            another model's scores, or cannot be written.
    """
    try:
        special = not stat.S_ISREG(os.stat(output).st_mode)
    except FileNotFoundError:
        special = False
    except OSError as exc:
        raise QualityNetError(f"{output}: cannot write the output ({exc.strerror or exc})") from None
    if special and resume:
        raise QualityNetError(f"{output}: cannot resume, it is not a regular file")
    try:
        fd = os.open(output, os.O_WRONLY if special else os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise QualityNetError(f"{output}: cannot write the output ({exc.strerror or exc})") from None
    try:
        kept = 0
        done: set[str] = set()
        if not special:
            _lock(fd, output)
            fd, done, kept, runs = _prepare(fd, output, fmt, resume, overwrite, model, allow_other_model,
                                            retry_errors)
            started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            _write_runs(output, fmt, [*runs, _Run(model, os.getcwd(), kept, os.getpid(), started)])
            os.lseek(fd, 0, os.SEEK_END)
        stream = os.fdopen(fd, "w", encoding="utf-8", errors=ENCODING_ERRORS, newline="")
    except BaseException:
        os.close(fd)
        raise
    empty = special or os.fstat(fd).st_size == 0
    return RecordWriter(stream, fmt, header=empty, name=str(output)), done

