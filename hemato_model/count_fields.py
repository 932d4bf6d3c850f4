"""Red cells and platelets counted in full-resolution fields spread over the smear (whole slides)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hemato_model.detection import Detection, detect_cells
from hemato_model.pipeline_params import SlideReading
from hematovision.core.results import RBC, CellResult


def count_fields(r: SlideReading, mask: np.ndarray) -> dict[str, Any] | None:
    """Red cells and platelets in full-resolution fields centred in ``mask`` (the thumbnail's
    evaluable monolayer where there is one, else the smear) and spread evenly over it; with
    red-cell morphology, more fields (at most ``rbc_max_fields``) while too few single red cells
    are in hand. Returns what was read (``SlideAnalysis.sampling["count_fields"]``), None where
    the mask is empty."""
    t = time.perf_counter()
    slide, result, down, params, rbc = r.slide, r.result, r.down, r.params, r.rbc
    mpp = result.mpp
    field_px = int(params.field_um / mpp)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    rng = np.random.default_rng(0)
    picks = sorted(rng.choice(len(xs), size=min(params.rbc_fields, len(xs)), replace=False))
    if rbc is not None:  # further fields, read only while the sampler wants more (first fields unchanged)
        extra = np.random.default_rng(1).permutation(len(xs))[: max(0, params.rbc_max_fields - len(picks)) * 2]
        picks += [int(p) for p in extra if p not in set(picks)][: max(0, params.rbc_max_fields - len(picks))]
    n_read = 0
    for i, p in enumerate(picks):
        if i >= params.rbc_fields and (rbc is None or not rbc.wants_more):
            break
        r.check_stop()
        n_read += 1
        gx, gy = int(xs[p] * down), int(ys[p] * down)
        x0 = min(max(0, gx - field_px // 2), max(0, result.width - field_px))
        y0 = min(max(0, gy - field_px // 2), max(0, result.height - field_px))
        region = slide.read_region((x0, y0), 0, (field_px, field_px))
        red: list[CellResult] = []
        red_dets: list[Detection] = []
        for d in detect_cells(region, mpp, kinds=("rbc", "platelet"), platelet_method=params.platelet_method):
            bx0, by0, bx1, by1 = d.bbox
            cell = CellResult(d.kind, (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1), float(d.score), label=d.label)
            result.cells.append(cell)
            if d.kind == RBC:
                red.append(cell)
                red_dets.append(d)
        if rbc is not None:
            rbc.offer(region, (x0, y0), red, float(region.shape[0] * region.shape[1]), red_dets)
    result.timings_s["fields"] = time.perf_counter() - t
    # what the platelet estimate is over (hematovision.core.estimates): the fields actually read
    return {"fields": n_read, "area_mm2": round(n_read * (field_px * mpp / 1e3) ** 2, 4)}
