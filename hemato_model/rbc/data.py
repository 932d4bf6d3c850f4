"""Red-cell fields labelled by centre point: reading them, their scale, crops, the split by field.

A data folder holds ``images/<n>.jpg`` (smear fields) and ``labels/<n>.txt``, one red cell a line:
``x y class`` — the cell's centre in pixels of the image and its class number (0..12, the
:data:`RBC_CLASSES` of the Chula RBC-12 set: Naruenatthanaset et al., "Red Blood Cell Segmentation
with Overlapping Cell Separation and Classification on Imbalanced Dataset", arXiv:2012.01321).

Scale: every crop is ``crop_um`` µm square around the labelled centre (:func:`crop_cell`), so the
size classes (macrocyte, microcyte) are judged at a physical size. The set does not state its µm/px;
it is estimated per field from the red-cell diameter (:func:`hemato_model.detection.estimate_mpp`)
and, by default, the **median over the folder's fields** is used for every field (``scale="folder"``):
the fields come from one camera and objective, and a per-field estimate would both scatter (a few
fields with clumps or few isolated round cells are off by 2×) and normalise away the very size
differences a field of microcytes or macrocytes shows. ``scale="field"`` uses each field's own
estimate (the folder median where it fails).

The green scale bar some fields carry (bottom right) is painted out before cutting crops
(:func:`mask_overlay`), so no class can be learnt from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hemato_model.preprocessing import crop_cell

log = logging.getLogger(__name__)

#: The 13 classes of Chula RBC-12, in the order of the class numbers of the label files.
RBC_CLASSES = (
    "normal",
    "macrocyte",
    "microcyte",
    "spherocyte",
    "target",
    "stomatocyte",
    "ovalocyte",
    "teardrop",
    "burr",
    "schistocyte",
    "uncategorised",
    "hypochromia",
    "elliptocyte",
)
#: Crop side: a red cell (about 7.5 µm) with a margin of its neighbourhood.
DEFAULT_RBC_CROP_UM = 12.0
#: Network input side of the red-cell model.
DEFAULT_RBC_INPUT_PX = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SCALE_MODES = ("folder", "field")

ProgressFactory = Callable[[int, str], Any]


class RbcDataError(ValueError):
    """A red-cell data folder or label file is missing or malformed (message fit for the user)."""


@dataclass(frozen=True)
class RbcField:
    """One labelled field: its name (file stem), image path and labelled cells ``(x, y, class)``."""

    name: str
    image_path: Path
    cells: tuple[tuple[float, float, int], ...]

    def class_counts(self, n_classes: int = len(RBC_CLASSES)) -> np.ndarray:
        return np.bincount([c for _, _, c in self.cells], minlength=n_classes)


@dataclass
class Scale:
    """The µm/px used for each field and where it came from."""

    source: str  # "given", "estimated-folder-median" or "estimated-per-field"
    mpp: float  # the folder value (given or median of the estimates)
    per_field: dict[str, float] = field(default_factory=dict)  # µm/px each field was cut at
    estimates: dict[str, float | None] = field(default_factory=dict)  # estimate_mpp per field (None: failed)

    def summary(self) -> dict[str, Any]:
        est = [v for v in self.estimates.values() if v is not None]
        out: dict[str, Any] = {"mpp": round(self.mpp, 5), "source": self.source}
        if est:
            out["per_field_estimates"] = {
                "n": len(est),
                "failed": sum(1 for v in self.estimates.values() if v is None),
                "p10": round(float(np.percentile(est, 10)), 5),
                "median": round(float(np.median(est)), 5),
                "p90": round(float(np.percentile(est, 90)), 5),
            }
        return out


def _natural_key(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 62, name)


def read_labels(path: str | Path, n_classes: int = len(RBC_CLASSES)) -> list[tuple[float, float, int]]:
    """The ``x y class`` lines of one label file (blank lines ignored).

    Raises:
        RbcDataError: a line that is not three numbers, or a class outside ``0..n_classes-1``.
    """
    path = Path(path)
    cells = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 3:
                raise ValueError
            x, y, cls = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise RbcDataError(f"{path.name} line {lineno}: expected 'x y class', got {line.strip()[:60]!r}") from None
        if not 0 <= cls < n_classes:
            raise RbcDataError(f"{path.name} line {lineno}: class {cls} is not in 0..{n_classes - 1}")
        if not (np.isfinite(x) and np.isfinite(y)):
            raise RbcDataError(f"{path.name} line {lineno}: coordinates must be finite numbers")
        cells.append((x, y, cls))
    return cells


def list_fields(data_dir: str | Path) -> list[RbcField]:
    """The labelled fields of a data folder (``images/`` + ``labels/``), in natural name order.

    Images without a label file are skipped; a label file without its image is an error.

    Raises:
        RbcDataError: no ``images``/``labels`` folder, no labelled field, or a malformed label file.
    """
    root = Path(data_dir)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise RbcDataError(f"{root}: expected the folders images/ and labels/ (labels: 'x y class' per line)")
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    fields = []
    for lab in sorted(labels_dir.glob("*.txt"), key=lambda p: _natural_key(p.stem)):
        if lab.stem not in images:
            raise RbcDataError(f"label file {lab.name} has no image in {images_dir}")
        cells = read_labels(lab)
        if cells:
            fields.append(RbcField(lab.stem, images[lab.stem], tuple(cells)))
    if not fields:
        raise RbcDataError(f"{root}: no labelled field (labels/<name>.txt beside images/<name>.jpg)")
    return fields


def mask_overlay(image: np.ndarray) -> np.ndarray:
    """Paint out drawn green overlays (the scale bar and its text) from the nearest stained pixels.

    Stained smears have no pixel whose green exceeds both red and blue by 40 levels; the overlay's
    pixels (and a 1-px rim of JPEG fringe) are replaced by the nearest other pixel's colour.
    """
    from scipy import ndimage as ndi

    arr = np.asarray(image)
    rgb = arr.astype(np.int16)
    mask = (rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2])) > 40
    if not mask.any():
        return arr
    mask = ndi.binary_dilation(mask, iterations=2)
    _, (iy, ix) = ndi.distance_transform_edt(mask, return_indices=True)
    return np.ascontiguousarray(arr[iy, ix])


def read_field_image(path: str | Path) -> np.ndarray:
    """A field as uint8 RGB with its overlay painted out.

    Raises:
        RbcDataError: the file cannot be read as an image.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise RbcDataError(f"cannot read image {Path(path).name}: {exc}") from None
    return mask_overlay(arr)


def estimate_field_mpp(image: np.ndarray) -> float | None:
    """``estimate_mpp`` of one field, or None when it cannot measure red cells there."""
    from hemato_model.detection import estimate_mpp

    try:
        return float(estimate_mpp(image))
    except ValueError:
        return None


def resolve_scale(
    fields: Sequence[RbcField],
    images: dict[str, np.ndarray],
    mpp: float | None = None,
    mode: str = "folder",
) -> Scale:
    """The µm/px to cut each field at: ``mpp`` when given, else estimated (see the module docstring).

    Raises:
        RbcDataError: no field's scale could be estimated, or an unknown mode.
    """
    if mode not in SCALE_MODES:
        raise RbcDataError(f"unknown scale mode {mode!r}; one of {', '.join(SCALE_MODES)}")
    if mpp is not None:
        if not mpp > 0:
            raise RbcDataError("µm/px must be positive")
        return Scale("given", float(mpp), {f.name: float(mpp) for f in fields})
    estimates = {f.name: estimate_field_mpp(images[f.name]) for f in fields}
    good = [v for v in estimates.values() if v is not None]
    if not good:
        raise RbcDataError("cannot estimate µm/px: no red cells measurable in any field; pass --mpp")
    median = float(np.median(good))
    if mode == "folder":
        return Scale("estimated-folder-median", median, {k: median for k in estimates}, estimates)
    per_field = {k: (v if v is not None else median) for k, v in estimates.items()}
    return Scale("estimated-per-field", median, per_field, estimates)


def cut_field_crops(
    image: np.ndarray, cells: Sequence[tuple[float, float, int]], mpp: float, crop_um: float, input_px: int
) -> np.ndarray:
    """The ``crop_um`` crops of the labelled cells of one field as uint8 (N, input_px, input_px, 3)."""
    out = np.empty((len(cells), input_px, input_px, 3), dtype=np.uint8)
    for i, (x, y, _c) in enumerate(cells):
        out[i] = crop_cell(image, (x, y), mpp, crop_um, input_px)
    return out


@dataclass
class RbcCrops:
    """Crops of a set of fields: ``x`` uint8 (N, px, px, 3), ``y`` class numbers, ``field`` the
    index into ``fields`` of each crop, and the scale they were cut at."""

    fields: list[RbcField]
    x: np.ndarray
    y: np.ndarray
    field_index: np.ndarray
    scale: Scale
    #: the glass colour (95th percentile per channel) of each field, float32 (len(fields), 3)
    glass: np.ndarray | None = None

    def subset(self, names: Sequence[str]) -> RbcCrops:
        """The crops of the named fields only."""
        wanted = set(names)
        keep_fields = [i for i, f in enumerate(self.fields) if f.name in wanted]
        sel = np.isin(self.field_index, keep_fields)
        remap = np.full(len(self.fields), -1)
        remap[keep_fields] = np.arange(len(keep_fields))
        return RbcCrops(
            [self.fields[i] for i in keep_fields],
            self.x[sel],
            self.y[sel],
            remap[self.field_index[sel]],
            self.scale,
            None if self.glass is None else self.glass[keep_fields],
        )

    def crop_glass(self) -> np.ndarray:
        """The glass colour of each crop's field, float32 (N, 3)."""
        if self.glass is None:
            raise ValueError("crops were loaded without their fields' glass colours")
        return self.glass[self.field_index]


def load_crops(
    fields: Sequence[RbcField],
    crop_um: float,
    input_px: int,
    mpp: float | None = None,
    scale_mode: str = "folder",
    progress: ProgressFactory | None = None,
) -> RbcCrops:
    """Read the fields, resolve their scale and cut every labelled cell's crop."""
    images: dict[str, np.ndarray] = {}
    bar = progress(len(fields), "Reading fields") if progress else None
    try:
        for f in fields:
            images[f.name] = read_field_image(f.image_path)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    from hemato_model.rbc.context import field_glass

    scale = resolve_scale(fields, images, mpp, scale_mode)
    glass = np.stack([field_glass(images[f.name]) for f in fields]).astype(np.float32)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    idx: list[int] = []
    for i, f in enumerate(fields):
        xs.append(cut_field_crops(images[f.name], f.cells, scale.per_field[f.name], crop_um, input_px))
        ys.extend(c for _, _, c in f.cells)
        idx.extend([i] * len(f.cells))
    log.info("cut %d crops of %d fields at %s µm/px (%s)", len(ys), len(fields), f"{scale.mpp:.4f}", scale.source)
    return RbcCrops(list(fields), np.concatenate(xs), np.asarray(ys, dtype=np.int64), np.asarray(idx), scale, glass)


def split_fields(
    fields: Sequence[RbcField], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """Split **by field** (image) into train/val/test, with a fixed seed, stratified on the classes.

    No field's cells are on two sides. Greedy iterative stratification (after Sechidis et al.,
    "On the stratification of multi-label data", ECML PKDD 2011): fields are taken rarest class
    first (ties in seeded random order), and each goes to the part, among those with room for
    more fields, whose class counts are furthest below their targets (relative to the part's share
    of each class, weighted by how much of each class this field holds).
    """
    n_classes = len(RBC_CLASSES)
    counts = np.stack([f.class_counts(n_classes) for f in fields]).astype(float)
    totals = np.maximum(counts.sum(axis=0), 1.0)
    fractions = {"test": test_fraction, "val": val_fraction, "train": 1.0 - val_fraction - test_fraction}
    caps = {p: int(round(fr * len(fields))) for p, fr in fractions.items()}
    caps["train"] = len(fields) - caps["test"] - caps["val"]
    have = {p: np.zeros(n_classes) for p in fractions}
    n_in = dict.fromkeys(fractions, 0)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(fields)).tolist()
    rarity = (counts / totals).max(axis=1)  # the largest share of one class's cells this field holds
    rarest = (np.where(counts > 0, 1.0 / totals, 0.0)).max(axis=1)
    order = sorted(shuffled, key=lambda i: (-rarest[i], -rarity[i]))
    parts: dict[str, list[str]] = {p: [] for p in fractions}
    for i in order:
        open_parts = [p for p in fractions if n_in[p] < caps[p]]
        share = counts[i] / totals
        best = max(open_parts, key=lambda p: float((share * (1.0 - have[p] / (fractions[p] * totals))).sum()))
        parts[best].append(fields[i].name)
        have[best] += counts[i]
        n_in[best] += 1
    return {p: sorted(v, key=_natural_key) for p, v in parts.items()}
