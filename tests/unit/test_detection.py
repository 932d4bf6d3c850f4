"""Classical cell detection, annotation readers and matching, on real data where it is present.

Real fields come from the shared data (``Settings.data_root``); tests that need them skip with the
reason when it is absent (and fail under CI). Each test reads only a few images so the file runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemato_model.detection import Detection, detect_cells, estimate_mpp
from hemato_model.training.annotations import read_voc_dir, read_voc_file, read_yolo_dir
from hemato_model.training.detection_eval import DetectionScores, match_boxes
from hematovision.core.datasets import BCCD_DIR, BCCD_MPP, CBC_DIR, TXL_DIR
from hematovision.core.settings import load_settings

DATA_ROOT = Path(load_settings().data_root)
CBC_TEST = DATA_ROOT / CBC_DIR / "Testing"
BCCD_IMAGES = DATA_ROOT / BCCD_DIR / "BCCD" / "JPEGImages"
TXL = DATA_ROOT / TXL_DIR

HAVE_CBC = (CBC_TEST / "Annotations").is_dir() and BCCD_IMAGES.is_dir()
needs_cbc = pytest.mark.needs(HAVE_CBC, f"CBC annotations and BCCD images under {DATA_ROOT}")
needs_txl = pytest.mark.needs((TXL / "labels" / "test").is_dir(), f"TXL-PBC under {DATA_ROOT}")


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _centre_in(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return other[0] <= cx < other[2] and other[1] <= cy < other[3]


@pytest.fixture(scope="module")
def cbc_items(require):  # type: ignore[no-untyped-def]
    require(HAVE_CBC, f"CBC annotations and BCCD images under {DATA_ROOT}")
    return read_voc_dir(CBC_TEST, BCCD_IMAGES)


# ---------------------------------------------------------------------------- annotations


@needs_cbc
def test_voc_reader_reads_cbc_testing(cbc_items):
    assert len(cbc_items) == 60
    kinds = [b.kind for item in cbc_items for b in item.boxes]
    assert kinds.count("rbc") == 792 and kinds.count("wbc") == 61 and kinds.count("platelet") == 55
    item = cbc_items[0]
    assert item.image_path.is_file() and (item.width, item.height) == (640, 480)
    for b in item.boxes:
        x0, y0, x1, y1 = b.bbox
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


@needs_cbc
def test_voc_reader_missing_image_folder_is_a_clear_error(tmp_path):
    from hemato_model.training.annotations import AnnotationError

    with pytest.raises(AnnotationError, match="image folder not found"):
        read_voc_dir(CBC_TEST)  # CBC has no JPEGImages beside its annotations
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match="not a readable VOC"):
        read_voc_file(bad, BCCD_IMAGES)


@needs_txl
def test_yolo_reader_reads_txl_test_and_skips_classes_txt():
    items = read_yolo_dir(TXL, split="test")
    assert len(items) == 67
    kinds = [b.kind for item in items for b in item.boxes]
    assert set(kinds) <= {"wbc", "rbc", "platelet"}
    assert kinds.count("wbc") == 69
    assert all(item.image_path.suffix == ".jpg" for item in items)
    sizes = {(item.width, item.height) for item in items}
    assert sizes <= {(575, 575), (416, 416)}


# ---------------------------------------------------------------------------- matching


def test_matching_is_one_to_one_and_lenient_on_box_size():
    true = [(100, 100, 200, 200), (200, 100, 300, 200)]
    # a tight box inside the first cell (IoU 0.25, but centres mutually inside) and a duplicate
    pred = [(125, 125, 175, 175), (120, 120, 180, 180), (400, 400, 450, 450)]
    pairs = match_boxes(pred, true)
    assert len(pairs) == 1 and pairs[0][1] == 0
    scores = DetectionScores()
    scores.add_image([("rbc", b) for b in pred], [("rbc", b) for b in true])
    m = scores.as_dict()["per_kind"]["rbc"]
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 2)
    assert m["count_error"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------- detection


@needs_cbc
def test_finds_the_annotated_white_cells_on_cbc_test_images(cbc_items):
    items = [it for it in cbc_items[:6]]
    found = total = extra = 0
    for item in items:
        image = _rgb(item.image_path)
        dets = detect_cells(image, BCCD_MPP)
        assert all(isinstance(d, Detection) and 0.0 <= d.score <= 1.0 for d in dets)
        wbc = [d for d in dets if d.kind == "wbc"]
        truth = item.of_kind("wbc")
        total += len(truth)
        hits = sum(any(_centre_in(d.bbox, t.bbox) for d in wbc) for t in truth)
        found += hits
        extra += max(0, len(wbc) - len(truth))
    assert found == total
    assert extra <= 1


@needs_cbc
def test_wbc_only_pass_matches_full_pass(cbc_items):
    image = _rgb(cbc_items[1].image_path)
    fast = detect_cells(image, BCCD_MPP, kinds=("wbc",))
    full = [d for d in detect_cells(image, BCCD_MPP) if d.kind == "wbc"]
    assert all(d.kind == "wbc" for d in fast)
    assert len(fast) == len(full) == 1


@needs_cbc
def test_physical_size_invariance(cbc_items):
    """The same field at half the resolution (twice the µm/px) gives the same white cells."""
    for item in cbc_items[2:5]:
        image = _rgb(item.image_path)
        h, w = image.shape[:2]
        half = np.asarray(Image.fromarray(image).resize((w // 2, h // 2), Image.Resampling.BOX))
        n_full = sum(d.kind == "wbc" for d in detect_cells(image, BCCD_MPP))
        n_half = sum(d.kind == "wbc" for d in detect_cells(half, BCCD_MPP * 2))
        n_coarse = sum(
            d.kind == "wbc"
            for d in detect_cells(
                np.asarray(Image.fromarray(image).resize((w // 14, h // 14), Image.Resampling.BOX)),
                BCCD_MPP * 14,
                kinds=("wbc",),
            )
        )
        assert n_full == n_half == len(item.of_kind("wbc"))
        assert n_coarse == n_full  # ~1 µm/px, the slide's candidate pass


def _disc_field(centres: list[tuple[int, int]], radius: float, size=(200, 300)) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = (232, 232, 222)  # glass
    rng = np.random.default_rng(0)
    for cx, cy in centres:
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inside = r2 <= radius**2
        pallor = r2 <= (0.4 * radius) ** 2
        img[inside] = (215, 140, 150)
        img[pallor] = (225, 180, 185)
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_touching_red_cells_are_split():
    mpp = 0.1  # a 7.5 µm cell is 75 px across
    image = _disc_field([(110, 100), (175, 100)], radius=37.5)  # overlap of 10 px
    rbc = [d for d in detect_cells(image, mpp) if d.kind == "rbc"]
    assert len(rbc) == 2
    centres = sorted(d.center[0] for d in rbc)
    assert centres[0] < 142 < centres[1]
    assert not [d for d in detect_cells(image, mpp) if d.kind == "wbc"]


def test_red_cell_shape_tells_whole_cells_from_cut_ones_and_gives_the_centroid():
    mpp = 0.1
    # a lone cell, a pair that just touch (overlap 4 px), a pair overlapping by half a cell, one cut by the border
    centres = [(60, 60), (150, 60), (221, 60), (90, 150), (125, 150), (283, 150)]
    image = _disc_field(centres, radius=37.5, size=(200, 320))
    rbc = sorted(
        (d for d in detect_cells(image, mpp) if d.kind == "rbc"), key=lambda d: (d.center[1] > 105, d.center[0])
    )
    assert all(d.shape is not None and d.centroid is not None for d in rbc)
    lone, t1, t2 = rbc[:3]
    assert not lone.shape.in_clump and lone.shape.contact == 0.0 and not lone.shape.cut
    assert abs(lone.centroid[0] - 60) < 2.5 and abs(lone.centroid[1] - 60) < 2.5
    # touching: the shared boundary (~2.4 µm chord, widened at the detector's 0.4 µm/px) is short
    assert t1.shape.in_clump and t2.shape.in_clump and max(t1.shape.contact, t2.shape.contact) < 0.75
    border = [d for d in rbc if d.center[0] > 260]
    assert len(border) == 1 and border[0].shape.cut and not border[0].shape.in_clump
    # overlapping by half: the watershed's cut is about as long as each piece is wide
    overlapping = [d for d in rbc if d.center[1] > 105 and d.center[0] < 200]
    assert len(overlapping) == 2 and all(d.shape.in_clump and d.shape.contact > 0.9 for d in overlapping)


def test_single_red_cell_is_one():
    image = _disc_field([(150, 100)], radius=37.5)
    assert sum(d.kind == "rbc" for d in detect_cells(image, 0.1)) == 1


def test_blank_field_has_no_cells_and_no_scale():
    rng = np.random.default_rng(1)
    blank = np.clip(rng.normal(230, 2, (240, 320, 3)), 0, 255).astype(np.uint8)
    assert detect_cells(blank, 0.1) == []
    with pytest.raises(ValueError, match="cannot estimate"):
        estimate_mpp(blank)


def test_bad_arguments_raise_value_error():
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError):
        detect_cells(img, 0.0)
    with pytest.raises(ValueError):
        detect_cells(img, 0.1, kinds=("neutrophil",))
    with pytest.raises(ValueError):
        detect_cells(np.zeros((50, 50), np.uint8), 0.1)


@needs_cbc
def test_estimate_mpp_on_bccd_is_sensible(cbc_items):
    """BCCD's scale is ~0.07 µm/px (red-cell boxes ~105 px for 7.5 µm)."""
    est = [estimate_mpp(_rgb(item.image_path)) for item in cbc_items[:5]]
    assert 0.05 <= float(np.median(est)) <= 0.1
    assert all(0.035 <= e <= 0.15 for e in est)
