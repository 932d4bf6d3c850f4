"""Spread sampling: where on a smear the differential's white cells are read, and in what order.

A morphologist counts in the *monolayer*, where red cells just touch, and moves over it in a
battlement track so that the count is not taken from one band of the smear: large cells (monocytes,
granulocytes, blasts) gather at the edges and the feathered end, and reading in raster order from one
corner until 200 cells are in hand biases the differential (CLSI H20-A2; the battlement method of
MacGregor et al., 1940). This module does the same from the thumbnail:

1. **Evaluable monolayer** (:func:`evaluable_monolayer`). The smear's darkness (1 − grey / glass) is
   smoothed over ``SMOOTH_UM`` and profiled along the smear axis (the longer side of the smear's box).
   Each slice across the axis gets its plateau (the ``PLATEAU_PERCENTILE`` of its darkness); slices
   whose plateau is above ``THICK_RATIO`` × the median plateau are the *thick area* (red cells pile
   up), slices below ``THIN_END_RATIO`` × the median the *feathered end*; inside the remaining slices
   pixels below ``EDGE_RATIO`` × their slice's plateau are the smear's *feathered edge*. What is left
   is the monolayer.
2. **Fields** (:func:`spread_fields`): square fields of ``FIELD_UM`` on a grid over the monolayer (a
   field counts when at least ``MIN_FIELD_COVER`` of it is monolayer).
3. **Stratified visiting order** (:func:`stratified_order`): the fields are visited in the order the
   R2 low-discrepancy sequence reaches them, so after any m fields every part of the monolayer of
   ~1/m of its area holds one, in both directions (a battlement track covers the smear in one sweep;
   stopped early, it has covered only its first part, so its fields would have to be spread first
   anyway): reading stops wherever the target count is reached, and the cells read always come from
   the whole monolayer. The order is deterministic (no seed): the staged path and the one-process path, and a
   slide analysed twice, read the same fields.

The stop rule is the pipeline's (target classified white cells, or the candidate margin where labels
come later); what this module adds is the order and the record of what was read
(:meth:`Sampling.to_dict`: the report's ``sampling`` field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Name of the method, as the report states it.
METHOD = "fields over the evaluable monolayer in a stratified quasi-random (R2) order"
#: Side of a sampling field, µm (at 1 µm/px: 512 px, two slide tiles of 256 or one of 512).
FIELD_UM = 512.0
#: Smoothing of the thumbnail's darkness before it is profiled, µm (about five red-cell diameters
#: at 8 µm/px would blur the feathered edge into the monolayer; 48 µm keeps it sharp).
SMOOTH_UM = 48.0
#: A slice's plateau: this percentile of its smoothed darkness over the smear.
PLATEAU_PERCENTILE = 90.0
#: Slices darker than this × the median plateau are the thick area.
THICK_RATIO = 1.5
#: Slices paler than this × the median plateau are the feathered (thin) end.
THIN_END_RATIO = 0.5
#: Pixels paler than this × their slice's plateau are the feathered edge of the smear.
EDGE_RATIO = 0.8
#: Least share of a field that must be monolayer for the field to be read.
MIN_FIELD_COVER = 0.5


@dataclass
class Monolayer:
    """The evaluable monolayer on the thumbnail.

    Attributes:
        mask: thumbnail-sized boolean mask (True = monolayer).
        down: level-0 pixels per thumbnail pixel.
        mpp: µm per level-0 pixel.
        axis: 1 when the smear runs along x (left-right), 0 along y.
        smear_area_mm2, thick_area_mm2, edge_area_mm2: the smear, and what was left out of it.
    """

    mask: np.ndarray
    down: float
    mpp: float
    axis: int
    #: The whole stained smear (thumbnail-sized), read after the monolayer if the target is not met.
    smear: np.ndarray | None = None
    smear_area_mm2: float = 0.0
    thick_area_mm2: float = 0.0
    edge_area_mm2: float = 0.0

    @property
    def px_area_mm2(self) -> float:
        """Area of one thumbnail pixel, mm²."""
        return (self.down * self.mpp / 1000.0) ** 2

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * self.px_area_mm2

    def area_in_mm2(self, box: tuple[int, int, int, int]) -> float:
        """Monolayer area inside a level-0 box ``(x, y, w, h)``, mm²."""
        x, y, w, h = box
        d = self.down
        sub = self.mask[int(y / d) : int(math.ceil((y + h) / d)), int(x / d) : int(math.ceil((x + w) / d))]
        return float(sub.sum()) * self.px_area_mm2

    def contains(self, x: float, y: float) -> bool:
        """Whether level-0 point (x, y) lies in the monolayer."""
        my, mx = int(y / self.down), int(x / self.down)
        return 0 <= my < self.mask.shape[0] and 0 <= mx < self.mask.shape[1] and bool(self.mask[my, mx])


def _darkness(thumb: np.ndarray, smear: np.ndarray) -> np.ndarray:
    """1 − grey / glass grey (glass: the 95th percentile of grey outside the smear, or overall)."""
    gray = thumb.astype(np.float32).mean(axis=2)
    outside = gray[~smear]
    glass = float(np.percentile(outside if outside.size >= 100 else gray, 95))
    return np.clip(1.0 - gray / max(glass, 1.0), 0.0, 1.0)


def _to_the_end(flag: np.ndarray) -> np.ndarray:
    """Slices flagged in either half of the profile, extended to that end of the smear: the smear's
    own tip beyond a thick area (or beyond a feathered end) is no monolayer either, even where its
    profile dips back (a drop of blood thins at its very edge)."""
    out = np.zeros_like(flag)
    n = flag.size
    idx = np.nonzero(flag)[0]
    low, high = idx[idx < n // 2], idx[idx >= n // 2]
    if low.size:
        out[: low.max() + 1] = True
    if high.size:
        out[high.min() :] = True
    return out


def evaluable_monolayer(thumb: np.ndarray, smear: np.ndarray, down: float, mpp: float) -> Monolayer:
    """The monolayer of a smear from its thumbnail (see the module docstring).

    Args:
        thumb: (h, w, 3) uint8 thumbnail.
        smear: the stained smear on it (:func:`hemato_model.smear_area.smear_mask`).
        down: level-0 pixels per thumbnail pixel.
        mpp: µm per level-0 pixel.
    """
    from scipy import ndimage as ndi

    smear = smear.astype(bool)
    px_um = down * mpp
    mono = Monolayer(mask=smear.copy(), down=down, mpp=mpp, axis=1, smear=smear)
    mono.smear_area_mm2 = float(smear.sum()) * mono.px_area_mm2
    if not smear.any():
        return mono
    ys, xs = np.nonzero(smear)
    mono.axis = 1 if (xs.max() - xs.min()) >= (ys.max() - ys.min()) else 0
    dark = _darkness(thumb, smear)
    sigma = max(0.5, SMOOTH_UM / px_um)
    weight = ndi.gaussian_filter(smear.astype(np.float32), sigma)
    smooth = ndi.gaussian_filter(np.where(smear, dark, 0.0).astype(np.float32), sigma) / np.maximum(weight, 1e-3)
    n_slices = smear.shape[mono.axis]
    plateau = np.zeros(n_slices, np.float32)
    filled = np.zeros(n_slices, bool)
    for i in range(n_slices):
        sl = (slice(None), i) if mono.axis == 1 else (i, slice(None))
        inside = smooth[sl][smear[sl]]
        if inside.size >= 3:
            plateau[i] = float(np.percentile(inside, PLATEAU_PERCENTILE))
            filled[i] = True
    if not filled.any():
        return mono
    ref = float(np.median(plateau[filled]))
    thick_slices = _to_the_end(filled & (plateau > THICK_RATIO * ref))
    thin_slices = _to_the_end(filled & (plateau < THIN_END_RATIO * ref)) & ~thick_slices
    shape = (1, -1) if mono.axis == 1 else (-1, 1)
    thick = smear & thick_slices.reshape(shape)
    keep = smear & ~thick & ~thin_slices.reshape(shape)
    keep &= smooth >= EDGE_RATIO * plateau.reshape(shape)
    keep = ndi.binary_opening(keep, iterations=1)
    mono.mask = keep
    mono.thick_area_mm2 = float(thick.sum()) * mono.px_area_mm2
    mono.edge_area_mm2 = float((smear & ~keep & ~thick).sum()) * mono.px_area_mm2
    return mono


def stratified_order(rows: int, cols: int, keep: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """A visiting order of the grid cells ``keep`` (``(row, col)`` of a ``rows`` × ``cols`` grid) in
    which every prefix is spread evenly over the grid in both directions.

    The R2 quasi-random sequence (Roberts 2018: the two-dimensional golden ratio, ``frac(0.5 + j·α)``
    with ``α = (1/φ₂, 1/φ₂²)``, φ₂ the plastic number) is walked over the grid's box; each point
    visits its grid cell if that cell is to be read and not yet read. Like stratified sampling, after
    m cells every part of the grid of area ~1/m has one, whichever m reading stops at; unlike a
    random order it has no clusters and no seed, and it never starts at a corner.
    """
    if rows <= 0 or cols <= 0 or not keep:
        return []
    g = 1.324717957244746  # plastic number: x³ = x + 1
    a1, a2 = 1.0 / g, 1.0 / (g * g)
    seen: set[tuple[int, int]] = set()
    order: list[tuple[int, int]] = []
    limit = 64 * rows * cols + 1024
    j = 0
    while len(order) < len(keep) and j < limit:
        u, v = (0.5 + j * a1) % 1.0, (0.5 + j * a2) % 1.0
        j += 1
        cell = (min(rows - 1, int(v * rows)), min(cols - 1, int(u * cols)))
        if cell in keep and cell not in seen:
            seen.add(cell)
            order.append(cell)
    order.extend(sorted(keep - seen))  # should the walk miss any (it does not in practice)
    return order


def spread_fields(
    mono: Monolayer, width: int, height: int, field_um: float = FIELD_UM
) -> list[tuple[int, int, int, int]]:
    """Level-0 fields ``(x, y, w, h)`` in the order they are to be read: first the fields that are at
    least ``MIN_FIELD_COVER`` monolayer, in :func:`stratified_order`; then, should the target not be
    met there (a scant smear), the rest of the smear in raster order, so no white cell is left unread
    that the raster reading of before would have found. The grid is aligned to level-0 (0, 0), so
    fields fall on whole tiles of the usual pyramid levels."""
    side = max(1, int(round(field_um / mono.mpp)))
    cols, rows = math.ceil(width / side), math.ceil(height / side)
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for r in range(rows):
        for c in range(cols):
            box = (c * side, r * side, min(side, width - c * side), min(side, height - r * side))
            full = (box[2] * box[3]) * (mono.mpp / 1000.0) ** 2
            if full > 0 and mono.area_in_mm2(box) >= MIN_FIELD_COVER * full:
                boxes[(r, c)] = box
    ordered: list[tuple[int, int, int, int]] = []
    if boxes:
        r0, r1 = min(r for r, _ in boxes), max(r for r, _ in boxes)
        c0, c1 = min(c for _, c in boxes), max(c for _, c in boxes)
        keep = {(r - r0, c - c0) for r, c in boxes}
        ordered = [boxes[(r + r0, c + c0)] for r, c in stratified_order(r1 - r0 + 1, c1 - c0 + 1, keep)]
    if mono.smear is not None:  # then the rest of the smear, in raster order (a scant slide is read whole)
        d = mono.down
        for r in range(rows):
            for c in range(cols):
                if (r, c) in boxes:
                    continue
                x, y = c * side, r * side
                sub = mono.smear[
                    int(y / d) : int(math.ceil((y + side) / d)), int(x / d) : int(math.ceil((x + side) / d))
                ]
                if sub.any():
                    ordered.append((x, y, min(side, width - x), min(side, height - y)))
    return ordered


@dataclass
class Sampling:
    """What was read of a slide for its differential: the report's ``sampling`` field."""

    method: str
    monolayer: Monolayer | None = None
    fields: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: Monolayer area inside each field read, mm².
    field_monolayer_mm2: list[float] = field(default_factory=list)

    @property
    def area_read_mm2(self) -> float:
        return float(sum(self.field_monolayer_mm2))

    def read(self, box: tuple[int, int, int, int]) -> None:
        """Record a field as read (whole)."""
        self.fields.append((int(box[0]), int(box[1]), int(box[2]), int(box[3])))
        area = self.monolayer.area_in_mm2(box) if self.monolayer is not None else 0.0
        self.field_monolayer_mm2.append(area)

    def to_dict(self) -> dict[str, Any]:
        mono = self.monolayer
        return {
            "method": self.method,
            "fields_read": len(self.fields),
            "field_um": FIELD_UM,
            "area_read_mm2": round(self.area_read_mm2, 4),
            "monolayer_area_mm2": round(mono.area_mm2, 4) if mono is not None else None,
            "smear_area_mm2": round(mono.smear_area_mm2, 4) if mono is not None else None,
            "excluded_thick_mm2": round(mono.thick_area_mm2, 4) if mono is not None else None,
            "excluded_edge_mm2": round(mono.edge_area_mm2, 4) if mono is not None else None,
            "fields": [list(f) for f in self.fields],
            "field_px_area_mm2": (mono.mpp / 1000.0) ** 2 if mono is not None else None,
            "field_monolayer_mm2": [round(a, 5) for a in self.field_monolayer_mm2],
        }


def level_chunks(
    fields: list[tuple[int, int, int, int]], ds: float, overlap_px: int, level_w: int, level_h: int
) -> list[tuple[int, int, int, int]]:
    """Level-0 fields as chunks ``(x, y, w, h)`` of a level ``ds`` times coarser, grown by
    ``overlap_px`` (level pixels) on every side and clipped to the level (a cell on a field's border
    is still seen whole)."""
    out = []
    for x, y, w, h in fields:
        x0, y0 = max(0, int(x / ds) - overlap_px), max(0, int(y / ds) - overlap_px)
        x1 = min(level_w, int(math.ceil((x + w) / ds)) + overlap_px)
        y1 = min(level_h, int(math.ceil((y + h) / ds)) + overlap_px)
        out.append((x0, y0, x1 - x0, y1 - y0))
    return out


def whole_smear(mono: Monolayer | None, width: int, height: int, method: str) -> Sampling:
    """The record of a slide read whole (small slides, or a full count): one field, the slide."""
    s = Sampling(method=method, monolayer=mono)
    s.read((0, 0, width, height))
    return s
