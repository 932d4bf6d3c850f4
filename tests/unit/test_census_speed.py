"""What made the census faster changes no result (issue 16, item 2): the row-wise disk dilation and
the saturation of the smear mask give the same pixels as SciPy's and skimage's; chunks screened on
threads come back in order, stop cleanly, and the cells taken do not depend on the thread count;
white cells are labelled on a thread of their own and every one is labelled when the analysis
returns."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from hemato_model.chunk_search import ScreenedChunk, screen_ahead
from hemato_model.detection.stain import dilate_disk, disk


@pytest.mark.parametrize("radius", [0.3, 1.0, 1.5, 1.875, 2.0, 3.75, 4.0, 6.2])
def test_dilate_disk_is_scipys_binary_dilation(radius: float) -> None:
    rng = np.random.default_rng(int(radius * 10))
    for shape in [(1, 1), (2, 9), (9, 2), (40, 50), (257, 311)]:
        for density in (0.002, 0.05, 0.5):
            mask = rng.random(shape) < density
            assert np.array_equal(dilate_disk(mask, radius), ndi.binary_dilation(mask, disk(radius))), (shape, density)


def test_smear_mask_saturation_is_skimages() -> None:
    from skimage.color import rgb2hsv

    from hemato_model.smear_area import smear_mask

    # every (max, min) pair of 8-bit values, where (max - min) / max == 0.08 exactly included
    v = np.arange(256, dtype=np.uint8)
    pairs = np.stack(np.meshgrid(v, v, indexing="ij"), -1).reshape(256, 256, 2)
    thumb = np.concatenate([pairs, pairs[..., 1:]], axis=2)
    hsv = rgb2hsv(thumb)
    stained = (hsv[..., 1] > 0.08) | (thumb.mean(axis=2) < 200)
    stained = ndi.binary_opening(ndi.binary_fill_holes(ndi.binary_closing(stained, iterations=3)), iterations=1)
    assert np.array_equal(smear_mask(thumb), stained)


def test_screen_ahead_yields_in_order_bounded_and_stops_cleanly() -> None:
    running = 0
    most = 0
    lock = threading.Lock()
    started: list[int] = []

    def screen(chunk: tuple[int, int, int, int]) -> ScreenedChunk:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            started.append(chunk[0])
        time.sleep(0.02 * (chunk[0] % 3))  # later chunks may finish first
        with lock:
            running -= 1
        return ScreenedChunk(candidate_s=float(chunk[0]))

    chunks = [(i, 0, 1, 1) for i in range(12)]
    assert [c.candidate_s for c in screen_ahead(chunks, screen, workers=2)] == [float(i) for i in range(12)]
    assert most <= 2
    started.clear()
    gen = screen_ahead(chunks, screen, workers=2, depth=3)
    assert next(gen).candidate_s == 0.0
    gen.close()  # a differential that has its cells: no chunk beyond the look-ahead is started
    assert max(started) <= 3


@pytest.mark.slow
def test_cells_do_not_depend_on_the_screening_threads(real_cells: Path, tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    from hemato_model.classifier import Classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hemato_model.two_pass import DUPLICATE_UM
    from hematovision.core.slides import open_slide
    from hematovision.devtools.synthetic import make_slide

    path = tmp_path / "s.tiff"
    make_slide(path, real_cells, 4096, 4096, mpp=0.25, n_wbc=120, seed=7, fmt="tiff")
    clf = Classifier.load(settings.model_dir)
    runs = []
    for threads in (1, 3):
        # the two-pass path in 9 chunks of 384 µm, a census: every white cell labelled
        params = PipelineParams(census=True, full_res_max_mpix=0.0, chunk_um=384.0, screen_threads=threads)
        with open_slide(path) as slide:
            runs.append(analyze_slide(slide, clf, params))
    one, three = ([(c.kind, c.bbox, c.label) for c in a.cells] for a in runs)
    assert one == three
    wbc = [c for c in runs[1].cells if c.kind == "wbc"]
    assert len(wbc) >= 100 and all(c.label for c in wbc)
    # no white cell twice: no two taken closer than the duplicate distance (5 µm = 20 px)
    centres = np.array([((c.bbox[0] + c.bbox[2]) / 2, (c.bbox[1] + c.bbox[3]) / 2) for c in wbc])
    assert not cKDTree(centres).query_pairs(DUPLICATE_UM / 0.25 - 1e-6)
