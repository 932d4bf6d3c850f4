"""Stored white cells cut again from their slide, at the model's physical crop size.

The work dir's crops are removed once a slide's report is stored, so whoever needs a cell's pixels
later (the data-set export, the flag-change check of ``validate-model``) cuts it again from the
slide file: a ``crop_um`` µm square around the centre of the cell's box, at the slide's own
resolution (``round(crop_um / mpp)`` pixels), as the prepare stage cut it. Areas beyond the image
are white (:meth:`hematovision.core.slides.Slide.read_region`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from hematovision.core.slides import SlideError, open_slide
from hematovision.store.models import Cell, Slide


def crop_side_px(crop_um: float, mpp: float) -> int:
    """Side in pixels of a ``crop_um`` square at ``mpp`` µm/px (at least 8)."""
    return max(8, int(round(crop_um / mpp)))


def cut_cells(slide: Slide, cells: Iterable[Cell], crop_um: float) -> Iterator[tuple[Cell, np.ndarray]]:
    """(cell, (side, side, 3) uint8 crop) of each cell, read from the slide's file.

    Raises:
        SlideError: the slide file is gone or unreadable (the caller decides whether to skip it).
    """
    with open_slide(slide.path, mpp=slide.mpp) as opened:
        side = crop_side_px(crop_um, opened.mpp)
        for cell in cells:
            cx, cy = (cell.x0 + cell.x1) / 2.0, (cell.y0 + cell.y1) / 2.0
            x, y = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
            yield cell, opened.read_region((x, y), 0, (side, side))


def slide_mpp(slide: Slide) -> float | None:
    """The µm/px the slide was analysed at (``None`` when it was never opened)."""
    return float(slide.mpp) if slide.mpp else None


__all__ = ["SlideError", "crop_side_px", "cut_cells", "slide_mpp"]
