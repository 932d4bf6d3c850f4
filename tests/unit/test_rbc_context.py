"""Background and context augmentation of red-cell crops (issue 17): the centre cell's outline, the
relit/isolated/cluttered crops, and relighting to the canonical glass."""

from __future__ import annotations

import numpy as np
import pytest

from hemato_model.rbc.context import (
    CANONICAL_GLASS_RGB,
    centre_cell_masks,
    field_glass,
    make_context_augmenter,
    normalise_glass,
)

GLASS = np.array([200.0, 190.0, 180.0], np.float32)


def _crops() -> np.ndarray:
    """Two 64 px crops (12 µm): a red cell at the centre just touching a neighbour on the right (a
    neck of ~6 px = 1.1 µm; :func:`centre_cell_masks` cuts necks narrower than ~2 × 12 % of the
    5.5 µm search radius)."""
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.empty((64, 64, 3), np.float32)
    img[:] = GLASS
    for cx in (32.0, 71.5):  # 7.5 µm cells = 40 px across; the neighbour overlaps the rim by 0.5 px
        img[(xx - cx) ** 2 + (yy - 32) ** 2 <= 20.0**2] = (150, 90, 110)
    return np.stack([img, img[:, ::-1]]).astype(np.uint8)


def test_centre_mask_keeps_the_centre_cell_and_not_the_far_neighbour() -> None:
    crops = _crops()
    masks = centre_cell_masks(crops, np.stack([GLASS, GLASS]), crop_um=12.0)
    assert masks.shape == (2, 64, 64) and masks.dtype == np.uint8
    assert masks[0, 32, 32] == 255 and masks[0, 32, 14] == 255  # inside the centre cell
    # beyond the 5.5 µm search disc the neighbour is not carried along (a neighbour touching along a
    # broad contact, as here, keeps its part inside the disc: the erosion cuts only narrow necks)
    assert masks[0, 32, 63] < 10 and masks[1, 32, 0] < 10
    assert masks[0, 2, 2] == 0  # glass
    assert np.pi * 20**2 < (masks[0] > 127).sum() < 1.4 * np.pi * 20**2


def test_field_glass_is_the_bright_percentile() -> None:
    img = np.zeros((80, 80, 3), np.uint8)
    img[:, :60] = (166, 178, 170)
    assert np.allclose(field_glass(img), (166, 178, 170))


def test_normalise_glass_relights_the_background_to_the_target() -> None:
    crops = _crops()
    out = normalise_glass(crops, np.stack([GLASS, GLASS]), CANONICAL_GLASS_RGB)
    assert np.allclose(out[0, 2, 2], CANONICAL_GLASS_RGB, atol=1)
    # the cell keeps its transmittance: pixel / glass is unchanged
    assert np.allclose(out[0, 32, 32] / np.array(CANONICAL_GLASS_RGB), crops[0, 32, 32] / GLASS, atol=0.01)


@pytest.mark.slow
def test_context_augmenter_relights_isolates_and_keeps_the_cell() -> None:
    import tensorflow as tf

    crops = np.repeat(_crops(), 32, axis=0)
    glass = np.tile(GLASS, (64, 1))
    masks = centre_cell_masks(crops, glass, crop_um=12.0)
    aug = make_context_augmenter(seed=3, p_isolate=1.0, p_clutter=0.0, p_canonical=0.0, p_jpeg=0.0)
    out = np.asarray(aug(tf.constant(crops), tf.constant(glass), tf.constant(masks)))
    assert out.shape == crops.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    bg = out[:, 2, 2, :]
    assert bg.std(axis=0).mean() > 10  # a different glass colour per crop
    assert np.allclose(out[:32, 32, 63], bg[:32], atol=2.0)  # isolated: the far neighbour became glass
    # the centre cell keeps its transmittance under every glass colour
    t_cell = out[:, 32, 32, :] / np.maximum(bg, 1.0)
    assert np.allclose(t_cell, (crops[0, 32, 32] / GLASS)[None, :], atol=0.03)
