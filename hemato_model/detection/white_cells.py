"""White cells: nuclear pixels grouped into cells (step 4 of :mod:`hemato_model.detection`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from hemato_model.detection.stain import NUCLEUS_MIN_CHROMA, StainField, dilate_disk, nucleus_threshold

#: Physical size ranges (diameters, µm).
WBC_DIAMETER_UM = (9.0, 20.0)
#: Nuclear fragments within this gap (µm) are one group (dilation radius is half of it).
WBC_MERGE_UM = 3.0
#: Groups whose nuclear boxes together stay within this size (µm) and lie within a cell radius of
#: each other are one cell (lobed neutrophils, eosinophils).
WBC_MERGE_EXTENT_UM = 15.0
#: Least stained (nuclear) area of a white cell, µm² (a platelet is under ~12 µm²; 99% of the
#: white cells found on CBC and TXL-PBC train+test have over 25 µm²).
WBC_MIN_NUCLEUS_UM2 = 20.0
#: ... unless the group is dense: a pyknotic nucleus (orthochromatic erythroblast, ~4-5 µm across)
#: stains only 10-20 µm² but is the darkest chromatin of the smear. A group of at least
#: ``WBC_MIN_DENSE_NUCLEUS_UM2`` whose mean stain is at least ``WBC_DENSE_CONTRAST`` x the nuclear
#: threshold, not cut by the image border (a sliver of a larger nucleus), is a white cell too.
#: Chosen on the synthetic slides of benchmarks/wholeslide_recall.py: small erythroblast nuclei
#: reach contrast 2.9-5.8, platelets lying on red cells mostly stay under 2.8 (a few dense platelet
#: clumps pass; docs/validation.md, "Whole-slide detection recall"); on CBC Testing and TXL-PBC test
#: no group of 10-20 µm² reaches 2.0 and the detection scores are unchanged.
WBC_MIN_DENSE_NUCLEUS_UM2 = 10.0
WBC_DENSE_CONTRAST = 2.8
#: Cytoplasm rim added around the nuclear box, µm.
WBC_CYTOPLASM_UM = 2.5


@dataclass(frozen=True)
class NucleusRule:
    """Which stained pixels are nuclear, and which groups of them are white cells.

    The defaults are the full-resolution rule (the constants above); the candidate pass on a coarse
    pyramid level loosens it (``hemato_model.detection.detect.CANDIDATE_RULE``).
    """

    min_chroma: float = NUCLEUS_MIN_CHROMA  # a nuclear pixel's stain / its optical density
    min_nucleus_um2: float = WBC_MIN_NUCLEUS_UM2
    min_dense_nucleus_um2: float = WBC_MIN_DENSE_NUCLEUS_UM2
    dense_contrast: float = WBC_DENSE_CONTRAST


@dataclass
class NuclearGroup:
    box: list[float]  # nuclear box x0, y0, x1, y1 (working px, exclusive)
    area: float  # stained pixels
    contrast: float  # mean stain / threshold
    labels: list[int]


def merge_groups(groups: list[NuclearGroup], max_extent_px: float, max_gap_px: float) -> list[NuclearGroup]:
    """Merge nuclear groups that are near each other and together still fit in one cell.

    Union-find over the pairs whose centres are within ``max_extent_px`` (a k-d tree finds
    them), closest pairs first; a pair joins when the gap between the two current boxes is at
    most ``max_gap_px`` and their union box is at most ``max_extent_px`` on its longer side.
    """
    if len(groups) < 2:
        return groups
    from scipy.spatial import cKDTree

    boxes = np.array([g.box for g in groups], float)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    pairs = np.array(sorted(cKDTree(centres).query_pairs(max_extent_px)), int).reshape(-1, 2)
    if len(pairs) == 0:
        return groups
    d = np.linalg.norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], axis=1)
    parent = list(range(len(groups)))
    box = [list(b) for b in boxes]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs[np.argsort(d)]:
        a, b = root(int(i)), root(int(j))
        if a == b:
            continue
        ba, bb = box[a], box[b]
        union = [min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])]
        gap = max(max(ba[0], bb[0]) - min(ba[2], bb[2]), max(ba[1], bb[1]) - min(ba[3], bb[3]))
        if max(union[2] - union[0], union[3] - union[1]) <= max_extent_px and gap <= max_gap_px:
            parent[b] = a
            box[a] = union
    merged: dict[int, NuclearGroup] = {}
    for k, g in enumerate(groups):
        r = root(k)
        if r not in merged:
            merged[r] = NuclearGroup(box[r], 0.0, 0.0, [])
        m = merged[r]
        m.contrast = (m.contrast * m.area + g.contrast * g.area) / (m.area + g.area)
        m.area += g.area
        m.labels += g.labels
    return list(merged.values())


def find_white_cells(
    field: StainField, rule: NucleusRule = NucleusRule()
) -> tuple[list[tuple[list[float], float]], np.ndarray]:
    """White cells as (box in working px, score), and the mask of their nuclei."""
    thr = nucleus_threshold(field)
    nuclear = (field.stain > thr) & (field.stain > rule.min_chroma * field.od) & field.cells
    h, w = nuclear.shape
    if not nuclear.any():
        return [], np.zeros_like(nuclear)
    grouped = dilate_disk(nuclear, field.px(WBC_MERGE_UM / 2.0))
    labels, n = ndi.label(grouped)
    if n == 0:
        return [], np.zeros_like(nuclear)
    lab_nuc = np.where(nuclear, labels, 0)
    # per-group sums over the (few) nuclear pixels only: what ndi.sum_labels gives, without
    # passing over every pixel of a large field twice
    nuc_labels = labels[nuclear]
    areas = np.bincount(nuc_labels, minlength=n + 1)[1:].astype(np.float64)
    stain_sum = np.bincount(nuc_labels, weights=field.stain[nuclear], minlength=n + 1)[1:]
    slices = ndi.find_objects(lab_nuc, max_label=n)
    groups: list[NuclearGroup] = []
    min_fragment = field.px2(1.0)
    for k, sl in enumerate(slices):
        if sl is None or areas[k] < min_fragment:
            continue
        box = [float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)]
        contrast = float(stain_sum[k] / areas[k] / thr)
        groups.append(NuclearGroup(box, float(areas[k]), contrast, [k + 1]))
    groups = merge_groups(groups, field.px(WBC_MERGE_EXTENT_UM), field.px(WBC_DIAMETER_UM[0] / 2))
    min_area = field.px2(rule.min_nucleus_um2)
    min_dense_area = field.px2(rule.min_dense_nucleus_um2)
    margin = field.px(WBC_CYTOPLASM_UM)
    min_half, max_half = field.px(WBC_DIAMETER_UM[0]) / 2, field.px(WBC_DIAMETER_UM[1]) / 2
    cells: list[tuple[list[float], float]] = []
    keep = np.zeros(n + 1, bool)
    for g in groups:
        cut = g.box[0] <= 0 or g.box[1] <= 0 or g.box[2] >= w or g.box[3] >= h  # by the image border
        dense = g.area >= min_dense_area and g.contrast >= rule.dense_contrast and not cut
        if g.area < min_area and not dense:  # also drops slivers of white cells cut by the border
            continue
        cx, cy = (g.box[0] + g.box[2]) / 2, (g.box[1] + g.box[3]) / 2
        half_x = min(max((g.box[2] - g.box[0]) / 2 + margin, min_half), max_half)
        half_y = min(max((g.box[3] - g.box[1]) / 2 + margin, min_half), max_half)
        box = [max(0.0, cx - half_x), max(0.0, cy - half_y), min(float(w), cx + half_x), min(float(h), cy + half_y)]
        size_term = min(1.0, g.area / (2.0 * min_area))
        contrast_term = min(1.0, max(0.0, (g.contrast - 1.0) / 0.5))
        score = 0.4 + 0.3 * size_term + 0.3 * contrast_term
        cells.append((box, float(score)))
        keep[g.labels] = True
    nucleus_mask = keep[lab_nuc] & nuclear
    return cells, nucleus_mask
