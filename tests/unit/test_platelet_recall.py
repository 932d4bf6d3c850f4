"""Platelet detection recall on CBC Testing (issue 16, item 4: target ≥ 0.85), the figure
``hematovision evaluate-detection`` prints. **Not met** (0.7455, 41 of 55): the test states the target
and is an expected failure until a detector reaches it (strict: it fails the run once it passes, so
the marker is removed then). CBC Testing is never used for tuning (``benchmarks/platelet_grid.py``
tunes on CBC Training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemato_model.detection import detect_cells, estimate_mpp
from hemato_model.training.annotations import read_voc_dir
from hemato_model.training.detection_eval import DetectionScores
from hematovision.core.datasets import BCCD_DIR, CBC_DIR
from hematovision.core.settings import load_settings

DATA_ROOT = Path(load_settings().data_root)
CBC_TEST = DATA_ROOT / CBC_DIR / "Testing"
BCCD_IMAGES = DATA_ROOT / BCCD_DIR / "BCCD" / "JPEGImages"
TARGET_RECALL = 0.85

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs(
        (CBC_TEST / "Annotations").is_dir() and BCCD_IMAGES.is_dir(), f"CBC Testing and BCCD images under {DATA_ROOT}"
    ),
]


@pytest.mark.xfail(strict=True, reason="platelet recall 0.7455 on CBC Testing, target 0.85 (issue 16 item 4 not met)")
def test_platelet_recall_on_cbc_testing() -> None:
    scores = DetectionScores()
    items = read_voc_dir(CBC_TEST, BCCD_IMAGES)
    for item in items:
        with Image.open(item.image_path) as im:
            rgb = np.asarray(im.convert("RGB"))
        try:
            mpp = estimate_mpp(rgb)
        except ValueError:
            continue
        cells = detect_cells(rgb, mpp)
        scores.add_image([(c.kind, c.bbox) for c in cells], [(b.kind, b.bbox) for b in item.boxes])
    recall = scores.tallies["platelet"].as_dict()["recall"]
    print(f"platelet recall on CBC Testing: {recall:.4f}")
    assert recall >= TARGET_RECALL
