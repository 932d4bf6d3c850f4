"""The two-pass path of whole slides: white-cell candidates on a low-resolution level, level 0 read
only around them (the module docstring of :mod:`hemato_model.pipeline`, step 3)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from hemato_model.chunk_search import ChunkGeometry, screen_ahead, screen_chunk
from hemato_model.count_fields import count_fields
from hemato_model.crop_sink import ClassifyingSink, CropSink
from hemato_model.pipeline_params import PipelineParams, SlideReading
from hemato_model.sampling import FIELD_UM, METHOD, Monolayer, Sampling, level_chunks, spread_fields, whole_smear
from hemato_model.taken_cells import TakenCells
from hemato_model.tiling import overlapping_tiles
from hematovision.core.results import WBC, CellResult

#: Two-pass reading: every white cell the level-0 detector finds within this many µm of a
#: candidate's centre is taken (a coarse candidate can stand for two touching cells, or for a cell
#: and a nucleus beside it, which the full-resolution path both counts) ...
REFINE_REACH_UM = 10.0
#: ... unless a cell already taken lies within this many µm: the same cell seen again from a
#: neighbouring candidate or an overlapping chunk (its level-0 box is found again within a µm or
#: two). Half of the 10 µm used before, which dropped the second of two cells 5-10 µm apart.
DUPLICATE_UM = 5.0
#: A candidate chunk is read only over the smear mask's bounding box within it, widened by this
#: many µm (more than a white cell's radius: a cell at the edge of the mask is screened whole).
SMEAR_MARGIN_UM = 30.0


@dataclass
class ChunkPlan:
    """Where the two-pass path reads, in order: chunks ``(x, y, w, h)`` of the candidate level."""

    chunks: list[tuple[int, int, int, int]]
    #: spread sampling: the level-0 field each chunk stands for (empty where the smear is read in
    #: raster order)
    fields: list[tuple[int, int, int, int]]
    #: the report's record of what was read; spread sampling adds each field as it is read
    sampling: Sampling


def plan_chunks(r: SlideReading, mono: Monolayer | None, level_size: tuple[int, int], ds: float) -> ChunkPlan:
    """Spread-sampling fields over the monolayer (:mod:`hemato_model.sampling`) unless a full count
    or census is asked for or the smear has no field of monolayer; else the level's chunks in raster
    order, each clipped to the smear mask's extent within it."""
    result, params = r.result, r.params
    lw, lh = level_size
    level_mpp = result.mpp * ds
    overlap = int(math.ceil(20.0 / level_mpp))
    if mono is not None and not (params.full_count or params.census):
        fields = spread_fields(mono, result.width, result.height, min(params.chunk_um, FIELD_UM))
        if fields:
            return ChunkPlan(level_chunks(fields, ds, overlap, lw, lh), fields, Sampling(METHOD, mono))
    # raster order (a full count, a census, or a smear too small or odd for spread fields)
    chunk_px = max(64, int(round(params.chunk_um / level_mpp)))
    margin = int(math.ceil(SMEAR_MARGIN_UM / level_mpp))
    to_mask = ds / r.down
    chunks = [
        b
        for c in overlapping_tiles(lw, lh, chunk_px, overlap)
        if (b := clip_to_mask(c, r.mask, to_mask, margin)) is not None
    ]
    return ChunkPlan(chunks, [], whole_smear(mono, result.width, result.height, "whole smear (full count)"))


def read_two_pass(r: SlideReading, side: ThreadPoolExecutor, mono: Monolayer | None = None) -> None:
    """Low-resolution white-cell candidates, full resolution only around them, chunk by chunk as
    :func:`plan_chunks` orders them, until enough white cells are in hand (unless a full count or
    census is asked for); the count fields are read on ``side`` meanwhile."""
    slide, result, spec, sink, mask, down, params = r.slide, r.result, r.spec, r.sink, r.mask, r.down, r.params
    mpp = result.mpp
    level = slide.get_best_level_for_downsample(params.candidate_mpp / mpp)
    lw, lh = slide.level_dimensions[level]
    ds = result.width / lw
    plan = plan_chunks(r, mono, (lw, lh), ds)
    whole = params.full_count or params.census
    taken = TakenCells(DUPLICATE_UM / mpp)
    t_cand = t_refine = 0.0
    n_wbc = 0
    count_mask = mono.mask if mono is not None and mono.mask.any() else mask
    counting = side.submit(count_fields, r, count_mask)
    geometry = ChunkGeometry(level, ds, mpp, mask, down, REFINE_REACH_UM / mpp, spec.crop_um, spec.input_px)
    screened = screen_ahead(plan.chunks, lambda c: screen_chunk(slide, c, geometry), params.screen_threads)
    with closing(screened):  # an early stop or a failure winds the threads down here
        for i, chunk in enumerate(screened):
            r.check_stop()
            t_cand += chunk.candidate_s
            t_refine += chunk.refine_s
            # Cells are taken in chunk and candidate order, whatever the threads' timing: a cell already
            # taken (from a neighbouring candidate or an overlapping chunk) is not taken again.
            for cand in chunk.candidates:
                if taken.near(*cand.centre):
                    continue
                for fine in cand.cells:
                    if taken.near(*fine.centre):
                        continue
                    taken.add(*fine.centre)
                    sink.add(CellResult(WBC, fine.bbox, fine.score), fine.crop)
                    n_wbc += 1
                    if sink.pending >= params.batch_size:  # a dense chunk never holds more than a batch
                        sink.flush()
            del chunk
            result.fields_analysed += 1
            if plan.fields:
                plan.sampling.read(plan.fields[i])
            read = (i + 1) / len(plan.chunks)
            done = read if whole else max(read, n_wbc / max(1, params.wbc_goal))
            r.progress(0.05 + 0.8 * min(1.0, done), f"{n_wbc} white cells")
            if not whole and enough_white_cells(sink, params):
                result.stopped_early = True
                break
    result.timings_s["candidates"] = t_cand
    result.timings_s["refine"] = t_refine
    counted = counting.result()
    result.sampling = plan.sampling.to_dict()
    if counted is not None:
        result.sampling["count_fields"] = counted
    r.progress(0.95, "red cells and platelets counted")


def clip_to_mask(
    chunk: tuple[int, int, int, int], mask: np.ndarray, to_mask: float, margin: int
) -> tuple[int, int, int, int] | None:
    """A chunk (x, y, w, h on the candidate level) cut to the bounding box of the smear mask within
    it, widened by ``margin`` px; None when no smear lies in it. A chunk at the edge of the smear
    is then read and screened only where the smear is (on the 40,000² bench slide: 70 of 100 Mpx),
    and a candidate outside the mask was never kept anyway."""
    cx0, cy0, cw, ch = chunk
    mx0, my0 = int(cx0 * to_mask), int(cy0 * to_mask)
    sub = mask[my0 : int(math.ceil((cy0 + ch) * to_mask)) + 1, mx0 : int(math.ceil((cx0 + cw) * to_mask)) + 1]
    if not sub.any():
        return None
    rows, cols = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
    x0 = max(cx0, int((mx0 + cols[0]) / to_mask) - margin)
    y0 = max(cy0, int((my0 + rows[0]) / to_mask) - margin)
    x1 = min(cx0 + cw, int(math.ceil((mx0 + cols[-1] + 1) / to_mask)) + margin)
    y1 = min(cy0 + ch, int(math.ceil((my0 + rows[-1] + 1) / to_mask)) + margin)
    return (x0, y0, x1 - x0, y1 - y0)


def enough_white_cells(sink: CropSink, params: PipelineParams) -> bool:
    """Whether reading may stop: ``target_wbc`` classified cells where the sink labels crops as they
    come (pending crops are classified first), else ``wbc_goal`` candidates (see the module docstring)."""
    if not isinstance(sink, ClassifyingSink):
        return len(sink.cells) >= params.wbc_goal
    if len(sink.cells) >= params.wbc_cap:
        return True
    if len(sink.cells) < params.target_wbc:
        return False
    sink.flush()
    return sink.classified >= params.target_wbc
