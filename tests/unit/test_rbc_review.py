"""Red-cell review: a classified red cell is reclassified with the same endpoint and audit as a
white cell, and the red-cell section and flags are recomputed (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from hematovision.core.results import RBC, WBC, CellResult, SlideAnalysis
from hematovision.devtools.synthetic import make_slide
from hematovision.service.slide_results import build_report
from hematovision.store.models import Cell, CellReview, Slide
from workers.job_store import store_analysis

RED = [
    "normal", "macrocyte", "microcyte", "spherocyte", "target", "stomatocyte", "ovalocyte",
    "teardrop", "burr", "schistocyte", "uncategorised", "hypochromia", "elliptocyte",
]  # fmt: skip


@pytest.fixture
def analysed(app, make_job, tmp_path: Path, data_root: Path) -> str:  # type: ignore[no-untyped-def]
    """A small slide whose report has 1,000 named red cells, 10 of them schistocytes (1.0 %)."""
    path = tmp_path / "r.tiff"
    make_slide(path, data_root, 512, 512, mpp=0.25, n_wbc=1)
    cells = [CellResult(WBC, (10, 10, 60, 60), 0.9, "neutrophil", 0.9)]
    for i in range(1001):
        label = None if i == 1000 else ("schistocyte" if i < 10 else "normal")
        x = (i % 30) * 15
        cells.append(CellResult(RBC, (x, 100, x + 30, 130), 0.9, label, 0.95 if label else None))
    analysis = SlideAnalysis(
        mpp=0.25, width=512, height=512, model_name="wbc-test", model_version="1", classes=["neutrophil"], cells=cells
    )
    analysis.rbc = {"status": "classified", "model": {"name": "rbc", "classes": RED}, "scale_known": True}
    factory, job_id, slide_id = make_job(path, name="rbc-review", width=512, height=512, state="running")
    assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
    return slide_id


def test_red_cells_are_listed_and_reclassified_with_audit(app, client, analysed: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/slides/{analysed}/cells?kind=rbc&label=schistocyte")
    body = r.get_json()
    assert r.status_code == 200 and body["count"] == 10 and body["kind"] == "rbc"
    assert body["classes"][0] == "schistocyte" and set(body["classes"]) == set(RED)
    assert body["labels"][-1] == "unidentified" and "neutrophil" not in body["labels"]
    report = client.get(f"/api/v1/slides/{analysed}/report").get_json()
    assert report["rbc_morphology"]["findings"]["schistocyte"]["count"] == 10
    assert report["flags"][0]["code"] == "SCHISTOCYTES"
    cell_id = body["cells"][0]["id"]
    r = client.post(f"/api/v1/cells/{cell_id}/label", json={"label": "teardrop"})
    out = r.get_json()
    assert r.status_code == 200, out
    assert out["rbc_morphology"]["findings"]["schistocyte"]["count"] == 9
    assert out["rbc_morphology"]["findings"]["teardrop"]["count"] == 1
    assert out["effect"]["wbc_change"] == 0 and out["counts"]["wbc"] == 1
    assert out["flags"][0]["code"] == "SCHISTOCYTES_BORDERLINE"  # 0.9 %, CI reaches 1 %
    factory = app.extensions["hv_sessions"]
    with factory() as s:
        rev = s.execute(select(CellReview).where(CellReview.cell_id == cell_id)).scalar_one()
        assert (rev.from_label, rev.to_label) == ("schistocyte", "teardrop")
        assert s.get(Slide, analysed).report["rbc_morphology"]["findings"]["teardrop"]["count"] == 1
        unclassified = s.execute(select(Cell.id).where(Cell.slide_id == analysed, Cell.label.is_(None))).scalar_one()
    # a white-cell label for a red cell, and a red cell the model never classified: refused
    r = client.post(f"/api/v1/cells/{cell_id}/label", json={"label": "neutrophil"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_label"
    r = client.post(f"/api/v1/cells/{unclassified}/label", json={"label": "normal"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "not_a_white_cell"


def test_red_cell_gallery_page(app, person, analysed: str) -> None:  # type: ignore[no-untyped-def]
    page = f"/ui/slides/{analysed}/red-cells"
    assert app.test_client().get(page).status_code == 302  # a review page: a person's login
    tech = person()
    r = tech.get(page)
    text = r.get_data(as_text=True)
    assert r.status_code == 200 and "Red-cell gallery" in text and "rbc" in text
    assert page in tech.get(f"/ui/slides/{analysed}").get_data(as_text=True)
