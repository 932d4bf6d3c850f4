"""Scale from the image itself: µm/px estimated from the red cells of a field (7.5 µm across) or,
where a crop holds no whole red cell, from the white cell at its centre (about 12 µm across).

:func:`estimate_mpp` measures red cells (fields, slides). :func:`estimate_wbc_mpp` measures the
centred white cell of a single-cell crop. :func:`estimate_image_mpp` picks between them per image and
says which it used (:class:`ScaleEstimate`); ``hematovision evaluate`` without ``--mpp`` calls it on
every image, and the slide gate (:mod:`hemato_model.quality`) compares a slide's stated scale with
:func:`estimate_mpp` over its sampled fields. Accuracy: docs/validation.md, "Scale estimate".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.feature import peak_local_max

from hemato_model.detection.stain import check_image, disk, nucleus_threshold, stain_field
from hematovision.core.datasets import RBC_DIAMETER_UM

#: Typical white-cell diameter, µm (neutrophils and monocytes 12-15 µm, small lymphocytes 7-9 µm;
#: PBC's class mix measures ~12 µm at its stated 0.08 µm/px).
WBC_DIAMETER_UM = 12.0
#: Isolated round red cells a field needs before their diameter is trusted over a white cell's.
MIN_WHOLE_RBC = 3


@dataclass(frozen=True)
class ScaleEstimate:
    """µm/px measured on one image, and what it was measured on (``red_cells``: isolated red
    cells; ``red_cells_packed``: distance maxima of touching red cells; ``white_cell``: the centred
    white cell of a crop)."""

    mpp: float
    source: str


def estimate_mpp(image: np.ndarray) -> float:
    """Estimate µm/px of a smear field from its red cells (7.5 µm across).

    Cells are segmented without a scale (glass-noise threshold on green optical density, gaps
    closed, central pallor filled, white cells removed). The typical inscribed radius ``r0`` is
    the median height of the distance-transform maxima (one per cell, even in clumps). Isolated,
    round components (solidity ≥ 0.92, axis ratio ≤ 1.35, off the border, 1.6–4.5 ``r0`` across)
    are single red cells: their median equivalent diameter is the red-cell diameter. With fewer
    than three such cells, ``2 · r0 · 1.55`` stands in (distance maxima of touching, oval cells
    are ~1.55× smaller than the half-diameter, calibrated on CBC/TXL-PBC training fields).

    Accuracy against annotated red-cell boxes: within about ±15% on CBC, wider on TXL-PBC fields
    packed with cells; good enough for physical size ranges, not for morphometry.

    Raises:
        ValueError: when no red cells can be measured (a blank or non-smear image).
    """
    return RBC_DIAMETER_UM / _red_cell_diameter_px(image)[0]


def upsample_to(image: np.ndarray, min_side_px: int) -> tuple[np.ndarray, float]:
    """``image`` enlarged (bilinear) so that its longest side is at least ``min_side_px``, and the
    factor it was enlarged by (1.0: returned as is)."""
    h, w = image.shape[:2]
    factor = min_side_px / max(h, w)
    if factor <= 1.0:
        return image, 1.0
    size = (round(w * factor), round(h * factor))
    big = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return big, (size[0] / w + size[1] / h) / 2.0


def _red_cell_diameter_px(image: np.ndarray, min_side_px: int = 0) -> tuple[float, int]:
    """(red-cell diameter in input pixels, isolated round red cells it rests on); see estimate_mpp.

    ``min_side_px``: an image smaller than this is enlarged to it first (see
    :func:`estimate_image_mpp`); the diameter is still in the input's pixels.
    """
    from skimage.measure import regionprops

    arr, up = upsample_to(check_image(image), min_side_px)
    longest = max(arr.shape[:2])
    pre = max(1.0, longest / 400.0)
    block = max(8, int(round(longest / pre / 6)))
    field = stain_field(arr, 1.0, pre, block, smooth_px=1.0)  # mpp 1 is a dummy: work in pixels
    cells = ndi.binary_closing(field.cells, disk(2))
    cells = ndi.binary_fill_holes(cells)
    cells = ndi.binary_opening(cells, disk(2))
    cells &= ~ndi.binary_dilation(field.stain > nucleus_threshold(field), disk(3))
    if cells.sum() < 50:
        raise ValueError("cannot estimate µm/px: no red cells found in the image (blank field?)")
    dist = ndi.distance_transform_edt(cells)
    peaks = peak_local_max(dist, min_distance=3, threshold_abs=2, exclude_border=False)
    if len(peaks) == 0:
        raise ValueError("cannot estimate µm/px: the cells are too small to measure")
    heights = dist[peaks[:, 0], peaks[:, 1]]
    heights = heights[heights >= 0.4 * np.percentile(heights, 95)]
    r0 = float(np.median(heights))
    labels, _ = ndi.label(cells)
    h, w = cells.shape
    diameters = []
    for rp in regionprops(labels):
        y0, x0, y1, x1 = rp.bbox
        if y0 == 0 or x0 == 0 or y1 == h or x1 == w:
            continue
        d = 2.0 * np.sqrt(rp.area / np.pi)
        ratio = rp.axis_major_length / max(rp.axis_minor_length, 1e-6)
        if rp.solidity >= 0.92 and ratio <= 1.35 and 1.6 * r0 <= d <= 4.5 * r0:
            diameters.append(d)
    d_px = float(np.median(diameters)) if len(diameters) >= 3 else 2.0 * r0 * 1.55
    d_px *= field.scale / up
    if d_px < 5:
        raise ValueError(f"cannot estimate µm/px: red cells measure {d_px:.1f} px, too small")
    return d_px, len(diameters)


#: Cell diameter over the equivalent diameter of the central nucleus' convex hull, calibrated on
#: the shipped model's PBC training crops (524 white-cell crops of 600 sampled: the median estimate
#: equals PBC_MPP, 0.08 µm/px); see docs/validation.md.
WBC_CELL_PER_HULL = 1.15
#: The stained disc :func:`estimate_mpp` measures is smaller than the red cell a 7.5 µm diameter
#: refers to: measured disc / diameter is 0.81 on PBC training crops (0.0993 µm/px read for 0.08)
#: and 0.91 on CBC fields (0.078 for 0.071); :func:`estimate_image_mpp` corrects by the mean.
RBC_DISC_FRACTION = 0.85


def estimate_wbc_mpp(image: np.ndarray) -> float:
    """Estimate µm/px of a single-cell crop from its centred white cell (about 12 µm across).

    The nuclear stain (``OD_green - OD_blue`` over the glass, as in detection) is thresholded
    relative to the crop's red cells; nuclear fragments within a few pixels are grouped and the
    group nearest the centre is the cell's nucleus (lobes of a neutrophil included). The cell's
    diameter is ``WBC_CELL_PER_HULL`` times the equivalent diameter of that nucleus' convex hull
    (the cytoplasm is not segmented: it is pale and touches red cells), and is set to
    ``WBC_DIAMETER_UM``.

    Accuracy (docs/validation.md): a per-cell scale is only as good as the cell is typical (a small
    lymphocyte reads ~30 % fine, a monocyte coarse); the median over a folder is what to trust.

    Raises:
        ValueError: when no nucleus is found near the centre.
    """
    from skimage.measure import regionprops

    arr = check_image(image)
    longest = max(arr.shape[:2])
    pre = max(1.0, longest / 256.0)
    block = max(8, int(round(longest / pre / 4)))
    field = stain_field(arr, 1.0, pre, block, smooth_px=1.0)
    nuclear = (field.stain > nucleus_threshold(field)) & field.cells
    if nuclear.sum() < 20:
        raise ValueError("cannot estimate µm/px: no white-cell nucleus in the image")
    h, w = nuclear.shape
    gap = max(2.0, 0.03 * max(h, w))
    labels, n = ndi.label(ndi.binary_dilation(nuclear, disk(gap)))
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    best, best_d = None, float("inf")
    for rp in regionprops(labels):
        y, x = rp.centroid
        d = float(np.hypot(y - cy, x - cx))
        if d < best_d and rp.area >= 0.01 * h * w:
            best, best_d = rp, d
    if best is None or best_d > 0.35 * max(h, w):
        raise ValueError("cannot estimate µm/px: no white-cell nucleus near the centre")
    group = (labels == best.label) & nuclear
    hull = regionprops(group.astype(np.uint8))[0].area_convex
    d_px = WBC_CELL_PER_HULL * 2.0 * float(np.sqrt(hull / np.pi)) * field.scale
    if d_px < 5:
        raise ValueError(f"cannot estimate µm/px: the white cell measures {d_px:.1f} px, too small")
    return WBC_DIAMETER_UM / d_px


#: Least longest side, px, at which red cells are measured like a 40× field's: the segmentation's
#: closing, opening and peak spacing are a few pixels wide, so a smaller image (a 100 µm field of a
#: 20× scan is 200 px; another lab's 120 px crop) is enlarged to it first (docs/validation.md,
#: *20× gate fields measured enlarged* and *Small crops measured enlarged*).
MEASURE_SIDE_PX = 400


def estimate_image_mpp(image: np.ndarray, centred_cell: bool = True, min_side_px: int = 0) -> ScaleEstimate:
    """µm/px of one image from its own content: isolated red cells when it holds at least
    ``MIN_WHOLE_RBC`` of them, else (for a single-cell crop, ``centred_cell``) its centred white
    cell, else packed red cells. A field (``centred_cell=False``) is measured on red cells only.

    ``min_side_px``: red cells are measured on the image enlarged to at least this longest side.
    The segmentation's closing and opening are a few pixels wide: on a 200 px field of a 20× scan
    (0.5 µm/px) they merge 15 px red cells, so few count as isolated and the packed-cell stand-in
    reads ~1.5× too large; enlarged to 400 px the same field is measured like a 40× one (the
    slide gate and ``evaluate`` pass :data:`MEASURE_SIDE_PX`; docs/validation.md).

    Raises:
        ValueError: when nothing can be measured (a blank, black or one-colour image).
    """
    try:
        d_px, whole = _red_cell_diameter_px(image, min_side_px)
    except ValueError:
        d_px, whole = 0.0, 0
    if whole >= MIN_WHOLE_RBC:
        return ScaleEstimate(RBC_DISC_FRACTION * RBC_DIAMETER_UM / d_px, "red_cells")
    if centred_cell:
        try:
            return ScaleEstimate(estimate_wbc_mpp(image), "white_cell")
        except ValueError:
            pass
    if d_px > 0:
        return ScaleEstimate(RBC_DISC_FRACTION * RBC_DIAMETER_UM / d_px, "red_cells_packed")
    raise ValueError("cannot estimate µm/px: neither red cells nor a white cell can be measured")
