"""Overlapping square tiles over an image: each tile's core, widened by the overlap on every side."""

from __future__ import annotations

from collections.abc import Iterator


def overlapping_tiles(width: int, height: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    step = tile
    for y in range(0, height, step):
        for x in range(0, width, step):
            x0, y0 = max(0, x - overlap), max(0, y - overlap)
            x1, y1 = min(width, x + step + overlap), min(height, y + step + overlap)
            yield x0, y0, x1 - x0, y1 - y0
