"""``cored_tiles``: every pixel lies in exactly one tile core (so a cell is owned by one tile), and a
tile is its core widened by the overlap on each side, clipped to the image; also when the overlap
is wider than a tile."""

from __future__ import annotations

import numpy as np
import pytest

from hemato_model.tiling import cored_tiles, overlapping_tiles


@pytest.mark.parametrize(
    ("w", "h", "tile", "overlap"), [(1000, 700, 256, 30), (256, 256, 256, 10), (300, 90, 64, 0), (500, 300, 64, 100)]
)
def test_tile_cores_cover_the_image_once(w: int, h: int, tile: int, overlap: int) -> None:
    cover = np.zeros((h, w), np.int32)
    tiles = list(cored_tiles(w, h, tile, overlap))
    for (x0, y0, tw, th), (cx0, cy0, cx1, cy1) in tiles:
        assert cx0 % tile == 0 and cy0 % tile == 0  # the core is a cell of the tile grid
        assert (x0, y0) == (max(0, cx0 - overlap), max(0, cy0 - overlap))
        assert (x0 + tw, y0 + th) == (min(w, cx1 + overlap), min(h, cy1 + overlap))
        cover[cy0:cy1, cx0:cx1] += 1
    assert (cover == 1).all()
    assert list(overlapping_tiles(w, h, tile, overlap)) == [t for t, _ in tiles]
