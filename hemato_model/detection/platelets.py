"""Platelets: small, pale, blue-passing stained objects outside white cells (step 5 of
:mod:`hemato_model.detection`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from hemato_model.detection.stain import StainField, nucleus_threshold

PLATELET_DIAMETER_UM = (1.5, 4.0)
#: Platelets are paler than nuclei: their threshold is this fraction of the nuclear one. Lower
#: finds more pale platelets but also purple specks on red cells; chosen on CBC Training and
#: TXL-PBC train (precision/recall 0.76/0.57 and 0.46/0.54 there; 0.6 with a 0.4 µm² core gives
#: recall 0.74 at precision 0.36; a hysteresis outline at 0.45-0.5 did no better).
PLATELET_THRESHOLD_FRACTION = 0.7
#: Platelet pixels pass blue like nuclei, more so (see ``NUCLEUS_MIN_CHROMA``).
PLATELET_MIN_CHROMA = 0.75
#: Least area of a platelet's stained core, µm² (pale platelets show only a small dark core).
PLATELET_MIN_AREA_UM2 = 1.0


def find_platelets(field: StainField, wbc_boxes: Sequence[Sequence[float]]) -> list[tuple[list[float], float]]:
    thr = PLATELET_THRESHOLD_FRACTION * nucleus_threshold(field)
    mask = (field.stain > thr) & (field.stain > PLATELET_MIN_CHROMA * field.od) & field.cells
    for x0, y0, x1, y1 in wbc_boxes:
        mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = False
    labels, n = ndi.label(mask)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    areas = ndi.sum_labels(mask, labels, idx)
    stain_mean = ndi.mean(field.stain, labels, idx)
    lo = PLATELET_MIN_AREA_UM2
    hi = np.pi * (PLATELET_DIAMETER_UM[1] / 2) ** 2 * 1.6
    out = []
    for k, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        a_um2 = areas[k] * field.mpp**2
        if not lo <= a_um2 <= hi:
            continue
        h_um = (sl[0].stop - sl[0].start) * field.mpp
        w_um = (sl[1].stop - sl[1].start) * field.mpp
        if max(h_um, w_um) > PLATELET_DIAMETER_UM[1] * 1.5:
            continue
        # the stained core of a platelet is smaller than the platelet: pad to ~ its outline
        pad = field.px(0.5)
        box = [sl[1].start - pad, sl[0].start - pad, sl[1].stop + pad, sl[0].stop + pad]
        contrast = float(stain_mean[k] / thr)
        out.append((box, float(min(1.0, 0.4 + 0.6 * min(1.0, (contrast - 1.0) / 0.5)))))
    return out
