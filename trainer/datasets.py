"""Parsers for the standard IQA datasets' own file layouts, and reproducible splits.

Each parser returns a :class:`DatasetIndex`: image paths, MOS values, a grouping key (the
reference image for synthetic-distortion datasets, so no content leaks across splits) and
the dataset's MOS scale. No torch here.

Layouts (``root`` is ``--data-root``):

- ``koniq10k``: ``koniq10k_scores_and_distributions.csv`` (``image_name``, ``MOS`` 1-5),
  images in ``1024x768/`` or ``512x384/``.
- ``livec``: ``Data/AllImages_release.mat``, ``Data/AllMOS_release.mat`` (0-100), images in
  ``Images/``; the first 7 entries are the training examples and are dropped (1,162 remain).
- ``tid2013``: ``mos_with_names.txt`` (``score name`` per line, 0-9), ``distorted_images/``;
  grouped by reference (``i01_...`` -> ``01``).
- ``kadid10k``: ``dmos.csv`` (``dist_img``, ``ref_img``, ``dmos`` 1-5), ``images/``; grouped by
  ``ref_img``.
- ``csv``: any CSV with a path column and a score column (names configurable); paths are
  relative to ``root`` (default: the CSV's folder).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from qualitynet.artifact import ScoreScale
from qualitynet.errors import QualityNetError

__all__ = [
    "DATASETS",
    "DatasetIndex",
    "Split",
    "check_images",
    "load_dataset",
    "make_split",
]

DATASETS = ("csv", "koniq10k", "livec", "tid2013", "kadid10k")


@dataclass
class DatasetIndex:
    """Images of one dataset with their MOS and grouping keys.

    ``groups`` keep related content in one split; ``references`` name the reference image
    each image is a version of, for the within-image ranking metric
    (:func:`qualitynet.trainer.metrics.within_srocc`); empty means the group is the reference.
    """

    name: str
    root: Path
    paths: list[Path]
    mos: np.ndarray
    groups: list[str]
    score_scale: ScoreScale
    references: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def reference(self, index: int) -> str:
        """The reference image that image ``index`` is a version of."""
        return self.references[index] if self.references else self.groups[index]

    def key(self, index: int) -> str:
        """The image's path relative to the dataset root, as stored in ``split.json``."""
        path = self.paths[index]
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def subset(self, keys: Sequence[str]) -> list[int]:
        """Indices of the images named in a split."""
        position = {self.key(i): i for i in range(len(self))}
        missing = [k for k in keys if k not in position]
        if missing:
            raise QualityNetError(
                f"split names {len(missing)} image(s) absent from the {self.name} dataset at {self.root} "
                f"(first: {missing[0]!r}); was the split made for another dataset?"
            )
        return [position[k] for k in keys]


@dataclass
class Split:
    """A seeded train/val/test partition by group, stored as image keys."""

    seed: int
    ratios: tuple[float, float, float]
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Write ``split.json``."""
        path.write_text(json.dumps(self.__dict__, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a ``split.json`` written by :meth:`save`."""
        if not path.is_file():
            raise QualityNetError(f"{path}: split file not found; it is written by iqa-train next to model.pt")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["seed"], tuple(data["ratios"]), data["train"], data["val"], data["test"])


def make_split(index: DatasetIndex, seed: int = 0, ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> Split:
    """Partition whole groups (so content never crosses splits) with a seeded shuffle.

    Every non-empty part gets at least one group when there are at least three groups.
    """
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise QualityNetError(f"split ratios {ratios} must sum to 1")
    groups = sorted(set(index.groups))
    if len(groups) < 3:
        raise QualityNetError(f"{index.name}: {len(groups)} content group(s); a train/val/test split needs >= 3")
    random.Random(seed).shuffle(groups)
    n_test = max(1, round(ratios[2] * len(groups)))
    n_val = max(1, round(ratios[1] * len(groups))) if ratios[1] > 0 else 0
    n_test = min(n_test, len(groups) - n_val - 1)
    part = {g: "test" for g in groups[:n_test]}
    part.update({g: "val" for g in groups[n_test : n_test + n_val]})
    split = Split(seed, ratios)
    for i, group in enumerate(index.groups):
        getattr(split, part.get(group, "train")).append(index.key(i))
    return split


def check_images(paths: Sequence[Path], limit: int = 20) -> None:
    """Fail before training if any image is missing or not decodable by Pillow.

    Raises:
        QualityNetError: one message listing up to ``limit`` bad files and the total count.
    """
    bad: list[str] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            reason = "missing" if not path.exists() else f"{type(exc).__name__}: {exc}"
            bad.append(f"  {path}: {reason}")
    if bad:
        shown = "\n".join(bad[:limit]) + (f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else "")
        raise QualityNetError(f"{len(bad)} of {len(paths)} image(s) cannot be read:\n{shown}")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise QualityNetError(f"{path}: {what} not found; check --data-root and the dataset's layout (see README)")
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(_require(path, "CSV file"), newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], name: str, source: Path) -> list[str]:
    if rows and name not in rows[0]:
        raise QualityNetError(f"{source}: no column {name!r} (columns: {', '.join(rows[0])})")
    return [row[name] for row in rows]


def _floats(values: Sequence[str], source: Path) -> np.ndarray:
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError as exc:
        raise QualityNetError(f"{source}: score column holds a non-number ({exc})") from None


def _load_koniq10k(root: Path) -> DatasetIndex:
    csv_path = root / "koniq10k_scores_and_distributions.csv"
    rows = _read_csv(csv_path)
    image_dir = next((root / d for d in ("1024x768", "512x384") if (root / d).is_dir()), root / "1024x768")
    names = _column(rows, "image_name", csv_path)
    paths = [_require(image_dir, "image folder 1024x768/ or 512x384/") / n for n in names]
    return DatasetIndex("koniq10k", root, paths, _floats(_column(rows, "MOS", csv_path), csv_path), names,
                        ScoreScale(1.0, 5.0, "KonIQ-10k MOS"))


def _load_livec(root: Path) -> DatasetIndex:
    from scipy.io import loadmat

    data = root / "Data"
    names_mat = loadmat(_require(data / "AllImages_release.mat", "LIVEC image list"))["AllImages_release"]
    mos_mat = loadmat(_require(data / "AllMOS_release.mat", "LIVEC MOS file"))["AllMOS_release"]
    names = [str(np.ravel(entry)[0]) for entry in np.ravel(names_mat)][7:]
    mos = np.ravel(mos_mat).astype(np.float64)[7:]
    if len(names) != len(mos):
        raise QualityNetError(f"{data}: {len(names)} image names but {len(mos)} MOS values")
    paths = [root / "Images" / n for n in names]
    return DatasetIndex("livec", root, paths, mos, names, ScoreScale(0.0, 100.0, "LIVEC MOS"))


def _load_tid2013(root: Path) -> DatasetIndex:
    listing = _require(root / "mos_with_names.txt", "TID2013 score list")
    paths, scores, groups = [], [], []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            score, name = line.split(maxsplit=1)
            scores.append(float(score))
        except ValueError:
            raise QualityNetError(f"{listing}:{number}: expected 'score name', got {line!r}") from None
        name = name.strip()
        paths.append(root / "distorted_images" / name)
        groups.append(name[1:3].lower())
    return DatasetIndex("tid2013", root, paths, np.asarray(scores), groups, ScoreScale(0.0, 9.0, "TID2013 MOS"))


def _load_kadid10k(root: Path) -> DatasetIndex:
    csv_path = root / "dmos.csv"
    rows = _read_csv(csv_path)
    paths = [root / "images" / n for n in _column(rows, "dist_img", csv_path)]
    return DatasetIndex("kadid10k", root, paths, _floats(_column(rows, "dmos", csv_path), csv_path),
                        _column(rows, "ref_img", csv_path), ScoreScale(1.0, 5.0, "KADID-10k DMOS"))


def _load_csv(csv_path: Path, root: Path | None, path_column: str, score_column: str,
              score_range: tuple[float, float] | None) -> DatasetIndex:
    rows = _read_csv(csv_path)
    root = root or csv_path.parent
    names = _column(rows, path_column, csv_path)
    mos = _floats(_column(rows, score_column, csv_path), csv_path)
    if not len(mos):
        raise QualityNetError(f"{csv_path}: no rows")
    low, high = score_range or (float(mos.min()), float(mos.max()))
    if high <= low:
        raise QualityNetError(f"{csv_path}: score range {low}..{high} is empty; pass --score-range LOW:HIGH")
    group_column = "group" if "group" in rows[0] else path_column
    references = _column(rows, "reference", csv_path) if "reference" in rows[0] else []
    return DatasetIndex("csv", root, [root / n for n in names], mos, _column(rows, group_column, csv_path),
                        ScoreScale(low, high, f"{csv_path.name} {score_column}"), references)


def load_dataset(name: str, root: str | Path | None = None, csv_path: str | Path | None = None,
                 path_column: str = "image", score_column: str = "score",
                 score_range: tuple[float, float] | None = None) -> DatasetIndex:
    """Index a dataset in its own layout.

    Args:
        name: one of :data:`DATASETS`.
        root: the dataset folder (for ``csv``: the folder image paths are relative to;
            default the CSV's folder).
        csv_path: the CSV file, for ``csv`` only.
        path_column / score_column: column names, for ``csv`` only. A column named
            ``group`` is used, when present, to keep related images in one split, and one
            named ``reference``, when present, names the reference image each row is a
            version of (default: its group).
        score_range: the MOS scale for ``csv`` (default: the observed min and max).

    Returns:
        The dataset's index. Image files are not opened (see :func:`check_images`).
    """
    if name == "csv":
        if csv_path is None:
            raise QualityNetError("--dataset csv needs --csv FILE")
        return _load_csv(Path(csv_path), Path(root) if root else None, path_column, score_column, score_range)
    if name not in DATASETS:
        raise QualityNetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise QualityNetError(f"--dataset {name} needs --data-root DIR")
    root = _require(Path(root), "dataset folder")
    loaders = {"koniq10k": _load_koniq10k, "livec": _load_livec, "tid2013": _load_tid2013, "kadid10k": _load_kadid10k}
    return loaders[name](root)
