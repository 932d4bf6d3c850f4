"""The per-slide analysis: where to look, find cells, classify white cells, aggregate.

Method (as digital morphology analysers do it, cf. CellaVision's "scan at low power, capture at high
power"):

1. **Evaluable smear area** on a thumbnail (~8 µm/px): stained pixels (saturation or darkness above
   the glass background), closed and filled; empty glass is never read at full resolution.
2. **Small slides** (field images, demo slides up to ``full_res_max_mpix``) are tiled at level 0 with
   overlap and every cell kind is detected; a cell belongs to the tile whose core holds its centre,
   so nothing is counted twice.
3. **Whole slides** take two passes: white-cell candidates are found on a low-resolution level
   (``candidate_mpp``, ~1 µm/px, with the looser rule of
   :func:`hemato_model.detection.wbc_candidates`) chunk by chunk inside the smear area; only a
   window around each candidate is read at level 0 (:mod:`hemato_model.two_pass`), where the
   cells within ``REFINE_REACH_UM`` of it are confirmed by the full-resolution rule and their boxes
   refined (:mod:`hemato_model.full_resolution` reads small slides). Both paths find the same
   white cells (``tests/unit/test_wholeslide_recall.py``). Red cells and platelets are counted in
   ``rbc_fields`` full-resolution fields spread over the smear. Unless a full count is asked for,
   reading stops once enough white cells are in hand:

   - where the crops are classified as they are cut (:func:`analyze_slide`, one process), once
     ``target_wbc`` white cells are *classified* (named: not ``unidentified``, not an erythroblast or
     platelet), so the differential has its count whatever the share of cells the model cannot name;
     at most ``max_candidate_factor`` x ``target_wbc`` candidates are read (a slide of cells the model
     does not know would otherwise be read to its end; its report is then insufficient and flags the
     unrecognised population);
   - where the labels come later (the staged service: ``prepare`` on a CPU hands crops to
     ``classify`` on a GPU and never sees a label), once ``candidate_margin`` x ``target_wbc``
     candidates are found; the margin covers the usual share of unidentified cells, erythroblasts and
     platelets, and a differential that still falls short is marked insufficient. The two paths
     therefore read the same cells on small slides (read whole) but may stop at different places on
     whole slides.

   A **census** (``census``) reads every candidate chunk of the smear through the same two
   passes and classifies every white cell found; red cells and platelets still come from the
   sampled fields. ``full_count`` instead tiles the whole smear at level 0 (every kind, every
   tile: ~10x slower than a census on a 40,000² slide, docs/validation.md "Whole-smear census").
   Crops go to the sink a batch at a time, so a census holds at most ``batch_size`` crops.
   The chunks are screened (candidates, level-0 windows, their white cells and crops) on
   ``screen_threads`` threads a bounded number ahead (:mod:`hemato_model.chunk_search`) while the
   cells are taken here in chunk order, so the cells never depend on the threads; the quality gate
   and the count fields are read on a side thread meanwhile.
4. Every white cell is cut at the model's physical crop size (µm) and handed to a *crop sink*: on one
   machine the sink classifies a batch at a time on a thread of its own (:func:`analyze_slide`); in
   the staged service the ``prepare`` stage's sink writes the crops to disk for the GPU ``classify``
   stage (:mod:`hemato_model.handoff`). Finding cells never depends on their labels, so both give the
   same cells.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from hemato_model.crop_sink import ClassifyingSink, CropClassifier, CropSink, CropSpec
from hemato_model.full_resolution import read_full_resolution
from hemato_model.pipeline_params import PipelineParams, ProgressFn, SlideReading, StopCheck
from hemato_model.quality import add_model_evidence, measure_quality, model_evidence
from hemato_model.sampling import Monolayer, evaluable_monolayer, whole_smear
from hemato_model.smear_area import smear_mask
from hemato_model.two_pass import read_two_pass
from hematovision.core.results import SlideAnalysis

if TYPE_CHECKING:
    from hemato_model.rbc.morphology import RedCellSampler
    from hematovision.core.slides import Slide

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class AnalysisCancelled(Exception):
    """Raised when ``should_stop`` says the job was cancelled."""


def analyze_slide(
    slide: Slide,
    classifier: CropClassifier,
    params: PipelineParams | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    rbc_classifier: Any | None = None,
) -> SlideAnalysis:
    """Analyse one slide on this machine: find the cells and classify the white ones (and a sample
    of the red ones with ``rbc_classifier``, see :func:`prepare_slide`)."""
    params = params or PipelineParams()
    sink = ClassifyingSink(classifier, params.batch_size, mpp=float(slide.mpp))
    try:
        result = prepare_slide(slide, classifier, sink, params, progress, should_stop, rbc_classifier=rbc_classifier)
    finally:
        sink.close()  # every crop labelled (or the classifier's error raised)
    result.timings_s["classify"] = sink.seconds
    add_model_evidence(result.quality, [c.energy for c in sink.cells], model_evidence(classifier))
    return result


def prepare_slide(
    slide: Slide,
    spec: CropSpec,
    sink: CropSink,
    params: PipelineParams | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    rbc_classifier: Any | None = None,
) -> SlideAnalysis:
    """Find a slide's cells and hand each white cell's crop to ``sink`` (see the module docstring).

    The returned analysis holds every cell; the white cells are ``sink.cells`` (last, in crop
    order), labelled only if the sink classifies. With ``rbc_classifier`` (the red-cell model) a
    uniform sample of the single red cells in evaluable fields is classified here, in this stage
    (:mod:`hemato_model.rbc.morphology`), and ``SlideAnalysis.rbc`` says what was done.
    """
    params = params or PipelineParams()
    progress = progress or (lambda _f, _m: None)
    t0 = time.perf_counter()
    w, h = slide.dimensions
    mpp = float(slide.mpp)
    result = SlideAnalysis(
        mpp=mpp,
        width=w,
        height=h,
        model_name=spec.name,
        model_version=spec.version,
        classes=list(spec.classes),
    )
    # 1. Where to look.
    thumb_down = max(1.0, params.thumb_mpp / mpp)
    level = slide.get_best_level_for_downsample(thumb_down)
    lw, lh = slide.level_dimensions[level]
    thumb = slide.read_region((0, 0), level, (lw, lh))
    mask = smear_mask(thumb)
    down = w / lw
    result.area_mm2 = float(mask.sum()) * (down * mpp / 1000.0) ** 2
    mono = evaluable_monolayer(thumb, mask, down, mpp)  # spread sampling (hemato_model.sampling)
    result.timings_s["smear_area"] = time.perf_counter() - t0
    progress(0.02, "smear area found")
    # The quality gate's fields (and, on whole slides, the red-cell count fields) are read and
    # measured on a thread beside the white-cell search: neither depends on the other.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate-fields") as side:
        gate = side.submit(_timed, measure_quality, slide, mask, down)  # the domain and quality gate
        rbc = _red_cell_sampler(slide, rbc_classifier, params)
        reading = SlideReading(slide, result, spec, sink, mask, down, params, progress, _stop_check(should_stop), rbc)
        _find_cells(reading, mono, side)
        result.quality, result.timings_s["gate"] = gate.result()
    if rbc is not None:
        result.rbc = rbc.finish()
        result.timings_s["rbc_morphology"] = rbc.seconds
    else:  # a string: why there is no red-cell model
        result.rbc = {"status": "not_evaluated", "reason": rbc_classifier or "no red-cell model is configured"}
    sink.flush()
    if isinstance(sink, ClassifyingSink):
        sink.close()  # every crop labelled before the analysis is returned
    result.cells.extend(sink.cells)
    result.timings_s["total"] = time.perf_counter() - t0
    progress(1.0, "done")
    return result


def _timed(fn: Callable[..., _T], *args: Any) -> tuple[_T, float]:
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _stop_check(should_stop: Callable[[], bool] | None) -> StopCheck:
    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise AnalysisCancelled("cancelled")

    return check_stop


def _red_cell_sampler(slide: Slide, rbc_classifier: Any | None, params: PipelineParams) -> RedCellSampler | None:
    """The red-cell morphology sample where a red-cell model is given (a string says why there is none)."""
    if rbc_classifier is None or isinstance(rbc_classifier, str):
        return None
    from hemato_model.rbc.morphology import RedCellSampler

    return RedCellSampler(rbc_classifier, float(slide.mpp), getattr(slide, "mpp_source", None), target=params.rbc_cells)


def _find_cells(r: SlideReading, mono: Monolayer | None, side: ThreadPoolExecutor) -> None:
    """Step 2 or 3 of the module docstring."""
    result, params = r.result, r.params
    w, h = result.width, result.height
    if w * h / 1e6 <= params.full_res_max_mpix or (params.full_count and not params.census):
        read_full_resolution(r)
        result.sampling = whole_smear(mono, w, h, "whole smear (read whole)").to_dict()
        result.sampling["count_fields"] = {"fields": result.fields_analysed, "area_mm2": round(result.area_mm2, 4)}
    else:
        read_two_pass(r, side, mono)
