"""Overlapping square tiles over an image: each tile is its core, a cell of the ``tile`` grid,
widened by the overlap on every side and clipped to the image. The cores cover the image once, so a
cell belongs to the tile whose core holds its centre."""

from __future__ import annotations

from collections.abc import Iterator

#: ``(x, y, w, h)`` of a tile; ``(x0, y0, x1, y1)`` (exclusive) of its core
Tile = tuple[int, int, int, int]
Core = tuple[int, int, int, int]


def cored_tiles(width: int, height: int, tile: int, overlap: int) -> Iterator[tuple[Tile, Core]]:
    """Each tile, in raster order, with its core."""
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            x0, y0 = max(0, x - overlap), max(0, y - overlap)
            x1, y1 = min(width, x + tile + overlap), min(height, y + tile + overlap)
            yield (x0, y0, x1 - x0, y1 - y0), (x, y, min(width, x + tile), min(height, y + tile))


def overlapping_tiles(width: int, height: int, tile: int, overlap: int) -> Iterator[Tile]:
    """The tiles of :func:`cored_tiles` alone."""
    return (t for t, _ in cored_tiles(width, height, tile, overlap))
