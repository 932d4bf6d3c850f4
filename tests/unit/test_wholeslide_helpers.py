"""Fast checks of what the whole-slide recall work added beside the slow per-class test: the glass
map's vectorised block percentiles give the per-block numbers exactly, the candidate screen checks
its input like ``detect_cells``, and the recall matching is one-to-one within half a cell."""

from __future__ import annotations

import numpy as np
import pytest

from hemato_model.detection import wbc_candidates
from hemato_model.detection.stain import STATS_MAX_PX, _block_percentile, stats_sample
from hematovision.devtools.wholeslide_recall import match_cells


@pytest.mark.parametrize(("h", "w", "block", "step"), [(77, 300, 8, 1), (513, 257, 16, 2), (1000, 1024, 38, 2)])
def test_block_percentile_is_the_per_block_percentile(h: int, w: int, block: int, step: int) -> None:
    rgb = np.random.default_rng(h).integers(0, 256, (h, w, 3)).astype(np.float32)
    by = np.linspace(0, h, h // block + 1).astype(int)
    bx = np.linspace(0, w, w // block + 1).astype(int)
    expected = np.array(
        [
            [
                np.percentile(rgb[by[i] : by[i + 1] : step, bx[j] : bx[j + 1] : step].reshape(-1, 3), 90, axis=0)
                for j in range(len(bx) - 1)
            ]
            for i in range(len(by) - 1)
        ],
        np.float32,
    )
    assert np.array_equal(_block_percentile(rgb, by, bx, step, 90.0), expected)


def test_stats_sample_keeps_small_fields_whole_and_thins_large_ones() -> None:
    small = np.zeros((400, 400))
    assert stats_sample(small) is small
    large = np.arange(2048 * 2048, dtype=np.float64).reshape(2048, 2048)
    sample = stats_sample(large)
    assert sample.size <= STATS_MAX_PX and sample.shape == (683, 683)  # every third pixel each way
    assert sample[1, 1] == large[3, 3]


def test_candidate_screen_checks_its_input() -> None:
    with pytest.raises(ValueError, match="RGB"):
        wbc_candidates(np.zeros((64, 64), np.uint8), 1.0)
    with pytest.raises(ValueError, match="mpp"):
        wbc_candidates(np.zeros((64, 64, 3), np.uint8), 0.0)
    assert wbc_candidates(np.full((256, 256, 3), 245, np.uint8), 1.0) == []  # blank glass


def test_matching_is_one_to_one_within_half_a_cell() -> None:
    placed = [
        {"bbox": [0, 0, 40, 40]},  # centre (20, 20), half a cell: 24 px (6 µm at 0.25) > 20 px
        {"bbox": [200, 200, 280, 280]},  # centre (240, 240), half its 80 px box: 40 px
    ]
    detected = np.array([[22.0, 20.0], [25.0, 20.0], [275.0, 240.0], [500.0, 500.0]])
    assert match_cells(placed, detected, mpp=0.25) == [0, 2]  # closest first; 35 px is within 40
    assert match_cells(placed, detected[[1, 3]], mpp=0.25) == [0, None]
    assert match_cells(placed, np.zeros((0, 2)), mpp=0.25) == [None, None]
