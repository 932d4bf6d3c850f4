"""The evaluable smear area: where on a slide's thumbnail there is stained smear, not empty glass."""

from __future__ import annotations

import numpy as np


def smear_mask(thumb: np.ndarray) -> np.ndarray:
    """Boolean mask of the stained smear on a thumbnail (True = evaluable area)."""
    from scipy import ndimage as ndi

    # HSV saturation, (max - min) / max, computed as skimage's rgb2hsv does (the same bits) without
    # its hue and value planes: on an 80,000² slide's thumbnail those were ~0.5 GB of float64
    top = np.multiply(thumb.max(axis=2), 1.0 / 255, dtype=np.float64)
    spread = top - np.multiply(thumb.min(axis=2), 1.0 / 255, dtype=np.float64)
    saturation = np.divide(spread, top, out=np.zeros_like(top), where=spread != 0.0)
    del top, spread
    gray = thumb.mean(axis=2)
    stained = (saturation > 0.08) | (gray < 200)
    stained = ndi.binary_closing(stained, iterations=3)
    stained = ndi.binary_fill_holes(stained)
    return ndi.binary_opening(stained, iterations=1)
