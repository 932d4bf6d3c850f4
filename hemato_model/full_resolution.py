"""The full-resolution path (small slides, or ``full_count``): level 0 tiled over the smear area.

Every kind of cell is detected in every tile that touches the smear mask; tiles overlap by
``overlap_um`` and a cell belongs to the tile whose core holds its centre, so nothing is counted
twice.
"""

from __future__ import annotations

import math
import time

from hemato_model.crop_sink import crop_from_slide
from hemato_model.detection import Detection, detect_cells
from hemato_model.pipeline_params import SlideReading
from hemato_model.tiling import cored_tiles
from hematovision.core.results import RBC, WBC, CellResult


def read_full_resolution(r: SlideReading) -> None:
    """Level-0 tiling over the smear area; every kind detected; cells owned by their tile core."""
    slide, result, spec, sink, mask, down, params = r.slide, r.result, r.spec, r.sink, r.mask, r.down, r.params
    w, h, mpp = result.width, result.height, result.mpp
    overlap = int(math.ceil(params.overlap_um / mpp))
    tiles = list(cored_tiles(w, h, params.tile_px, overlap))
    t_detect = 0.0
    for i, ((x0, y0, tw, th), core) in enumerate(tiles):
        r.check_stop()
        if not mask[
            int(core[1] / down) : int(math.ceil(core[3] / down)) + 1,
            int(core[0] / down) : int(math.ceil(core[2] / down)) + 1,
        ].any():
            continue
        t = time.perf_counter()
        region = slide.read_region((x0, y0), 0, (tw, th))
        dets = detect_cells(region, mpp, platelet_method=params.platelet_method)
        t_detect += time.perf_counter() - t
        result.fields_analysed += 1
        red: list[CellResult] = []
        red_dets: list[Detection] = []
        for d in dets:
            cx, cy = d.center
            gx, gy = x0 + cx, y0 + cy
            if not (core[0] <= gx < core[2] and core[1] <= gy < core[3]):
                continue
            bx0, by0, bx1, by1 = d.bbox
            cell = CellResult(d.kind, (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1), float(d.score), label=d.label)
            if d.kind == WBC:
                crop = crop_from_slide(slide, gx, gy, mpp, spec.crop_um, spec.input_px, region, (x0, y0))
                sink.add(cell, crop)
            else:
                result.cells.append(cell)
                if d.kind == RBC:
                    red.append(cell)
                    red_dets.append(d)
        if r.rbc is not None:
            r.rbc.offer(region, (x0, y0), red, float((core[2] - core[0]) * (core[3] - core[1])), red_dets)
        if sink.pending >= params.batch_size:
            sink.flush()
        r.progress(0.05 + 0.9 * (i + 1) / len(tiles), f"tile {i + 1}/{len(tiles)}")
    result.timings_s["detect"] = t_detect
