"""Platelet detection recall (issue 16, item 4: target ≥ 0.85 on CBC Testing and on make-slide slides,
clumps found as clumps).

The learned platelet filter (``platelet_method="learned"``, hemato_model/models/platelet-filter-v1)
reaches it on CBC Testing (recall 0.9636, 53 of 55, the figure ``HEMATOVISION_PLATELET_DETECTOR=learned
hematovision evaluate-detection`` prints) at precision 0.6625; the precision asked (≥ 0.7) is not met,
which the strict expected failure states (it fails the run once it passes). CBC Testing is never used
for training or for choosing the threshold (:mod:`hemato_model.training.platelet_filter` uses CBC
Training and fields of a make-slide slide of seed 21; the slide here is seed 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemato_model.detection import detect_cells, estimate_mpp
from hemato_model.detection.detect import CLUMP_LABEL
from hemato_model.training.annotations import read_voc_dir
from hemato_model.training.detection_eval import DetectionScores
from hematovision.core.datasets import BCCD_DIR, CBC_DIR
from hematovision.core.settings import load_settings
from hematovision.core.slides import open_slide
from hematovision.devtools.cell_sprites import GLASS_RGB, PLASMA_T, platelet_sprite, rbc_sprite
from hematovision.devtools.synthetic import make_slide

DATA_ROOT = Path(load_settings().data_root)
CBC_TEST = DATA_ROOT / CBC_DIR / "Testing"
BCCD_IMAGES = DATA_ROOT / BCCD_DIR / "BCCD" / "JPEGImages"
TARGET_RECALL = 0.85
TARGET_PRECISION = 0.7
#: What the shipped filter measured on CBC Testing: precision 0.6625 (a floor a little under it).
PRECISION_FLOOR = 0.6

needs_cbc = pytest.mark.needs(
    (CBC_TEST / "Annotations").is_dir() and BCCD_IMAGES.is_dir(), f"CBC Testing and BCCD images under {DATA_ROOT}"
)


@pytest.fixture(scope="module")
def cbc_testing_platelets() -> dict[str, float]:
    scores = DetectionScores()
    for item in read_voc_dir(CBC_TEST, BCCD_IMAGES):
        with Image.open(item.image_path) as im:
            rgb = np.asarray(im.convert("RGB"))
        try:
            mpp = estimate_mpp(rgb)
        except ValueError:
            continue
        cells = detect_cells(rgb, mpp, kinds=("platelet",), platelet_method="learned")
        truth = [(b.kind, b.bbox) for b in item.boxes if b.kind == "platelet"]
        scores.add_image([(c.kind, c.bbox) for c in cells], truth)
    tally = scores.tallies["platelet"].as_dict()
    print(f"learned platelets on CBC Testing: recall {tally['recall']:.4f}, precision {tally['precision']:.4f}")
    return {"recall": float(tally["recall"] or 0.0), "precision": float(tally["precision"] or 0.0)}


@pytest.mark.slow
@needs_cbc
def test_learned_platelet_recall_on_cbc_testing(cbc_testing_platelets: dict[str, float]) -> None:
    assert cbc_testing_platelets["recall"] >= TARGET_RECALL
    assert cbc_testing_platelets["precision"] >= PRECISION_FLOOR


@pytest.mark.slow
@needs_cbc
@pytest.mark.xfail(strict=True, reason="platelet precision 0.6625 on CBC Testing, 0.7 asked (issue 16 item 4)")
def test_learned_platelet_precision_on_cbc_testing(cbc_testing_platelets: dict[str, float]) -> None:
    assert cbc_testing_platelets["precision"] >= TARGET_PRECISION


@pytest.mark.slow
def test_learned_platelet_recall_on_make_slide(tmp_path: Path) -> None:
    """Fields of a make-slide slide (seed 16, never trained on): recall and precision against its manifest."""
    path = tmp_path / "plt.tiff"
    make_slide(path, tmp_path, 3000, 3000, mpp=0.25, n_wbc=6, seed=16, source="procedural")
    doc = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    plt = np.array([c["bbox"] for c in doc["cells"] if c["kind"] == "platelet"], float)
    centres = (plt[:, :2] + plt[:, 2:]) / 2
    scores = {m: DetectionScores() for m in ("learned", "classical")}
    with open_slide(path) as slide:
        for x0, y0 in [(900, 900), (1500, 900), (900, 1500), (1500, 1500)]:
            region = slide.read_region((x0, y0), 0, (600, 600))
            inside = (centres >= [x0, y0]).all(axis=1) & (centres < [x0 + 600, y0 + 600]).all(axis=1)
            truth = [("platelet", tuple(b - [x0, y0, x0, y0])) for b in plt[inside]]
            for m, sc in scores.items():
                cells = detect_cells(region, 0.25, kinds=("rbc", "platelet"), platelet_method=m)
                sc.add_image([(c.kind, c.bbox) for c in cells if c.kind == "platelet"], truth)
    learned = scores["learned"].tallies["platelet"].as_dict()
    classical = scores["classical"].tallies["platelet"].as_dict()
    print(f"make-slide: learned {learned}, classical {classical}")
    assert int(learned["n_true"] or 0) >= 20
    assert float(learned["recall"] or 0.0) >= TARGET_RECALL
    assert float(learned["precision"] or 0.0) >= TARGET_PRECISION
    assert float(learned["recall"] or 0.0) > float(classical["recall"] or 0.0)


def _field_with_clump() -> np.ndarray:
    rng = np.random.default_rng(3)
    mpp = 0.25
    img = np.ones((400, 400, 3), np.float32) * GLASS_RGB * PLASMA_T

    def paste(sprite: np.ndarray, cx: int, cy: int) -> None:
        h = sprite.shape[0] // 2
        img[cy - h : cy + h + 1, cx - h : cx + h + 1] *= sprite

    for cx, cy in [(60, 60), (340, 60), (60, 340), (340, 340), (200, 60), (60, 200)]:
        paste(rbc_sprite(rng, mpp)[0], cx, cy)
    for dx, dy in [(0, 0), (9, 2), (3, 10), (12, 11), (-6, 8), (6, -7)]:  # six touching platelets
        paste(platelet_sprite(rng, mpp)[0], 200 + dx, 200 + dy)
    paste(platelet_sprite(rng, mpp)[0], 300, 200)  # and one alone
    return np.clip(img, 0, 255).astype(np.uint8)


def test_platelet_clump_is_reported_as_a_clump() -> None:
    dets = detect_cells(_field_with_clump(), 0.25, kinds=("platelet",), platelet_method="learned")
    clumps = [d for d in dets if d.label == CLUMP_LABEL]
    single = [d for d in dets if d.label is None]
    assert len(clumps) == 1 and len(single) == 1
    x0, y0, x1, y1 = clumps[0].bbox
    assert x0 <= 200 < x1 and y0 <= 200 < y1
    assert (x1 - x0) * 0.25 >= 5.0  # the clump's box, not one platelet's
    sx0, _, sx1, _ = single[0].bbox
    assert sx0 <= 300 < sx1


def test_unknown_platelet_method_is_refused() -> None:
    with pytest.raises(ValueError, match="platelet method"):
        detect_cells(_field_with_clump(), 0.25, platelet_method="magic")
