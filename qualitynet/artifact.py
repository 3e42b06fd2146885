"""The artifact contract: what a checkpoint, an ONNX model or a TensorRT plan says about itself.

Every exported model carries one :class:`ArtifactMeta` record: in the checkpoint (as a
plain dict), in the ONNX file's ``metadata_props`` (key :data:`ONNX_METADATA_KEY`, a JSON
string) and, for TensorRT plans, in a ``<plan>.json`` sidecar. The runtime reads only this
record to preprocess images and to map the network's output back to the dataset's MOS
scale, so it never imports the trainer.

Only the standard library is used here, so every stage (including the lean runtime) can
import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qualitynet.errors import QualityNetError

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_FORMAT_V1",
    "ArtifactMeta",
    "BatchProfile",
    "CROP_ANCHORS",
    "DECODES",
    "FIVE_CROPS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "MAX_INPUT_SIDE",
    "MosMapping",
    "ONNX_METADATA_KEY",
    "PreprocessCfg",
    "READABLE_FORMATS",
    "ScoreScale",
    "VIEWS",
    "file_sha256",
    "sidecar_path",
]

# Records whose preprocessing uses a view or decode other than the paper's carry format /2, so a
# runtime that predates those fields refuses them at its format check instead of scoring them
# wrongly; every other record is written exactly as before, /1 with no new keys, and any runtime reads it.
ARTIFACT_FORMAT = "qualitynet-artifact/2"
ARTIFACT_FORMAT_V1 = "qualitynet-artifact/1"
READABLE_FORMATS = (ARTIFACT_FORMAT_V1, ARTIFACT_FORMAT)
ONNX_METADATA_KEY = "qualitynet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resize filters a record may name (the runtime maps them to Pillow's).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
# The largest input side a record may claim: far above any IQA network's, far below what exhausts memory.
MAX_INPUT_SIDE = 4096
# The largest short side or decode side a record may name (a 268-megapixel square photo).
MAX_IMAGE_SIDE = 16384
# What the network sees of an image: the whole image resized, or fixed crops whose scores are averaged.
VIEWS = ("resize", "crops")
# How an image file is decoded: in full, or (JPEG only) DCT-scaled by 1/2, 1/4 or 1/8 (see PreprocessCfg).
DECODES = ("full", "dct")
# Where a crop lies: (x, y) as fractions of the room left beside it (0 = left/top edge, 1 = right/bottom).
CROP_ANCHORS: dict[str, tuple[float, float]] = {
    "top-left": (0.0, 0.0), "top": (0.5, 0.0), "top-right": (1.0, 0.0),
    "left": (0.0, 0.5), "center": (0.5, 0.5), "right": (1.0, 0.5),
    "bottom-left": (0.0, 1.0), "bottom": (0.5, 1.0), "bottom-right": (1.0, 1.0),
}
# The usual five: the centre and the four corners.
FIVE_CROPS = ("center", "top-left", "top-right", "bottom-left", "bottom-right")
# A plan's typed TensorRT build flags, which older records kept in ``extra``.
_PLAN_FLAGS = ("version_compatible", "exclude_lean_runtime")


@dataclass(frozen=True)
class PreprocessCfg:
    """How an image file becomes the network's input tensors, and how their scores make the image's.

    Decode (``decode``): ``full`` decodes at full resolution. ``dct`` lets a JPEG decode
    straight from the DCT at the smallest scale of 1/2, 1/4, 1/8 whose width and height
    both stay >= ``decode_side`` (libjpeg-turbo's scaled IDCT through Pillow's ``draft``;
    its pixels are bit-identical across libjpeg-turbo versions and SIMD paths); other
    formats decode in full. Records without the field mean ``full``.

    View (``view``): ``resize`` (records without the field) resizes the whole image
    (aspect ratio not kept, as in the paper) to ``height x width``: one input per image.
    ``crops`` first brings the image to ``short_side`` (its shorter side resized to that
    many pixels, aspect kept; 0 keeps the native resolution, and enlarges only an image
    smaller than a crop until the crop fits), then cuts one ``height x width`` crop per
    name in ``crops`` (:data:`CROP_ANCHORS`: its left and top edges at ``floor(fraction x
    room)``); each crop is scored and the image's score is the mean of its crops' scores.

    Every input is resized or scaled with ``interpolation``, scaled to [0, 1], normalised
    with ``mean``/``std`` per channel and laid out as ``layout`` float32.
    """

    input_name: str = "image"
    output_name: str = "quality"
    layout: str = "NCHW"
    height: int = 224
    width: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    view: str = "resize"
    crops: tuple[str, ...] = ()
    short_side: int = 0
    decode: str = "full"
    decode_side: int = 0

    @property
    def inputs_per_image(self) -> int:
        """How many network inputs one image gives: 1 for ``resize``, one per crop for ``crops``."""
        return len(self.crops) if self.view == "crops" else 1

    def describe(self) -> str:
        """The view and decode in words, for logs and reports (e.g. ``each image's score is the mean of 5
        crops ...``)."""
        size = f"{self.width}x{self.height}"
        if self.view == "crops":
            scale = f"the image's short side brought to {self.short_side} px" if self.short_side else \
                "native resolution"
            names = ", ".join(self.crops)
            view = f"each image's score is the mean of {len(self.crops)} {size} crops ({names}) at {scale}"
        else:
            view = f"each image is resized whole to {size}"
        decode = f"JPEGs DCT-scaled to sides >= {self.decode_side} px" if self.decode == "dct" else "full decode"
        return f"{view}; {decode}"

    def natural_decode_side(self) -> int:
        """The ``decode_side`` that DCT scaling keeps for this view: the input's longer side for
        ``resize``, ``short_side`` for ``crops``.

        Raises:
            QualityNetError: native-resolution crops, which no DCT scale leaves unchanged.
        """
        if self.view == "resize":
            return max(self.height, self.width)
        if self.short_side:
            return self.short_side
        raise QualityNetError("DCT-scaled decoding does not apply to crops at native resolution (short side 0): "
                              "decode in full, or state a short side")

    def with_view(self, view: str, crops: tuple[str, ...] = FIVE_CROPS, short_side: int = 0) -> PreprocessCfg:
        """This preprocessing with another view (``crops`` and ``short_side`` apply to ``crops`` only), validated.

        Raises:
            QualityNetError: an unknown view, crop name, or a short side the crops do not fit in.
        """
        cfg = dataclasses.replace(self, view=view, crops=tuple(crops) if view == "crops" else (),
                                  short_side=short_side if view == "crops" else 0)
        cfg.validate("preprocessing", fix=None)
        return cfg

    def with_decode(self, decode: str, side: int | None = None) -> PreprocessCfg:
        """This preprocessing with another decode; ``side`` defaults to :meth:`natural_decode_side`.

        Raises:
            QualityNetError: an unknown decode, or ``dct`` for native-resolution crops.
        """
        if decode == "dct":
            side = self.natural_decode_side() if side is None else side
        cfg = dataclasses.replace(self, decode=decode, decode_side=(side or 0) if decode == "dct" else 0)
        cfg.validate("preprocessing", fix=None)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict without the view and decode keys that hold their defaults, so a
        record of the paper's view and a full decode is the one a runtime older than those keys reads."""
        defaults = PreprocessCfg()
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in _VIEW_AND_DECODE_KEYS or v != getattr(defaults, k)}

    @property
    def needs_new_runtime(self) -> bool:
        """Whether this preprocessing uses a view or decode that a runtime older than them would ignore."""
        return len(self.to_dict()) > len(dataclasses.fields(self)) - len(_VIEW_AND_DECODE_KEYS)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessCfg:
        """Build from a dict as written by :meth:`to_dict` or :func:`dataclasses.asdict` (lists become tuples;
        missing view and decode keys take their defaults)."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)

    def validate(self, source: str = "metadata", fix: str | None = "re-export the model with iqa-export") -> None:
        """Refuse values no export writes (a damaged or hand-edited record).

        Args:
            source: what the message names (the file the record came from).
            fix: what the message tells the user to do about a stored record; ``None`` for
                settings being chosen (``iqa-train``'s options): the message names only the value.

        Raises:
            QualityNetError: naming the field, its value and what it must be.
        """
        def bad(what: str) -> QualityNetError:
            if fix is None:
                return QualityNetError(f"{source}: {what}")
            return QualityNetError(f"{source}: damaged artifact record: {what}; {fix}")

        if self.interpolation not in INTERPOLATIONS:
            raise bad(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        for name in ("height", "width"):
            side = getattr(self, name)
            if not isinstance(side, int) or isinstance(side, bool) or not 1 <= side <= MAX_INPUT_SIDE:
                raise bad(f"input {name} {side!r} is not a whole number from 1 to {MAX_INPUT_SIDE}")
        if self.layout != "NCHW":
            raise bad(f"layout {self.layout!r} is not NCHW")
        self._validate_view_and_decode(bad)
        for name in ("mean", "std"):
            values = getattr(self, name)
            numbers = len(values) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            if not numbers or (name == "std" and min(values) <= 0):
                raise bad(f"{name} {values!r} is not 3 finite numbers{' above 0' if name == 'std' else ''}")

    def _validate_view_and_decode(self, bad: Callable[[str], QualityNetError]) -> None:
        """The checks of :meth:`validate` on ``view``, ``crops``, ``short_side``, ``decode``, ``decode_side``."""
        def whole(value: object, low: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_IMAGE_SIDE

        if self.view not in VIEWS:
            raise bad(f"view {self.view!r} is not one of {', '.join(VIEWS)} (a newer toolkit's record? upgrade "
                      "qualitynet)")
        if self.decode not in DECODES:
            raise bad(f"decode {self.decode!r} is not one of {', '.join(DECODES)} (a newer toolkit's record? "
                      "upgrade qualitynet)")
        if self.view == "crops":
            names = self.crops if isinstance(self.crops, tuple) else (self.crops,)
            unknown = [c for c in names if not isinstance(c, str) or c not in CROP_ANCHORS]
            if not names or unknown or len(set(names)) != len(names):
                raise bad(f"crops {self.crops!r} are not distinct names from {', '.join(CROP_ANCHORS)}")
            if not (self.short_side == 0 or whole(self.short_side, max(self.height, self.width))):
                raise bad(f"short side {self.short_side!r} is neither 0 (native resolution) nor a whole number "
                          f"from the crop's side {max(self.height, self.width)} to {MAX_IMAGE_SIDE}")
        elif self.crops or self.short_side:
            raise bad(f"crops {self.crops!r} / short side {self.short_side!r} given for view {self.view!r}")
        if self.decode == "dct":
            if not whole(self.decode_side, 1):
                raise bad(f"decode side {self.decode_side!r} is not a whole number from 1 to {MAX_IMAGE_SIDE}")
            if self.view == "crops" and not self.short_side:
                raise bad("decode 'dct' with crops at native resolution (short side 0): DCT scaling would change "
                          "the scale the crops are taken at")
        elif self.decode_side:
            raise bad(f"decode side {self.decode_side!r} given for decode {self.decode!r}")


# the keys added after format /1 (omitted from a record while at their defaults)
_VIEW_AND_DECODE_KEYS = ("view", "crops", "short_side", "decode", "decode_side")


@dataclass(frozen=True)
class ScoreScale:
    """The MOS range the model was trained on; the network predicts ``(mos - low) / (high - low)``."""

    low: float = 0.0
    high: float = 1.0
    name: str = "unit"

    def to_mos(self, unit: Any) -> Any:
        """Map network output (a float or a numpy array) back to the dataset's MOS scale."""
        return self.low + unit * (self.high - self.low)

    def to_unit(self, mos: Any) -> Any:
        """Map MOS (a float or a numpy array) to the network's training target."""
        return (mos - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class MosMapping:
    """The monotonic map from a network's raw prediction to MOS, fitted after training.

    ``kind`` is ``identity``, ``linear`` (``a * x + b``, ``params = (a, b)``, ``a > 0``) or
    ``logistic4`` (VQEG's ``(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2``, ``params = (b1,
    b2, b3, b4)``, ``b1 >= b2``, ``b4 > 0``), both on the MOS scale of :class:`ScoreScale`.
    Exported models apply it inside the graph, so their output already is the mapped score
    and the runtime needs nothing but :meth:`ScoreScale.to_mos`; the record says what the
    graph contains and where the map was fitted (``fitted_on``, e.g. ``val``).
    """

    kind: str = "identity"
    params: tuple[float, ...] = ()
    fitted_on: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MosMapping:
        """Inverse of :func:`dataclasses.asdict`."""
        return cls(str(data.get("kind", "identity")), tuple(float(v) for v in data.get("params", ())),
                   str(data.get("fitted_on", "")))


@dataclass(frozen=True)
class BatchProfile:
    """A TensorRT optimization profile over the batch axis (tactics are tuned for ``opt``)."""

    min: int = 1
    opt: int = 16
    max: int = 64

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """Parse ``"min:opt:max"``, e.g. ``"1:16:64"``."""
        try:
            low, opt, high = (int(part) for part in text.split(":"))
        except ValueError:
            raise QualityNetError(f"batch profile {text!r} is not MIN:OPT:MAX, e.g. 1:16:64") from None
        if not 1 <= low <= opt <= high:
            raise QualityNetError(f"batch profile {text!r} needs 1 <= MIN <= OPT <= MAX")
        return cls(low, opt, high)


@dataclass
class ArtifactMeta:
    """Everything a consumer of an exported model needs to know about it.

    ``version_compatible`` and ``exclude_lean_runtime`` describe a TensorRT plan built so
    (``iqa-export --version-compatible``): which TensorRT runtimes may load it. Records
    written before they were fields carry them in ``extra``; :meth:`from_dict` moves them.
    """

    config_name: str
    preprocess: PreprocessCfg
    score_scale: ScoreScale
    precision: str = "fp32"
    checkpoint_sha256: str = ""
    batch_profile: BatchProfile | None = None
    versions: dict[str, str] = field(default_factory=dict)
    gpu_name: str | None = None
    compute_capability: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    mos_mapping: MosMapping = field(default_factory=MosMapping)
    version_compatible: bool = False
    exclude_lean_runtime: bool = False

    @property
    def format(self) -> str:
        """The record's format: /1 (readable by every runtime) unless the preprocessing needs a newer one."""
        return ARTIFACT_FORMAT if self.preprocess.needs_new_runtime else ARTIFACT_FORMAT_V1

    def validate(self, source: str = "metadata") -> None:
        """Refuse a record whose preprocessing or score scale no export writes.

        Raises:
            QualityNetError: one line naming the damaged field.
        """
        self.preprocess.validate(source)
        low, high = self.score_scale.low, self.score_scale.high
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)) or low == high:
            raise QualityNetError(
                f"{source}: damaged artifact record: score scale {low!r}..{high!r} is not two different finite "
                "numbers; re-export the model with iqa-export"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: format /1 without view and decode keys when they hold their defaults
        (readable by every runtime), else format /2 (see :data:`ARTIFACT_FORMAT`)."""
        return {**dataclasses.asdict(self), "preprocess": self.preprocess.to_dict(), "format": self.format}

    def to_json(self) -> str:
        """The record as a JSON string (what goes into ONNX metadata and sidecars)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> ArtifactMeta:
        """Parse a record, refusing anything that is not this toolkit's format or fails :meth:`validate`."""
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        if isinstance(found, str) and found.startswith("qualitynet-artifact/") and found not in READABLE_FORMATS:
            raise QualityNetError(
                f"{source}: artifact record format {found!r} is newer than this toolkit reads "
                f"({', '.join(READABLE_FORMATS)}); upgrade qualitynet"
            )
        if found not in READABLE_FORMATS:
            raise QualityNetError(
                f"{source}: not a QualityNet artifact record (format {found!r}, expected one of "
                f"{', '.join(map(repr, READABLE_FORMATS))}); re-export the model with this toolkit's iqa-export"
            )
        try:
            profile = data.get("batch_profile")
            extra = dict(data.get("extra", {}))
            legacy = {name: extra.pop(name) for name in _PLAN_FLAGS if name in extra}
            meta = cls(
                config_name=data["config_name"],
                preprocess=PreprocessCfg.from_dict(data["preprocess"]),
                score_scale=ScoreScale(**data["score_scale"]),
                precision=data.get("precision", "fp32"),
                checkpoint_sha256=data.get("checkpoint_sha256", ""),
                batch_profile=BatchProfile(**profile) if profile else None,
                versions=dict(data.get("versions", {})),
                gpu_name=data.get("gpu_name"),
                compute_capability=data.get("compute_capability"),
                extra=extra,
                mos_mapping=MosMapping.from_dict(data.get("mos_mapping") or {}),
                version_compatible=bool(data.get("version_compatible", legacy.get("version_compatible", False))),
                exclude_lean_runtime=bool(data.get("exclude_lean_runtime", legacy.get("exclude_lean_runtime", False))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QualityNetError(f"{source}: artifact record is incomplete or malformed ({exc})") from None
        meta.validate(source)
        return meta

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> ArtifactMeta:
        """Parse the JSON form written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QualityNetError(f"{source}: artifact record is not valid JSON ({exc})") from None
        return cls.from_dict(data, source)

    def write_sidecar(self, artifact: Path) -> Path:
        """Write ``<artifact>.json`` next to a plan and return its path."""
        path = sidecar_path(artifact)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def read_sidecar(cls, artifact: Path) -> ArtifactMeta:
        """Read ``<artifact>.json``; a clear error if it is missing."""
        path = sidecar_path(artifact)
        if not path.is_file():
            raise QualityNetError(
                f"{artifact}: sidecar {path.name} is missing; it is written by iqa-export next to the "
                "plan and holds the preprocessing and score scale, so copy it along with the plan"
            )
        return cls.from_json(path.read_text(encoding="utf-8"), str(path))


def sidecar_path(artifact: Path) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    return artifact.with_name(artifact.name + ".json")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
