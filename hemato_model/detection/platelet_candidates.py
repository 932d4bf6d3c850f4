"""Platelet candidates and their features: a loose, high-recall screen for the learned platelet
filter (:mod:`hemato_model.detection.platelet_filter`).

Method: connected components of a *loose* stain mask (``OD_green - OD_blue`` above
``CANDIDATE_THRESHOLD_FRACTION`` of the nuclear threshold, blue-passing ratio at least
``CANDIDATE_MIN_CHROMA``, on a cell) after the pixels of white-cell nuclei are taken out. On CBC
Training 99 % of the annotated platelets peak above 0.45 × the nuclear threshold with a ratio above
0.55 (the classical rule of :mod:`.platelets` needs 0.7 and 0.75, and masks whole white-cell boxes,
which hold 16 % of the annotated platelets). Each component is described by size, stain, colour,
texture, surroundings and whether the image border cuts it (``FEATURES``: CBC leaves most
platelets cut by the border unannotated, and on a tiled slide a cut platelet is counted in one
tile rather than two); what the filter keeps is a platelet, or a **clump** when
the component is larger than one platelet (``CLUMP_MIN_AREA_UM2``) or holds several stain peaks.

Only the nuclear pixels of groups large enough to be a white cell's nucleus or lobe
(``NUCLEUS_MIN_PIECE_UM2``) are taken out, so a platelet lying against a white cell, which the
white-cell rule may have merged into the cell's group, stays a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from hemato_model.detection.stain import StainField, nucleus_threshold

#: Loose screen: stain above this fraction of the nuclear threshold ...
CANDIDATE_THRESHOLD_FRACTION = 0.45
#: ... and stain / OD above this (red cells stay under ~0.5).
CANDIDATE_MIN_CHROMA = 0.55
#: Components outside this area range (µm²) are not candidates (specks; sheets of stain).
CANDIDATE_AREA_UM2 = (0.3, 60.0)
#: Pieces of the white-cell nucleus mask at least this large (µm²) are nuclei, not platelets.
NUCLEUS_MIN_PIECE_UM2 = 8.0
#: A kept candidate at least this large (µm², loose mask), or with 3 or more stain peaks at least
#: ``CLUMP_MIN_AREA_UM2 / 2``, is reported as a clump (a single platelet is 2-3 µm: ~3-7 µm²).
CLUMP_MIN_AREA_UM2 = 14.0
#: Distances to white cells are capped at this (µm).
FAR_UM = 20.0

FEATURES: tuple[str, ...] = (
    "log_area_um2",
    "log_core_area_um2",
    "peak_contrast",
    "mean_contrast",
    "mean_chroma",
    "peak_od",
    "stain_cv",
    "max_side_um",
    "elongation",
    "fill",
    "ring_stain_contrast",
    "ring_od",
    "ring_cell_fraction",
    "in_wbc_box",
    "nucleus_distance_um",
    "n_peaks",
    "border_cut",
)


@dataclass
class Candidates:
    """Candidate boxes (working px, x0 y0 x1 y1, exclusive), their features (n, len(FEATURES)) and
    areas (µm², loose mask)."""

    boxes: np.ndarray
    features: np.ndarray
    areas_um2: np.ndarray
    n_peaks: np.ndarray


def _empty() -> Candidates:
    return Candidates(np.zeros((0, 4)), np.zeros((0, len(FEATURES)), np.float32), np.zeros(0), np.zeros(0, int))


def find_candidates(field: StainField, wbc_boxes: Sequence[Sequence[float]], nuclei: np.ndarray) -> Candidates:
    """Platelet candidates of one field (see the module docstring)."""
    thr = nucleus_threshold(field)
    stain, od = field.stain, field.od
    mask = (stain > CANDIDATE_THRESHOLD_FRACTION * thr) & (stain > CANDIDATE_MIN_CHROMA * od) & field.cells
    big_nuclei = np.zeros_like(mask)
    if nuclei.any():
        lab_n, n_n = ndi.label(nuclei)
        sizes = np.bincount(lab_n.ravel(), minlength=n_n + 1)
        big = sizes >= field.px2(NUCLEUS_MIN_PIECE_UM2)
        big[0] = False
        big_nuclei = big[lab_n]
        mask &= ~ndi.binary_dilation(big_nuclei)
    labels, n = ndi.label(mask)
    if n == 0:
        return _empty()
    idx = np.arange(1, n + 1)
    flat = labels.ravel()
    areas_px = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    a_um2 = areas_px * field.mpp**2
    ok = (a_um2 >= CANDIDATE_AREA_UM2[0]) & (a_um2 <= CANDIDATE_AREA_UM2[1])
    if not ok.any():
        return _empty()
    sel = idx[ok]
    core = mask & (stain > 0.7 * thr)
    core_px = ndi.sum_labels(core, labels, sel)
    peak = ndi.maximum(stain, labels, sel)
    mean = ndi.mean(stain, labels, sel)
    sd = ndi.standard_deviation(stain, labels, sel)
    chroma = ndi.mean(stain / np.maximum(od, 1e-3), labels, sel)
    peak_od = ndi.maximum(od, labels, sel)
    # stain peaks: local maxima over ~1.2 µm inside the component
    peaks = (stain == ndi.maximum_filter(stain, size=max(3, int(round(field.px(1.2))) | 1))) & mask
    n_peaks = ndi.sum_labels(peaks, labels, sel).astype(int)
    # the ring ~1 µm around each component: its surroundings
    ring_r = max(1, int(round(field.px(1.0))))
    grown = ndi.grey_dilation(labels, size=(2 * ring_r + 1, 2 * ring_r + 1))
    ring = (labels == 0) & (grown > 0)
    ring_lab = np.where(ring, grown, 0)
    ring_stain = ndi.mean(stain, ring_lab, sel)
    ring_od = ndi.mean(od, ring_lab, sel)
    ring_cell = ndi.mean(field.cells, ring_lab, sel)
    if big_nuclei.any():
        dist_nuc = ndi.distance_transform_edt(~big_nuclei) * field.mpp
    else:
        dist_nuc = np.full(mask.shape, FAR_UM)
    slices = ndi.find_objects(labels)
    boxes = np.zeros((len(sel), 4))
    feats = np.zeros((len(sel), len(FEATURES)), np.float32)
    wb = np.asarray(wbc_boxes, float).reshape(-1, 4)
    for i, lab in enumerate(sel):
        sl = slices[lab - 1]
        assert sl is not None
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        boxes[i] = (x0, y0, x1, y1)
        h_um, w_um = (y1 - y0) * field.mpp, (x1 - x0) * field.mpp
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        in_box = bool(len(wb) and np.any((wb[:, 0] <= cx) & (cx < wb[:, 2]) & (wb[:, 1] <= cy) & (cy < wb[:, 3])))
        d_nuc = float(dist_nuc[sl][labels[sl] == lab].min())
        a = a_um2[lab - 1]
        feats[i] = (
            np.log(a),
            np.log(core_px[i] * field.mpp**2 + 0.1),
            peak[i] / thr,
            mean[i] / thr,
            chroma[i],
            peak_od[i],
            sd[i] / max(mean[i], 1e-6),
            max(h_um, w_um),
            max(h_um, w_um) / max(min(h_um, w_um), field.mpp),
            areas_px[lab - 1] / max(1.0, (y1 - y0) * (x1 - x0)),
            ring_stain[i] / thr,
            ring_od[i],
            ring_cell[i],
            float(in_box),
            min(d_nuc, FAR_UM),
            min(n_peaks[i], 8),
            float(x0 <= 0 or y0 <= 0 or x1 >= mask.shape[1] or y1 >= mask.shape[0]),
        )
    return Candidates(boxes, feats, a_um2[sel - 1], n_peaks)


def is_clump(areas_um2: np.ndarray, n_peaks: np.ndarray) -> np.ndarray:
    """Which kept candidates are platelet clumps rather than single platelets."""
    out: np.ndarray = (areas_um2 >= CLUMP_MIN_AREA_UM2) | ((n_peaks >= 3) & (areas_um2 >= CLUMP_MIN_AREA_UM2 / 2))
    return out


#: A clump-shaped candidate is kept as a clump whatever the filter's score when it is platelet-coloured
#: (mean stain / OD at least this, peak stain at least the nuclear threshold), away from white cells
#: (outside their boxes, at least ``CLUMP_MIN_NUCLEUS_DISTANCE_UM`` from a nucleus) and not cut by the
#: border. The filter learned from CBC, which annotates clumps platelet by platelet and has few, so it
#: scores a clump's large, many-peaked component low (a drawn clump of six platelets was dropped). On
#: CBC Training this rule passes 9 of 4,568 candidates (2 match an annotated platelet).
CLUMP_MIN_CHROMA = 0.7
CLUMP_MIN_NUCLEUS_DISTANCE_UM = 3.0


def clump_rule(cands: Candidates) -> np.ndarray:
    """Candidates kept as platelet clumps without the filter (see ``CLUMP_MIN_CHROMA``)."""
    f = {name: cands.features[:, i] for i, name in enumerate(FEATURES)}
    out: np.ndarray = (
        is_clump(cands.areas_um2, cands.n_peaks)
        & (f["mean_chroma"] >= CLUMP_MIN_CHROMA)
        & (f["peak_contrast"] >= 1.0)
        & (f["in_wbc_box"] == 0)
        & (f["nucleus_distance_um"] >= CLUMP_MIN_NUCLEUS_DISTANCE_UM)
        & (f["border_cut"] == 0)
    )
    return out
