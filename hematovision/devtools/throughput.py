"""Slide throughput: a 200-cell differential per slide, timed, against a naive full-resolution read.

``run_benchmark`` makes (or reuses) a generated whole slide, runs the two-pass pipeline to the target
white-cell count, and times a naive reference of the same pipeline that reads and analyses every
level-0 tile. The naive run is timed on an evenly spaced sample of level-0 tiles and scaled to the
whole slide (its per-tile cost does not depend on which tiles are read); ``--naive-full`` reads
them all.

With ``census`` the timed run is a whole-smear census (every white cell through the two-pass path,
:attr:`hemato_model.pipeline_params.PipelineParams.census`); after the timing, its white cells are matched
to the slide's manifest (:func:`hematovision.devtools.wholeslide_recall.match_cells`), so
``wbc_classified`` counts placed white cells that were found and labelled, not detections.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


class _CountingSlide:
    """Wraps a slide and counts the pixels read (all levels; the pipeline reads from several threads)."""

    def __init__(self, slide: Any) -> None:
        self._slide = slide
        self.pixels_read = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._slide, name)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        with self._lock:
            self.pixels_read += int(size[0]) * int(size[1])
        return self._slide.read_region(location, level, size)


def ensure_slide(path: Path, data_root: Path, size_px: int, mpp: float, n_wbc: int, seed: int = 1) -> dict[str, Any]:
    """The benchmark slide (generated once, reused while the parameters match). Returns the slide's
    parameters; the full manifest (millions of red cells on an 80k slide) is not loaded."""
    import json

    from hematovision.devtools.synthetic import make_slide

    params = {"width": size_px, "height": size_px, "mpp": mpp, "wbc_requested": n_wbc, "seed": seed}
    sidecar = path.with_name(path.name + ".bench.json")
    if path.exists() and sidecar.exists():
        known = json.loads(sidecar.read_text())
        if {k: known.get(k) for k in params} == params:
            return known
    manifest = make_slide(path, data_root, size_px, size_px, mpp=mpp, n_wbc=n_wbc, seed=seed, fmt="tiff")
    known = params | {"wbc_placed": manifest["counts"]["wbc"]}
    del manifest
    sidecar.write_text(json.dumps(known))
    return known


def _naive(slide: Any, classifier: Any, sample_tiles: int | None, tile_px: int) -> dict[str, float]:
    """Time the same detection + classification on level-0 tiles, ignoring the smear mask."""
    from hemato_model.detection import detect_cells
    from hemato_model.preprocessing import crop_cell

    w, h = slide.dimensions
    mpp = slide.mpp
    coords = [(x, y) for y in range(0, h, tile_px) for x in range(0, w, tile_px)]
    total = len(coords)
    if sample_tiles and sample_tiles < total:
        idx = np.linspace(0, total - 1, sample_tiles).round().astype(int)
        coords = [coords[i] for i in idx]
    t0, c0 = time.perf_counter(), time.process_time()
    cells = 0
    for x, y in coords:
        tile = slide.read_region((x, y), 0, (min(tile_px, w - x), min(tile_px, h - y)))
        dets = detect_cells(tile, mpp)
        crops = [
            crop_cell(
                tile,
                ((d.bbox[0] + d.bbox[2]) / 2, (d.bbox[1] + d.bbox[3]) / 2),
                mpp,
                classifier.crop_um,
                classifier.input_px,
            )
            for d in dets
            if d.kind == "wbc"
        ]
        if crops:
            classifier.classify(np.stack(crops))
            cells += len(crops)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    scale = total / len(coords)
    return {
        "seconds": seconds * scale,
        "cpu_seconds": cpu_seconds * scale,
        "tiles_total": total,
        "tiles_timed": len(coords),
        "extrapolated": len(coords) < total,
        "wbc_seen_in_timed_tiles": cells,
    }


def run_benchmark(
    work_dir: Path,
    data_root: Path,
    model_dir: Path,
    *,
    size_px: int = 40_000,
    mpp: float = 0.25,
    n_wbc: int = 1200,
    target_wbc: int = 200,
    naive_sample_tiles: int | None = 48,
    tile_px: int = 1024,
    census: bool = False,
    rbc_model_dir: Path | None = None,
    tf_threads: int = 0,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring). ``tf_threads`` caps
    TensorFlow's intra-op threads (0: its default; ignored where TensorFlow already ran here)."""
    from hemato_model.classifier import load_classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hemato_model.runtime import limit_tensorflow_threads
    from hematovision.core.slides import open_slide

    work_dir.mkdir(parents=True, exist_ok=True)
    slide_path = work_dir / f"bench-{size_px}px-{mpp}mpp.tiff"
    t = time.perf_counter()
    manifest = ensure_slide(slide_path, data_root, size_px, mpp, n_wbc)
    make_s = time.perf_counter() - t
    limit_tensorflow_threads(tf_threads)
    classifier = load_classifier(model_dir)
    # Warm the model (graph compilation) so the timed run measures steady state.
    classifier.classify(np.zeros((8, classifier.input_px, classifier.input_px, 3), np.uint8))
    rbc = None
    if rbc_model_dir is not None:  # red-cell morphology too (warmed the same way)
        rbc = load_classifier(rbc_model_dir)
        rbc.classify(np.zeros((8, rbc.input_px, rbc.input_px, 3), np.uint8))
    with open_slide(slide_path) as raw:
        slide = _CountingSlide(raw)
        load_before = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        params = PipelineParams(target_wbc=target_wbc, census=census)
        analysis = analyze_slide(slide, classifier, params, rbc_classifier=rbc)
        ours_s = time.perf_counter() - t
        ours_cpu_s = time.process_time() - c
        pixels = slide.pixels_read
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # includes generation, if any
    wbc = sum(1 for c in analysis.cells if c.kind == "wbc")
    with open_slide(slide_path) as raw:
        naive = _naive(raw, classifier, naive_sample_tiles, tile_px)
    extra = _census_figures(slide_path, analysis, manifest["wbc_placed"]) if census else {}
    return {
        "slide": {
            "width": size_px,
            "height": size_px,
            "mpp": mpp,
            "wbc_placed": manifest["wbc_placed"],
            "generated_in_s": round(make_s, 1),
        },
        "model": f"{classifier.name} {classifier.version}",
        "target_wbc": target_wbc,
        "rbc_morphology": rbc is not None,
        "rbc_classified": sum(1 for c in analysis.cells if c.kind == "rbc" and c.label is not None),
        # the red-cell stage's own CPU seconds (sampling, crops, classification), part of the slide's
        "rbc_cpu_seconds": (analysis.rbc or {}).get("cpu_seconds"),
        "slides_per_hour": round(3600.0 / ours_s, 1),
        "seconds_per_slide": round(ours_s, 2),
        "cells_per_s": round(wbc / ours_s, 1),
        "classify_cells_per_s": round(wbc / max(1e-9, analysis.timings_s.get("classify", 0.0)), 1),
        "wbc_classified": wbc,
        "mode": "differential",
        "mpix_read": round(pixels / 1e6, 1),
        "mpix_per_s": round(pixels / 1e6 / ours_s, 1),
        "timings_s": {k: round(v, 2) for k, v in analysis.timings_s.items()},
        "naive_seconds_per_slide": round(naive["seconds"], 1),
        "naive_slides_per_hour": round(3600.0 / naive["seconds"], 2),
        "naive": naive,
        "speedup": round(naive["seconds"] / ours_s, 1),
        # CPU seconds of this process (all its threads): what a shared machine's load does not
        # stretch the way it stretches wall time; 3600 / cpu_seconds is slides/hour on one free core.
        "cpu_seconds_per_slide": round(ours_cpu_s, 2),
        "naive_cpu_seconds_per_slide": round(naive["cpu_seconds"], 1),
        "speedup_cpu": round(naive["cpu_seconds"] / ours_cpu_s, 1),
        "slides_per_hour_per_free_core": round(3600.0 / ours_cpu_s, 1),
        "tf_threads": tf_threads,
        "screen_threads": params.screen_threads,
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "peak_rss_mb": round(rss_mb, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.machine(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        },
        "tiles_per_side": math.ceil(size_px / tile_px),
    } | extra


def _census_figures(slide_path: Path, analysis: Any, wbc_placed: int) -> dict[str, Any]:
    """A census's white cells against the slide's manifest (loaded after the timed run)."""
    from hematovision.devtools.wholeslide_recall import match_cells, placed_white_cells

    wbcs = [c for c in analysis.cells if c.kind == "wbc"]
    centres = np.array([((c.bbox[0] + c.bbox[2]) / 2.0, (c.bbox[1] + c.bbox[3]) / 2.0) for c in wbcs], float)
    _head, placed = placed_white_cells(slide_path)
    match = match_cells(placed, centres.reshape(-1, 2), analysis.mpp)
    found = [j for j in match if j is not None]
    labelled = sum(1 for j in found if wbcs[j].label)
    return {
        "mode": "census",
        "wbc_placed": wbc_placed,
        "wbc_in_manifest": len(placed),  # erythroblasts included, as the pipeline's white cells
        "wbc_found": len(found),
        "wbc_classified": labelled,
        "wbc_classified_share": round(labelled / max(1, len(placed)), 4),
        "wbc_cells_classified": sum(1 for c in wbcs if c.label),
        "wbc_not_in_manifest": len(wbcs) - len(found),
        "chunks_read": analysis.fields_analysed,
    }
