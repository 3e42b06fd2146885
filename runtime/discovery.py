"""Finding the image files to score: folders, explicit files and file lists.

Everything here streams (generators), so a folder of millions of files starts scoring at
once. A file is taken when its suffix is an image suffix (any case), or when it has no
suffix and its first bytes are an image signature. Only regular files are ever opened:
a suffix-less FIFO, socket or device is yielded unopened (the decoder gives it an error
row), since opening a FIFO blocks forever. Files that cannot be opened are still yielded
when their name says image: the decoder then reports why, so each appears once in the
output with its error instead of vanishing.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

__all__ = ["IMAGE_SUFFIXES", "expand_photos", "iter_folder", "iter_inputs", "looks_like_image", "path_key",
           "read_file_list"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff"}
)
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")


def _sniff(path: str) -> bool:
    """True when a suffix-less file starts with a JPEG, PNG, WebP, BMP or TIFF signature, or is
    not a regular file (it gets an error row rather than vanishing)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return True
        # Non-blocking, and checked again once open: the entry may have been swapped for a FIFO.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True
        head = os.read(fd, 12)
    except OSError:
        return False
    finally:
        os.close(fd)
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@functools.lru_cache(maxsize=4096)
def _real_dir(folder: str) -> str:
    return os.path.realpath(folder)


def path_key(path: str, base: str | None = None) -> str:
    """One key per directory entry, however it was reached (``./a``, ``b/../a``, a linked folder).

    The folder is resolved (symlinks included) but the file name is kept, so two names for
    one file (links) stay two entries while one entry found by two routes is one.

    Args:
        path: a file's path.
        base: the directory a relative ``path`` is relative to (default: the working directory).
    """
    if base is not None:
        path = os.path.join(base, path)
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(_real_dir(folder), name)


def looks_like_image(path: str) -> bool:
    """Whether a file found in a folder should be scored (by suffix, or sniffed when it has none).

    Args:
        path: the file's path.

    Returns:
        True for an image suffix in any case, or for a suffix-less file with an image signature.
    """
    suffix = os.path.splitext(path)[1]
    return suffix.lower() in IMAGE_SUFFIXES if suffix else _sniff(path)


def iter_folder(folder: str | Path, recursive: bool = True,
                seen: set[tuple[int, int]] | None = None) -> Iterator[str]:
    """Image files under ``folder`` in a stable (sorted) order.

    Directory symlinks are followed, each real directory once, so symlink loops end.
    Unlistable directories are logged and skipped.

    Args:
        folder: the folder to walk.
        recursive: also walk sub-folders.
        seen: ``(device, inode)`` of directories already walked; shared between calls so
            overlapping folders are walked once.

    Yields:
        Paths as ``folder`` joined with the relative path.
    """
    seen = set() if seen is None else seen

    def on_error(exc: OSError) -> None:
        logger.warning("cannot list %s: %s", exc.filename, exc.strerror or exc)

    for dirpath, dirnames, filenames in os.walk(os.fspath(folder), followlinks=True, onerror=on_error):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames.clear()
            continue
        if (info.st_dev, info.st_ino) in seen:
            logger.debug("skipping %s: directory already walked (symlink loop)", dirpath)
            dirnames.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(dirnames) if recursive else []
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if looks_like_image(path):
                yield path


def expand_photos(photos: str | Path | Sequence[str | Path]) -> list[str]:
    """A photos argument as a list of paths: a folder's images (:func:`iter_folder`), one file, or the
    files of a list, in order (a missing path is kept, so that reading it reports it)."""
    if isinstance(photos, (str, Path)):
        return list(iter_folder(photos)) if Path(photos).is_dir() else [str(photos)]
    return [str(path) for path in photos]


def read_file_list(stream: TextIO) -> Iterator[str]:
    """Paths listed one per line (blank lines and surrounding newlines ignored)."""
    for line in stream:
        path = line.rstrip("\r\n")
        if path.strip():
            yield path


def iter_inputs(inputs: Iterable[str | Path], recursive: bool = True) -> Iterator[str]:
    """Expand folders and pass files through, each real path once.

    Args:
        inputs: folders and files (a folder is walked, a file is taken whatever its suffix,
            a missing path is passed on so the decoder reports it).
        recursive: walk sub-folders of the folders.

    Yields:
        Paths to score, without duplicates (compared by :func:`path_key`).
    """
    seen: set[str] = set()
    walked: set[tuple[int, int]] = set()
    for item in inputs:
        item = os.fspath(item)
        paths = iter_folder(item, recursive, walked) if os.path.isdir(item) else iter([item])
        for path in paths:
            key = path_key(path)
            if key not in seen:
                seen.add(key)
                yield path
