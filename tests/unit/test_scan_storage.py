"""The scan-storage training augmentation: a share of the crops re-sampled as a scanner stores them,
reproducibly from the generator, the rest untouched."""

from __future__ import annotations

import numpy as np
import pytest

from hemato_model.training.scan_storage import stored_scans


def _crops(n: int) -> np.ndarray:
    _, xx = np.mgrid[0:160, 0:160]
    stripes = np.where(xx % 2 == 0, 60, 200).astype(np.uint8)  # 0.15 µm detail: lost by any scan here
    noise = np.random.default_rng(3).integers(0, 30, (n, 160, 160, 3), dtype=np.uint8)
    return np.stack([stripes] * 3, -1)[None] + noise


def test_a_share_of_the_crops_is_stored_as_a_scan_and_the_rest_is_untouched() -> None:
    crops = _crops(40)
    out = stored_scans(crops, 24.0, 0.55, np.random.default_rng(0), share=0.5)
    assert out.shape == crops.shape and out.dtype == np.uint8
    changed = [not np.array_equal(a, b) for a, b in zip(out, crops, strict=True)]
    assert 10 <= sum(changed) <= 30  # about half
    for a, b, c in zip(out, crops, changed, strict=True):
        if c:  # the 0.15 µm stripes do not survive a scan at 0.2-0.55 µm/px
            assert float(np.abs(a[:, 0::2].astype(int) - a[:, 1::2].astype(int)).mean()) < 60
        else:
            assert np.array_equal(a, b)
    again = stored_scans(crops, 24.0, 0.55, np.random.default_rng(0), share=0.5)
    assert np.array_equal(out, again)  # the generator decides everything
    assert np.array_equal(stored_scans(crops, 24.0, 0.55, np.random.default_rng(0), share=0.0), crops)
    assert all(
        not np.array_equal(a, b)
        for a, b in zip(stored_scans(crops, 24.0, 0.55, np.random.default_rng(1), share=1.0), crops, strict=True)
    )


def test_a_scan_finer_than_the_simulated_range_is_refused() -> None:
    with pytest.raises(ValueError, match="max_mpp"):
        stored_scans(_crops(1), 24.0, 0.1, np.random.default_rng(0))
