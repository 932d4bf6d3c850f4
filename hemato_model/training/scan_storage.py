"""Training augmentation: a crop as a whole-slide scanner stores it.

A cell on a slide reaches the classifier through the scan's pixels (0.25 µm/px at 40×, 0.5 at 20×)
stored as JPEG with 4:2:0 chroma, then up-sampled to the network's input
(:func:`hemato_model.preprocessing.rescan`). PBC's crops (0.08 µm/px) never went that way, and on
validation crops so stored the shipped classifier loses up to ten points of accuracy
(docs/validation.md, "Slide storage"). This augmentation re-samples a share of each batch as a scan at
a random µm/px in ``[SCAN_MPP_MIN, max_mpp]`` stored at a random JPEG quality in ``JPEG_QUALITY``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and the resampler load on use: the CLI imports this module for its ranges
    import numpy as np

#: The finest scan simulated (a 40x scanner is ~0.25 µm/px; some give 0.2).
SCAN_MPP_MIN = 0.2
#: JPEG qualities scanners store tiles at (Aperio commonly 70; make-slide 85), inclusive.
JPEG_QUALITY = (60, 95)


def stored_scans(
    crops: np.ndarray, crop_um: float, max_mpp: float, rng: np.random.Generator, share: float = 0.5
) -> np.ndarray:
    """A copy of ``crops`` (uint8, N x px x px x 3, ``crop_um`` µm square) in which each crop, with
    probability ``share``, is replaced by itself as a scan at a random µm/px stored as JPEG."""
    import numpy as np

    from hemato_model.preprocessing import rescan

    if max_mpp < SCAN_MPP_MIN:
        raise ValueError(f"max_mpp must be at least {SCAN_MPP_MIN} µm/px, not {max_mpp}")
    out = np.array(crops, dtype=np.uint8, copy=True)
    for i in np.flatnonzero(rng.random(len(out)) < share):
        mpp = float(rng.uniform(SCAN_MPP_MIN, max_mpp))
        quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        out[i] = rescan(out[i : i + 1], crop_um, mpp, quality)[0]
    return out
