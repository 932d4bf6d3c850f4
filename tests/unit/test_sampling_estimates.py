"""Spread sampling, rare-event power and the smear estimates (issue 16, items 1, 3 and 4), without a
slide: the pure parts. The slide-level checks (a make-slide slide read by the real pipeline) are in
``test_spread_sampling.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemato_model.sampling import (
    EDGE_RATIO,
    Monolayer,
    Sampling,
    evaluable_monolayer,
    spread_fields,
    stratified_order,
)
from hematovision.core.estimates import WBC_FACTOR, platelet_estimate, smear_estimates, wbc_estimate
from hematovision.core.results import PLATELET, PLATELET_CLUMP, RBC, WBC, CellResult, SlideAnalysis
from hematovision.core.stats import poisson_interval, rare_event_detection_limit
from hematovision.service.slide_results import build_report

# --- rare-event power ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "pct"), [(100, 2.951), (200, 1.487), (500, 0.597), (1000, 0.2991), (2000, 0.1497)])
def test_rare_event_detection_limit(n: int, pct: float) -> None:
    p = rare_event_detection_limit(n)
    assert p is not None
    assert 100 * p == pytest.approx(pct, abs=0.001)
    assert (1 - p) ** n == pytest.approx(0.05)  # missed with 5 % probability, by definition


def test_rare_event_detection_limit_edges() -> None:
    assert rare_event_detection_limit(0) is None
    assert rare_event_detection_limit(1) == pytest.approx(0.95)
    assert rare_event_detection_limit(200, 0.99) > rare_event_detection_limit(200)  # type: ignore[operator]
    with pytest.raises(ValueError):
        rare_event_detection_limit(200, 1.0)


def test_report_states_the_rare_event_limit() -> None:
    a = SlideAnalysis(mpp=0.25, width=100, height=100, model_name="m", model_version="1", classes=["neutrophil"])
    a.cells = [CellResult(WBC, (0, 0, 1, 1), 1.0, label="neutrophil") for _ in range(200)]
    rep = build_report(a, slide_id="s")
    assert rep["rare_event_detection_limit_pct"] == 1.5
    assert "200 white cells" in rep["rare_event_statement"] and "1.5 %" in rep["rare_event_statement"]
    a.cells = a.cells * 10
    assert build_report(a, slide_id="s")["rare_event_detection_limit_pct"] == 0.15
    a.cells = []
    rep = build_report(a, slide_id="s")
    assert rep["rare_event_detection_limit_pct"] is None and rep["rare_event_statement"] is None


# --- estimates --------------------------------------------------------------------------------------


def test_poisson_interval_matches_garwood_table() -> None:
    # Garwood 95 % limits: 0 -> 0-3.689, 10 -> 4.795-18.39, 100 -> 81.36-121.6
    assert poisson_interval(0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert poisson_interval(10) == pytest.approx((4.795, 18.39), abs=1e-2)
    assert poisson_interval(100) == pytest.approx((81.36, 121.63), abs=1e-2)


def test_wbc_estimate_units_and_interval() -> None:
    e = wbc_estimate(100, 10.0)
    assert e["per_mm2"] == 10.0 and e["unit"] == "10^9/L"
    assert e["value"] == pytest.approx(10.0 * WBC_FACTOR, abs=0.01)
    lo, hi = e["ci95"]
    assert lo < e["value"] < hi and lo == pytest.approx(8.136 * WBC_FACTOR, abs=0.01)
    assert pytest.approx(0.556) == WBC_FACTOR  # 9,000 red cells/mm² of monolayer <-> 5.0 ×10¹²/L
    assert wbc_estimate(5, 0.0)["value"] is None


def test_platelet_estimate_per_100_rbc_and_with_a_cbc_rbc_count() -> None:
    e = platelet_estimate(60, 1000, fields=12, field_area_mm2=0.27)
    assert e["per_100_rbc"] == 6.0 and e["unit"] == "platelets/100 RBC" and e["value"] == 6.0
    lo, hi = e["ci95"]
    assert 4.5 < lo < 6.0 < hi < 8.0
    assert e["per_field"] == 5.0 and e["per_mm2"] == pytest.approx(222.2, abs=0.1)
    # with the CBC's red cells, 4.5 ×10¹²/L: 6 per 100 RBC = 0.06 × 4.5e12 = 270 ×10⁹/L
    c = platelet_estimate(60, 1000, fields=12, field_area_mm2=0.27, rbc_10e12_per_l=4.5)
    assert c["unit"] == "10^9/L" and c["value"] == 270.0
    assert c["ci95"][0] < 270.0 < c["ci95"][1]
    assert platelet_estimate(0, 0, fields=0, field_area_mm2=0.0)["value"] is None


def test_smear_estimates_count_white_cells_in_interior_fields_only() -> None:
    mpp = 0.25
    side = 2048  # 512 µm
    px_area = (mpp / 1000) ** 2
    full = side * side * px_area
    sampling = {
        "fields": [[0, 0, side, side], [side, 0, side, side]],
        "field_monolayer_mm2": [full, 0.6 * full],  # the second field is on the monolayer's border
        "field_px_area_mm2": px_area,
        "count_fields": {"fields": 2, "area_mm2": 0.045},
    }
    cells = [CellResult(WBC, (10 + i, 10, 40 + i, 40), 1.0, label="neutrophil") for i in range(20)]
    cells += [CellResult(WBC, (side + 10, 10, side + 40, 40), 1.0, label="lymphocyte")] * 7  # not counted
    cells += [CellResult(WBC, (20, 20, 50, 50), 1.0, label="erythroblast")]  # not a white cell
    cells += [CellResult(WBC, (20, 20, 50, 50), 1.0, label=None)]  # unidentified: a white cell
    cells += [CellResult(RBC, (0, 0, 1, 1), 1.0)] * 300 + [CellResult(PLATELET, (0, 0, 1, 1), 1.0)] * 15
    est = smear_estimates(cells, sampling)
    assert est["wbc"]["cells"] == 21 and est["wbc"]["fields"] == 1
    assert est["wbc"]["per_mm2"] == pytest.approx(21 / full, rel=1e-3)
    assert est["platelets"]["per_100_rbc"] == 5.0 and est["platelets"]["fields"] == 2
    assert est["platelets"]["clumps"] == 0


def test_platelet_estimate_reports_clumps_as_one_object_each() -> None:
    sampling = {"count_fields": {"fields": 1, "area_mm2": 0.0225}}
    cells = [CellResult(RBC, (0, 0, 1, 1), 1.0)] * 200 + [CellResult(PLATELET, (0, 0, 1, 1), 1.0)] * 8
    cells += [CellResult(PLATELET, (5, 5, 30, 30), 0.3, label=PLATELET_CLUMP)] * 2
    est = smear_estimates(cells, sampling)["platelets"]
    assert est["platelets"] == 10 and est["clumps"] == 2 and est["per_100_rbc"] == 5.0


# --- spread sampling --------------------------------------------------------------------------------


def test_stratified_order_visits_every_kept_cell_once() -> None:
    keep = {(r, c) for r in range(7) for c in range(11) if (r - 3) ** 2 / 9 + (c - 5) ** 2 / 25 <= 1}
    order = stratified_order(7, 11, keep)
    assert sorted(order) == sorted(keep)


def _ellipse_monolayer(side_px: int, mpp: float, down: float = 32.0) -> Monolayer:
    th = int(side_px / down)
    yy, xx = np.mgrid[0:th, 0:th]
    rho = np.hypot((xx - th / 2) / (0.47 * th), (yy - th / 2) / (0.45 * th))
    return Monolayer(mask=rho <= 0.9, down=down, mpp=mpp, axis=1)


@pytest.mark.parametrize("n_fields", [9, 15, 30, 60])
def test_every_prefix_of_the_field_order_is_spread_over_the_monolayer(n_fields: int) -> None:
    """Whatever field the reading stops at, the fields read so far cover every third of the
    monolayer, across and along it (the raster order of before read the top band first)."""
    mono = _ellipse_monolayer(40_000, 0.25)
    fields = spread_fields(mono, 40_000, 40_000)
    assert len(fields) > 150 and len(set(fields)) == len(fields)
    centres = np.array([(x + w / 2, y + h / 2) for x, y, w, h in fields])
    for axis in (0, 1):
        t1, t2 = np.quantile(centres[:, axis], [1 / 3, 2 / 3])
        v = centres[:n_fields, axis]
        shares = [np.mean(v < t1), np.mean((v >= t1) & (v < t2)), np.mean(v >= t2)]
        assert min(shares) >= 0.2 and max(shares) <= 0.5, (axis, shares)


def test_evaluable_monolayer_leaves_out_the_thick_end_and_the_feathered_edge() -> None:
    """A drawn smear: glass, a darker (thick) left fifth, a monolayer, and a rim that fades out."""
    h, w = 200, 500
    yy, xx = np.mgrid[0:h, 0:w]
    rho = np.hypot((xx - w / 2) / (0.48 * w), (yy - h / 2) / (0.45 * h))
    cover = np.clip((1.0 - rho) / 0.15, 0.0, 1.0)  # feathered rim: 15 % of the radius
    dark = 0.25 * cover * np.where(xx < w * 0.2, 2.2, 1.0)  # thick end: 2.2 × as dark
    gray = 235.0 * (1.0 - dark)
    thumb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    smear = cover > 0.05
    mono = evaluable_monolayer(thumb, smear, down=32.0, mpp=0.25)
    assert mono.axis == 1
    m = mono.mask
    assert not m[:, : int(w * 0.18)].any()  # the thick end is out
    assert m[h // 2, int(w * 0.3) : int(w * 0.9)].all()  # the monolayer is in
    assert not m[rho > 0.97].any()  # the faded rim is out ...
    assert m[(rho < 0.8) & (xx > w * 0.25)].mean() > 0.99  # ... but not the full-cover interior
    assert mono.thick_area_mm2 > 0 and mono.edge_area_mm2 > 0
    assert mono.area_mm2 < mono.smear_area_mm2
    assert EDGE_RATIO < 1.0


def test_sampling_record() -> None:
    mono = _ellipse_monolayer(8192, 0.25)
    s = Sampling("test", mono)
    s.read((4096 - 1024, 4096 - 1024, 2048, 2048))
    d = s.to_dict()
    assert d["fields_read"] == 1 and d["fields"] == [[3072, 3072, 2048, 2048]]
    assert d["area_read_mm2"] == pytest.approx(2048 * 2048 * (0.25e-3) ** 2, rel=0.02)
    assert 0 < d["area_read_mm2"] < d["monolayer_area_mm2"]
    assert math.isclose(d["field_px_area_mm2"], (0.25e-3) ** 2)


def test_the_rest_of_the_smear_is_read_after_the_monolayer() -> None:
    """A scant smear is still read whole: after the monolayer's fields come the smear's other fields."""
    mono = _ellipse_monolayer(16_000, 0.25)
    th = mono.mask.shape[0]
    yy, xx = np.mgrid[0:th, 0:th]
    mono.smear = np.hypot((xx - th / 2) / (0.49 * th), (yy - th / 2) / (0.48 * th)) <= 1.0
    only_mono = spread_fields(Monolayer(mask=mono.mask, down=mono.down, mpp=mono.mpp, axis=1), 16_000, 16_000)
    fields = spread_fields(mono, 16_000, 16_000)
    assert fields[: len(only_mono)] == only_mono  # the stratified monolayer fields come first
    rest = fields[len(only_mono) :]
    assert rest and len(set(fields)) == len(fields)
    assert rest == sorted(rest, key=lambda f: (f[1], f[0]))  # then the rest, in raster order
