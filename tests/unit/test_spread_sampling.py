"""Spread sampling on a whole slide (issue 16): the 200-cell differential of a ``make-slide`` slide whose
white cells are spread evenly comes from every part of the smear, and the WBC estimate matches the
density the slide was made with.

One 24,000² slide at 0.25 µm/px (6 × 6 mm, 1,200 white cells of real PBC images), analysed once by
the one-process pipeline with the shipped model. Before spread sampling, the level-0 chunks were read
in raster order and every counted cell lay in the upper part of the smear.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hematovision.core.results import WBC, is_classified_wbc

pytestmark = pytest.mark.slow

SIDE_PX = 24_000
MPP = 0.25
N_WBC = 1200
SEED = 16
#: make-slide places white cells where the smear's cover is full: inside this share of its radii.
PLACED_WITHIN = 0.88


@pytest.fixture(scope="module")
def analysed(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from hemato_model.classifier import load_classifier
    from hemato_model.pipeline import analyze_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.settings import load_settings
    from hematovision.core.slides import open_slide
    from hematovision.devtools.synthetic import make_slide
    from hematovision.service.slide_results import build_report

    path = tmp_path_factory.mktemp("spread") / "even.tiff"
    manifest = make_slide(path, real_cells, SIDE_PX, SIDE_PX, mpp=MPP, n_wbc=N_WBC, seed=SEED, fmt="tiff")
    assert manifest["counts"]["wbc"] == N_WBC, manifest["notes"]
    placed = np.array([c["center"] for c in manifest["cells"] if c["kind"] == "wbc"], float)
    with open_slide(path) as slide:
        analysis = analyze_slide(slide, load_classifier(load_settings().model_dir), PipelineParams(target_wbc=200))
    return {
        "analysis": analysis,
        "report": build_report(analysis, slide_id="even"),
        "placed": placed,
        "semi_axes": manifest["smear_area"]["semi_axes"],
    }


def test_counted_cells_come_from_every_third_of_the_monolayer(analysed: dict[str, Any]) -> None:
    """Split the smear into thirds holding a third of the placed white cells each, along it and
    across it: each third holds 20-47 % of the cells the differential counted."""
    a = analysed["analysis"]
    counted = np.array([c.center for c in a.cells if c.kind == WBC and is_classified_wbc(c.label)])
    assert len(counted) >= 200
    assert a.stopped_early  # a 200-cell differential, not the whole slide
    for axis in (0, 1):
        t1, t2 = np.quantile(analysed["placed"][:, axis], [1 / 3, 2 / 3])
        v = counted[:, axis]
        shares = [float(np.mean(v < t1)), float(np.mean((v >= t1) & (v < t2))), float(np.mean(v >= t2))]
        print(f"axis {'xy'[axis]}: thirds hold {[round(s, 3) for s in shares]} of {len(v)} counted cells")
        assert all(0.20 <= s <= 0.47 for s in shares), (axis, shares)


def test_report_records_the_fields_read(analysed: dict[str, Any]) -> None:
    s = analysed["report"]["sampling"]
    assert s["method"].startswith("fields over the evaluable monolayer")
    assert s["fields_read"] == len(s["fields"]) >= 8
    assert 0 < s["area_read_mm2"] < s["monolayer_area_mm2"] <= s["smear_area_mm2"]
    ax, ay = analysed["semi_axes"]
    ellipse_mm2 = math.pi * ax * ay * (MPP / 1000) ** 2
    assert 0.75 * ellipse_mm2 < s["monolayer_area_mm2"] < ellipse_mm2
    # every field read lies in the smear (its centre inside the drawn ellipse)
    cx = cy = SIDE_PX / 2
    for x, y, w, h in s["fields"]:
        assert math.hypot((x + w / 2 - cx) / ax, (y + h / 2 - cy) / ay) < 1.0


def test_wbc_estimate_matches_the_placed_density(analysed: dict[str, Any]) -> None:
    """White cells per mm² of monolayer read vs what make-slide placed (uniform inside
    ``PLACED_WITHIN`` of the smear's radii): within 20 %, and inside the estimate's 95 % interval."""
    ax, ay = analysed["semi_axes"]
    placed_area_mm2 = math.pi * ax * ay * PLACED_WITHIN**2 * (MPP / 1000) ** 2
    truth = N_WBC / placed_area_mm2
    est = analysed["report"]["estimates"]["wbc"]
    print(f"WBC per mm²: estimate {est['per_mm2']} {est['per_mm2_ci95']}, placed {truth:.2f}")
    assert abs(est["per_mm2"] - truth) / truth <= 0.20
    lo, hi = est["per_mm2_ci95"]
    assert lo <= truth <= hi
    assert est["unit"] == "10^9/L" and est["value"] == pytest.approx(est["per_mm2"] * 0.556, rel=0.01)


def test_rare_event_limit_follows_the_count(analysed: dict[str, Any]) -> None:
    rep = analysed["report"]
    n = rep["counts"]["wbc"]
    assert rep["rare_event_detection_limit_pct"] == pytest.approx(100 * (1 - 0.05 ** (1 / n)), abs=0.05)
