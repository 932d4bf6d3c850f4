"""Red cells: the cell mask without white cells, split by a marker-controlled watershed (step 6 of
:mod:`hemato_model.detection`; Vincent & Soille 1991, Malpica et al. 1997)."""

from __future__ import annotations

from collections.abc import Sequence

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


def find_red_cells(
    field: StainField, wbc_boxes: Sequence[Sequence[float]], nucleus_mask: np.ndarray
) -> list[tuple[list[float], float]]:
    h, w = field.cells.shape
    r_px = field.px(RBC_DIAMETER_UM / 2)
    rbc_area = np.pi * r_px * r_px
    mask = field.cells.copy()
    # white cells: drop the nuclei and a rim of cytoplasm around them
    if nucleus_mask.any():
        near = ndi.distance_transform_edt(~nucleus_mask) <= field.px(WBC_CYTOPLASM_UM + 1.0)
        mask &= ~near
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
        out.append(([float(x0), float(y0), float(x1), float(y1)], score))
    return out
