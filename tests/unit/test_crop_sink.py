"""``crop_from_slide``, the one place both reading paths cut a white cell's crop: from the region
already read when the crop lies inside it, else from a read of its own; both must give the same
pixels, so which path found a cell never changes what the classifier sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemato_model.crop_sink import crop_from_slide
from hemato_model.preprocessing import crop_cell
from hematovision.core.slides import Slide, open_slide

MPP, CROP_UM, INPUT_PX = 0.25, 24.0, 64  # a 96 px crop: half is 50 px with the margin


@pytest.fixture
def slide(tmp_path: Path) -> Slide:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (400, 520, 3), dtype=np.uint8)
    path = tmp_path / "field.png"
    Image.fromarray(pixels).save(path)
    return open_slide(path, mpp=MPP)


def test_a_crop_inside_the_region_is_cut_from_it_as_from_its_own_read(slide: Slide) -> None:
    origin = (40, 30)
    region = slide.read_region(origin, 0, (300, 260))
    for x, y in [(200.0, 150.5), (95.0, 85.0), (285.3, 230.0)]:  # the last two 55 px inside the region
        from_region = crop_from_slide(slide, x, y, MPP, CROP_UM, INPUT_PX, region, origin)
        own = crop_from_slide(slide, x, y, MPP, CROP_UM, INPUT_PX)
        assert from_region.shape == (INPUT_PX, INPUT_PX, 3)
        assert np.array_equal(from_region, own)


def test_a_crop_overrunning_the_region_is_read_from_the_slide(slide: Slide) -> None:
    origin = (40, 30)
    region = slide.read_region(origin, 0, (300, 260))
    x, y = 60.0, 200.0  # 20 px inside the region's left edge: the crop needs pixels left of it
    own = crop_from_slide(slide, x, y, MPP, CROP_UM, INPUT_PX, region, origin)
    assert np.array_equal(own, crop_from_slide(slide, x, y, MPP, CROP_UM, INPUT_PX))
    # the slide's own pixels, not the region's edge reflected
    assert not np.array_equal(own, crop_cell(region, (x - origin[0], y - origin[1]), MPP, CROP_UM, INPUT_PX))
