"""Red cells: the cell mask without white cells, split by a marker-controlled watershed (step 6 of
:mod:`hemato_model.detection`; Vincent & Soille 1991, Malpica et al. 1997).

Beside each red cell's box, its segment's shape against its surroundings (:class:`RedCellShape`),
which red-cell morphology needs to judge the cell at its own centre and to leave out pieces: the
segment's centroid; ``contact``, the length of the boundary it shares with other red-cell segments
(the watershed's cut through a clump) over its equivalent diameter — a cell that just touches a
neighbour shares a short boundary (< 0.3), a piece of a cell the watershed cut in two shares a cut as
long as itself (about 1 or more); and ``cut``, whether the field border cuts it (its outline is not
all there) or it lies beside a white cell (within a red-cell radius of the white cell's outline:
pushed against it, under its rim, or cut by the zone cleared around its nucleus). On a smear there
are some 700 red cells per white cell, so leaving out those beside white cells costs about 1 % of
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from hemato_model.detection.stain import StainField, disk
from hemato_model.detection.white_cells import WBC_CYTOPLASM_UM
from hematovision.core.datasets import RBC_DIAMETER_UM

#: Watershed markers: distance maxima at least this many red-cell radii apart.
RBC_PEAK_SPACING = 0.6
#: Red-cell pieces smaller than this fraction of a red cell's area are dropped (inside the field).
RBC_MIN_AREA_FRACTION = 0.35
RBC_MIN_AREA_FRACTION_BORDER = 0.5


@dataclass(frozen=True)
class RedCellShape:
    """A red-cell segment against its surroundings (module docstring), in the field's work pixels.

    Attributes:
        centroid: ``(x, y)`` of the segment's pixels (work pixels, pixel centres at integers).
        contact: shared boundary with other red-cell segments / the segment's equivalent diameter.
        cut: the field border cuts the segment, or it lies beside a white cell.
        in_clump: the segment is a watershed piece of a clump (touching cells), not a lone cell.
    """

    centroid: tuple[float, float]
    contact: float
    cut: bool
    in_clump: bool


def _shared_boundary(regions: np.ndarray, n: int) -> np.ndarray:
    """Per label 1..n (index 0 unused): 4-neighbour pixel pairs it shares with another label."""
    out = np.zeros(n + 1, np.float64)
    for a, b in ((regions[:, :-1], regions[:, 1:]), (regions[:-1, :], regions[1:, :])):
        diff = (a != b) & (a > 0) & (b > 0)
        out += np.bincount(a[diff], minlength=n + 1)[: n + 1]
        out += np.bincount(b[diff], minlength=n + 1)[: n + 1]
    return out


def find_red_cells(
    field: StainField, wbc_boxes: Sequence[Sequence[float]], nucleus_mask: np.ndarray
) -> list[tuple[list[float], float, RedCellShape]]:
    h, w = field.cells.shape
    r_px = field.px(RBC_DIAMETER_UM / 2)
    rbc_area = np.pi * r_px * r_px
    mask = field.cells.copy()
    # white cells: drop the nuclei and a rim of cytoplasm around them
    beside_white = np.zeros((h, w), bool)
    if nucleus_mask.any():
        to_nucleus = ndi.distance_transform_edt(~nucleus_mask)
        mask &= ~(to_nucleus <= field.px(WBC_CYTOPLASM_UM + 1.0))
        # within a red-cell radius of the white cell's outline (nucleus + cytoplasm rim)
        beside_white = to_nucleus <= field.px(WBC_CYTOPLASM_UM + RBC_DIAMETER_UM / 2)
    mask = ndi.binary_opening(mask, disk(max(1.0, 0.12 * r_px)))
    holes = ndi.binary_fill_holes(mask) & ~mask
    hl, nh = ndi.label(holes)
    if nh:
        hole_area = ndi.sum_labels(holes, hl, np.arange(1, nh + 1))
        small = np.concatenate([[False], hole_area <= 0.6 * rbc_area])
        mask |= small[hl]
    if not mask.any():
        return []
    dist = ndi.distance_transform_edt(mask)
    dist_s = ndi.gaussian_filter(dist, max(0.5, 0.1 * r_px))
    comp, _ = ndi.label(mask)
    peaks = peak_local_max(
        dist_s,
        min_distance=max(1, int(round(RBC_PEAK_SPACING * r_px))),
        threshold_abs=0.3 * r_px,
        labels=comp,
        exclude_border=False,
    )
    if len(peaks) == 0:
        return []
    # one marker: the component is the cell; the watershed runs only where cells touch
    n_comp = int(comp.max())
    per_comp = np.bincount(comp[peaks[:, 0], peaks[:, 1]], minlength=n_comp + 1)
    multi = per_comp > 1
    regions = np.zeros((h, w), np.int32)
    single = (per_comp == 1)[comp] & mask
    single_ids = np.zeros(n_comp + 1, np.int32)
    single_ids[per_comp == 1] = np.arange(1, int((per_comp == 1).sum()) + 1)
    regions[single] = single_ids[comp[single]]
    n = int((per_comp == 1).sum())
    clump = multi[comp] & mask
    if clump.any():
        in_clump = multi[comp[peaks[:, 0], peaks[:, 1]]]
        cp = peaks[in_clump]
        markers = np.zeros((h, w), np.int32)
        markers[cp[:, 0], cp[:, 1]] = np.arange(n + 1, n + len(cp) + 1)
        ys, xs = np.nonzero(clump)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        ws = watershed(-dist_s[y0:y1, x0:x1], markers[y0:y1, x0:x1], mask=clump[y0:y1, x0:x1])
        sub = regions[y0:y1, x0:x1]
        sub[ws > 0] = ws[ws > 0]
        n += len(cp)
    idx = np.arange(1, n + 1)
    areas = ndi.sum_labels(mask, regions, idx)
    shared = _shared_boundary(regions, n)
    cy_all, cx_all = (np.asarray(v) for v in zip(*ndi.center_of_mass(mask, regions, idx), strict=True))
    by_white = np.asarray(ndi.maximum(beside_white, regions, idx), bool) if beside_white.any() else np.zeros(n, bool)
    clump_ids = np.unique(regions[clump]) if clump.any() else np.zeros(0, np.int32)
    in_clump = np.isin(idx, clump_ids)
    out = []
    for k, sl in enumerate(ndi.find_objects(regions, max_label=n)):
        if sl is None:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        at_border = x0 == 0 or y0 == 0 or x1 == w or y1 == h
        frac = areas[k] / rbc_area
        if frac < (RBC_MIN_AREA_FRACTION_BORDER if at_border else RBC_MIN_AREA_FRACTION):
            continue
        score = float(min(1.0, 0.3 + 0.7 * min(frac, 1.0 / max(frac, 1e-6))))
        d_eq = 2.0 * np.sqrt(areas[k] / np.pi)
        shape = RedCellShape(
            (float(cx_all[k]), float(cy_all[k])),
            float(shared[k + 1] / max(d_eq, 1.0)),
            bool(at_border or by_white[k]),
            bool(in_clump[k]),
        )
        out.append(([float(x0), float(y0), float(x1), float(y1)], score, shape))
    return out
