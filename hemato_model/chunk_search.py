"""The two-pass path's screening of one candidate chunk, run ahead of the caller on worker threads.

Screening a chunk (:func:`screen_chunk`): read it on the candidate level (~1 µm/px), find the
white-cell candidates there (:func:`hemato_model.detection.wbc_candidates`), and for every candidate
inside the smear read a level-0 window around it, find the white cells of that window by the
full-resolution rule (:func:`hemato_model.detection.detect_cells`) and cut the classifier's crop of
each one within reach of the candidate. Nothing of this depends on what other chunks hold, so
:func:`screen_ahead` screens the next chunks on ``workers`` threads while the caller takes the
results *in chunk order* and decides there which cells are new and which were already taken from a
neighbouring candidate or an overlapping chunk: the cells and their order are those of screening one
chunk at a time (the pattern of a bounded, ordered prefetch: ``depth`` chunks are in flight at most,
so memory does not grow with the slide).

The threads run in parallel where the work releases the GIL: OpenSlide reads and JPEG decoding
(ctypes), NumPy's array loops, SciPy's filters and Pillow's resampling; the per-object Python of
the white-cell rule does not (docs/validation.md, "Whole-smear census").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hemato_model.crop_sink import crop_from_slide
from hemato_model.detection import detect_cells, wbc_candidates

if TYPE_CHECKING:
    from hematovision.core.slides import Slide

#: Side of the level-0 window read around a candidate to confirm it, µm (a window of
#: ``2 * WINDOW_HALF_UM``).
WINDOW_HALF_UM = 30.0


@dataclass(frozen=True)
class ChunkGeometry:
    """What screening needs to know of the slide and the model (the same for every chunk)."""

    level: int  # the candidate level
    ds: float  # its downsample from level 0
    mpp: float  # level 0's µm/px
    mask: np.ndarray  # the smear mask on the thumbnail
    mask_down: float  # thumbnail downsample from level 0
    reach_px: float  # a level-0 cell belongs to a candidate within this many level-0 px
    crop_um: float
    input_px: int

    @property
    def level_mpp(self) -> float:
        return self.mpp * self.ds

    def in_mask(self, x: float, y: float) -> bool:
        my, mx = int(y / self.mask_down), int(x / self.mask_down)
        return 0 <= my < self.mask.shape[0] and 0 <= mx < self.mask.shape[1] and bool(self.mask[my, mx])


@dataclass
class FineCell:
    """A white cell found at level 0 near a candidate: its centre and box (level-0 px), score and crop."""

    centre: tuple[float, float]
    bbox: tuple[int, int, int, int]
    score: float
    crop: np.ndarray


@dataclass
class Candidate:
    """A candidate inside the smear (level-0 centre) and its level-0 white cells within reach,
    nearest first."""

    centre: tuple[float, float]
    cells: list[FineCell]


@dataclass
class ScreenedChunk:
    candidates: list[Candidate] = field(default_factory=list)
    candidate_s: float = 0.0  # seconds finding candidates on the candidate level (read included)
    refine_s: float = 0.0  # seconds reading level-0 windows, finding and cropping their cells


def screen_chunk(slide: Slide, chunk: tuple[int, int, int, int], g: ChunkGeometry) -> ScreenedChunk:
    """Candidates of one chunk (x, y, w, h on the candidate level) and their level-0 white cells."""
    out = ScreenedChunk()
    t = time.perf_counter()
    cx0, cy0, cw, ch = chunk
    low = slide.read_region((int(cx0 * g.ds), int(cy0 * g.ds)), g.level, (cw, ch))
    cands = wbc_candidates(low, g.level_mpp)
    del low
    out.candidate_s = time.perf_counter() - t
    t = time.perf_counter()
    win_px = int(math.ceil(WINDOW_HALF_UM / g.mpp))
    for d in cands:
        lx, ly = d.center
        gx, gy = (cx0 + lx) * g.ds, (cy0 + ly) * g.ds
        if not g.in_mask(gx, gy):
            continue
        wx0, wy0 = int(gx) - win_px, int(gy) - win_px
        window = slide.read_region((wx0, wy0), 0, (2 * win_px, 2 * win_px))
        fine = detect_cells(window, g.mpp, kinds=("wbc",))
        dists = [math.hypot(f.center[0] - win_px, f.center[1] - win_px) for f in fine]
        cells = []
        for k in sorted(range(len(fine)), key=dists.__getitem__):
            if dists[k] > g.reach_px:
                break
            fx, fy = fine[k].center
            ax, ay = wx0 + fx, wy0 + fy
            bx0, by0, bx1, by1 = fine[k].bbox
            crop = crop_from_slide(slide, ax, ay, g.mpp, g.crop_um, g.input_px, window, (wx0, wy0))
            cells.append(FineCell((ax, ay), (wx0 + bx0, wy0 + by0, wx0 + bx1, wy0 + by1), float(fine[k].score), crop))
        out.candidates.append(Candidate((gx, gy), cells))
    out.refine_s = time.perf_counter() - t
    return out


def screen_ahead(
    chunks: list[tuple[int, int, int, int]],
    screen: Callable[[tuple[int, int, int, int]], ScreenedChunk],
    workers: int = 2,
    depth: int | None = None,
) -> Generator[ScreenedChunk, None, None]:
    """Yield ``screen(chunk)`` for every chunk, in order, screened on ``workers`` threads at most
    ``depth`` (default ``workers + 1``) chunks ahead. When the caller stops early (or fails), the
    chunks not started are cancelled and the running ones finish before this returns."""
    depth = max(1, depth if depth is not None else workers + 1)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="chunk-screen") as pool:
        pending: list[Future[ScreenedChunk]] = [pool.submit(screen, c) for c in chunks[:depth]]
        try:
            for k in range(len(chunks)):
                result = pending.pop(0).result()
                if k + depth < len(chunks):
                    pending.append(pool.submit(screen, chunks[k + depth]))
                yield result
        finally:
            for f in pending:
                f.cancel()
