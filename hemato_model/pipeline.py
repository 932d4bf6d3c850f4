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
   window around each candidate is read at level 0, where the cells within ``REFINE_REACH_UM`` of
   it are confirmed by the full-resolution rule and their boxes refined. Both paths find the same
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
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from hemato_model.chunk_search import ChunkGeometry, screen_ahead, screen_chunk
from hemato_model.detection import Detection, detect_cells
from hemato_model.detection.detect import DEFAULT_PLATELET_METHOD
from hemato_model.preprocessing import crop_cell
from hemato_model.quality import measure_quality, ood_summary
from hemato_model.sampling import (
    FIELD_UM,
    METHOD,
    Monolayer,
    Sampling,
    evaluable_monolayer,
    level_chunks,
    spread_fields,
    whole_smear,
)
from hemato_model.taken_cells import TakenCells
from hematovision.core.results import RBC, WBC, CellResult, SlideAnalysis, is_classified_wbc

if TYPE_CHECKING:
    from hemato_model.rbc.morphology import RedCellSampler
    from hematovision.core.slides import Slide

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
_T = TypeVar("_T")
StopCheck = Callable[[], None]


class AnalysisCancelled(Exception):
    """Raised when ``should_stop`` says the job was cancelled."""


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
class PipelineParams:
    target_wbc: int = 200
    full_count: bool = False
    #: Whole-smear census: every white cell of the smear through the two-pass path (no stop at
    #: ``target_wbc``), red cells and platelets from the ``rbc_fields`` sampled fields only. Unlike
    #: ``full_count`` it never reads every level-0 tile of a whole slide.
    census: bool = False
    full_res_max_mpix: float = 64.0
    tile_px: int = 1024
    overlap_um: float = 30.0
    #: µm/px of the level searched for white-cell candidates (the finest level at most this
    #: coarse is read). 1 µm/px, not 2: slides store every level as JPEG with 4:2:0 chroma, so
    #: the nuclear stain (a colour difference) of a 2 µm/px level is sampled every 4 µm and a
    #: lymphocyte's or erythroblast's 6-7 µm nucleus faded under the threshold (about half the
    #: lymphocytes were lost; docs/validation.md, "Whole-slide detection recall").
    candidate_mpp: float = 1.0
    #: Side of the square chunks the candidate level is read in, µm (as 1,024 px of a 2 µm/px
    #: level were), so the order the smear is read in does not depend on the level's resolution.
    chunk_um: float = 2048.0
    #: Threads screening candidate chunks ahead of the refinement (:mod:`hemato_model.chunk_search`);
    #: the cells taken do not depend on it.
    screen_threads: int = 2
    rbc_fields: int = 12
    #: How the count fields find platelets (``hemato_model.detection.detect.PLATELET_METHODS``).
    platelet_method: str = DEFAULT_PLATELET_METHOD
    field_um: float = 150.0
    batch_size: int = 64
    thumb_mpp: float = 8.0
    candidate_margin: float = 1.25
    max_candidate_factor: float = 5.0
    #: Red-cell morphology (with a red-cell model): cells to classify per slide, and the most
    #: sampled fields a whole slide reads (beyond ``rbc_fields``) while fewer single red cells are
    #: in hand (:mod:`hemato_model.rbc.morphology`). 1,000: the ICSH minimum classified; 1,500 cost
    #: 23-26 % of the 200-cell slide's CPU time (target ≤ 20 %; docs/validation.md).
    rbc_cells: int = 1000
    rbc_max_fields: int = 48

    @property
    def wbc_goal(self) -> int:
        """White-cell candidates after which reading stops when labels are not known as it reads."""
        return int(math.ceil(self.target_wbc * self.candidate_margin))

    @property
    def wbc_cap(self) -> int:
        """White-cell candidates after which reading stops even if too few were classified."""
        return int(math.ceil(self.target_wbc * self.max_candidate_factor))


def smear_mask(thumb: np.ndarray) -> np.ndarray:
    """Boolean mask of the stained smear on a thumbnail (True = evaluable area)."""
    from scipy import ndimage as ndi

    # HSV saturation, (max - min) / max, computed as skimage's rgb2hsv does (the same bits) without
    # its hue and value planes: on an 80,000² slide's thumbnail those were ~0.5 GB of float64
    top = np.multiply(thumb.max(axis=2), 1.0 / 255, dtype=np.float64)
    spread = top - np.multiply(thumb.min(axis=2), 1.0 / 255, dtype=np.float64)
    saturation = np.divide(spread, top, out=np.zeros_like(top), where=spread != 0.0)
    del top, spread
    gray = thumb.mean(axis=2)
    stained = (saturation > 0.08) | (gray < 200)
    stained = ndi.binary_closing(stained, iterations=3)
    stained = ndi.binary_fill_holes(stained)
    return ndi.binary_opening(stained, iterations=1)


class CropSpec(Protocol):
    """What cutting crops needs to know of the model (a ``ModelSpec`` or a loaded ``Classifier``)."""

    name: str
    version: str
    classes: list[str]
    input_px: int
    crop_um: float


class CropSink(Protocol):
    """Where the white cells and their crops go, in the order they are found."""

    cells: list[CellResult]

    def add(self, cell: CellResult, crop: np.ndarray) -> None: ...

    @property
    def pending(self) -> int: ...

    def flush(self) -> None: ...


class _Classifier(CropSpec, Protocol):  # the part of hemato_model.classifier.Classifier used here
    def classify(self, crops: np.ndarray) -> list[tuple[str, float]]: ...


class ClassifyingSink:
    """Classifies white-cell crops a batch at a time (crops are dropped after).

    A flushed batch is classified on a thread of its own while the caller goes on finding cells
    (TensorFlow releases the GIL); at most one batch is being classified while the next is
    gathered, so memory stays bounded. Labels of flushed crops are set once :meth:`wait` returns
    (``classified`` waits)."""

    def __init__(self, classifier: _Classifier, batch_size: int, mpp: float | None = None) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        self.mpp = mpp  # the slide's µm/px: the classifier's energy cut-offs depend on the scan's scale
        self.cells: list[CellResult] = []
        self._pending: list[tuple[CellResult, np.ndarray]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._running: Future[None] | None = None
        self.seconds = 0.0

    def add(self, cell: CellResult, crop: np.ndarray) -> None:
        self.cells.append(cell)
        self._pending.append((cell, crop))

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def classified(self) -> int:
        """White cells named so far (pending crops are not counted until flushed)."""
        self.wait()
        return sum(1 for c in self.cells if is_classified_wbc(c.label))

    def flush(self) -> None:
        if not self._pending:
            return
        part, self._pending = self._pending, []
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify")
        self._running = self._pool.submit(self._classify, part)

    def wait(self) -> None:
        """Return once every flushed crop is labelled (re-raising the classifier's error, if any)."""
        running, self._running = self._running, None
        if running is not None:
            running.result()

    def close(self) -> None:
        """Wait for the batch in flight and stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _classify(self, part: list[tuple[CellResult, np.ndarray]]) -> None:
        t = time.perf_counter()
        scored = getattr(self.classifier, "classify_scored", None)
        for i in range(0, len(part), self.batch_size):
            chunk = part[i : i + self.batch_size]
            batch = np.stack([crop for _, crop in chunk])
            labels, energies = (
                scored(batch, mpp=self.mpp) if scored else (self.classifier.classify(batch), [None] * len(chunk))
            )
            for (cell, _), (label, prob), energy in zip(chunk, labels, energies, strict=True):
                cell.label, cell.probability, cell.energy = label, float(prob), energy
        self.seconds += time.perf_counter() - t


def _tiles(width: int, height: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    step = tile
    for y in range(0, height, step):
        for x in range(0, width, step):
            x0, y0 = max(0, x - overlap), max(0, y - overlap)
            x1, y1 = min(width, x + step + overlap), min(height, y + step + overlap)
            yield x0, y0, x1 - x0, y1 - y0


def _centre(d: Detection) -> tuple[float, float]:
    x0, y0, x1, y1 = d.bbox
    return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)


def analyze_slide(
    slide: Slide,
    classifier: _Classifier,
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
    ood = ood_summary([c.energy for c in sink.cells], getattr(classifier, "ood_stats", None))
    if ood is not None:
        result.quality["ood"] = ood
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
        _find_cells(slide, result, spec, sink, mask, down, params, progress, should_stop, mono, rbc_classifier, side)
        result.quality, result.timings_s["gate"] = gate.result()
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


def _find_cells(
    slide: Slide,
    result: SlideAnalysis,
    spec: CropSpec,
    sink: CropSink,
    mask: np.ndarray,
    down: float,
    params: PipelineParams,
    progress: ProgressFn,
    should_stop: Callable[[], bool] | None,
    mono: Monolayer | None,
    rbc_classifier: Any | None,
    side: ThreadPoolExecutor,
) -> None:
    """Step 2 or 3 of the module docstring, and the red-cell morphology sample."""
    w, h, mpp = result.width, result.height, result.mpp

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise AnalysisCancelled("cancelled")

    rbc = None
    if rbc_classifier is not None and not isinstance(rbc_classifier, str):
        from hemato_model.rbc.morphology import RedCellSampler

        rbc = RedCellSampler(rbc_classifier, mpp, getattr(slide, "mpp_source", None), target=params.rbc_cells)
    if w * h / 1e6 <= params.full_res_max_mpix or (params.full_count and not params.census):
        _full_resolution(slide, result, spec, sink, mask, down, params, progress, check_stop, rbc)
        result.sampling = whole_smear(mono, w, h, "whole smear (read whole)").to_dict()
        result.sampling["count_fields"] = {"fields": result.fields_analysed, "area_mm2": round(result.area_mm2, 4)}
    else:
        _two_pass(slide, result, spec, sink, mask, down, params, progress, check_stop, side, mono, rbc)
    if rbc is not None:
        result.rbc = rbc.finish()
        result.timings_s["rbc_morphology"] = rbc.seconds
    else:  # a string: why there is no red-cell model
        result.rbc = {"status": "not_evaluated", "reason": rbc_classifier or "no red-cell model is configured"}


def _full_resolution(
    slide: Slide,
    result: SlideAnalysis,
    spec: CropSpec,
    sink: CropSink,
    mask: np.ndarray,
    down: float,
    params: PipelineParams,
    progress: ProgressFn,
    check_stop: StopCheck,
    rbc: RedCellSampler | None = None,
) -> None:
    """Level-0 tiling over the smear area; every kind detected; cells owned by their tile core."""
    w, h, mpp = result.width, result.height, result.mpp
    overlap = int(math.ceil(params.overlap_um / mpp))
    crop_px = int(math.ceil(spec.crop_um / mpp))
    tiles = list(_tiles(w, h, params.tile_px, overlap))
    t_detect = 0.0
    for i, (x0, y0, tw, th) in enumerate(tiles):
        check_stop()
        cx0, cy0 = x0 + (overlap if x0 > 0 else 0), y0 + (overlap if y0 > 0 else 0)
        core = (cx0, cy0, min(w, cx0 + params.tile_px), min(h, cy0 + params.tile_px))
        if not mask[
            int(cy0 / down) : int(math.ceil(core[3] / down)) + 1, int(cx0 / down) : int(math.ceil(core[2] / down)) + 1
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
            cx, cy = _centre(d)
            gx, gy = x0 + cx, y0 + cy
            if not (core[0] <= gx < core[2] and core[1] <= gy < core[3]):
                continue
            bx0, by0, bx1, by1 = d.bbox
            cell = CellResult(d.kind, (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1), float(d.score), label=d.label)
            if d.kind == WBC:
                crop = _crop_from_slide(slide, gx, gy, crop_px, mpp, spec, region, (x0, y0))
                sink.add(cell, crop)
            else:
                result.cells.append(cell)
                if d.kind == RBC:
                    red.append(cell)
                    red_dets.append(d)
        if rbc is not None:
            rbc.offer(region, (x0, y0), red, float((core[2] - core[0]) * (core[3] - core[1])), red_dets)
        if sink.pending >= params.batch_size:
            sink.flush()
        progress(0.05 + 0.9 * (i + 1) / len(tiles), f"tile {i + 1}/{len(tiles)}")
    result.timings_s["detect"] = t_detect


def _crop_from_slide(
    slide: Slide,
    gx: float,
    gy: float,
    crop_px: int,
    mpp: float,
    spec: CropSpec,
    region: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """The classifier's input for a cell centred at level-0 (gx, gy)."""
    half = crop_px // 2 + 2
    ox, oy = origin
    if region is not None:
        rx, ry = gx - ox, gy - oy
        if half <= rx < region.shape[1] - half and half <= ry < region.shape[0] - half:
            return crop_cell(region, (rx, ry), mpp, spec.crop_um, spec.input_px)
    x0, y0 = int(gx) - half, int(gy) - half
    window = slide.read_region((x0, y0), 0, (2 * half, 2 * half))
    return crop_cell(window, (gx - x0, gy - y0), mpp, spec.crop_um, spec.input_px)


def _two_pass(
    slide: Slide,
    result: SlideAnalysis,
    spec: CropSpec,
    sink: CropSink,
    mask: np.ndarray,
    down: float,
    params: PipelineParams,
    progress: ProgressFn,
    check_stop: StopCheck,
    side: ThreadPoolExecutor,
    mono: Monolayer | None = None,
    rbc: RedCellSampler | None = None,
) -> None:
    """Low-resolution white-cell candidates, full resolution only around them; unless a full count
    is asked for, in spread-sampling fields over the monolayer (:mod:`hemato_model.sampling`)."""
    w, mpp = result.width, result.mpp
    level = slide.get_best_level_for_downsample(params.candidate_mpp / mpp)
    lw, lh = slide.level_dimensions[level]
    ds = w / lw
    level_mpp = mpp * ds
    taken = TakenCells(DUPLICATE_UM / mpp)
    chunk_px = max(64, int(round(params.chunk_um / level_mpp)))
    chunks = list(_tiles(lw, lh, chunk_px, int(math.ceil(20.0 / level_mpp))))
    spread = mono is not None and not (params.full_count or params.census)
    sampling = Sampling("whole smear (full count)", mono)
    fields: list[tuple[int, int, int, int]] = []
    if spread and mono is not None:
        fields = spread_fields(mono, result.width, result.height, min(params.chunk_um, FIELD_UM))
        spread = bool(fields)  # no field of monolayer (a smear too small or odd): read it in raster order
    if spread and mono is not None:
        chunks = level_chunks(fields, ds, int(math.ceil(20.0 / level_mpp)), lw, lh)
        sampling = Sampling(METHOD, mono)
    t_cand = t_refine = 0.0
    n_wbc = 0
    if not spread:  # raster order over the smear: each chunk clipped to the smear mask's extent
        margin = int(math.ceil(SMEAR_MARGIN_UM / level_mpp))
        chunks = [b for c in chunks if (b := _clip_to_mask(c, mask, ds / down, margin)) is not None]
    count_mask = mono.mask if mono is not None and mono.mask.any() else mask
    counting = side.submit(_count_fields, slide, result, count_mask, down, params, check_stop, rbc)
    geometry = ChunkGeometry(level, ds, mpp, mask, down, REFINE_REACH_UM / mpp, spec.crop_um, spec.input_px)
    screened = screen_ahead(chunks, lambda c: screen_chunk(slide, c, geometry), params.screen_threads)
    with closing(screened):  # an early stop or a failure winds the threads down here
        for i, chunk in enumerate(screened):
            check_stop()
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
            if spread:
                sampling.read(fields[i])
            read = (i + 1) / len(chunks)
            done = read if params.full_count or params.census else max(read, n_wbc / max(1, params.wbc_goal))
            progress(0.05 + 0.8 * min(1.0, done), f"{n_wbc} white cells")
            if not (params.full_count or params.census) and _enough_white_cells(sink, params):
                result.stopped_early = True
                break
    result.timings_s["candidates"] = t_cand
    result.timings_s["refine"] = t_refine
    counted = counting.result()
    if not spread:
        sampling = whole_smear(mono, result.width, result.height, sampling.method)
    result.sampling = sampling.to_dict()
    if counted is not None:
        result.sampling["count_fields"] = counted
    progress(0.95, "red cells and platelets counted")


def _clip_to_mask(
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


def _enough_white_cells(sink: CropSink, params: PipelineParams) -> bool:
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


def _count_fields(
    slide: Slide,
    result: SlideAnalysis,
    mask: np.ndarray,
    down: float,
    params: PipelineParams,
    check_stop: StopCheck,
    rbc: RedCellSampler | None = None,
) -> dict[str, Any] | None:
    """Red cells and platelets in full-resolution fields spread evenly over the smear area; with
    red-cell morphology, more fields (at most ``rbc_max_fields``) while too few single red cells
    are in hand. Returns what was read (``SlideAnalysis.sampling["count_fields"]``), None where
    the mask is empty."""
    t = time.perf_counter()
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
        check_stop()
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
