"""The report's spread-sampling parts in every place a reader sees them (issue 16): the JSON report's
``sampling``, ``estimates`` and ``rare_event_detection_limit_pct``, the PDF's map, estimates and
rare-event statement, and the review UI's map (``GET /api/v1/slides/<id>/sampling-map``). A real
small slide, read by the real pipeline (its cells are labelled here: no model needed)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader

from hemato_model.handoff import CropSpool
from hemato_model.pipeline import prepare_slide
from hemato_model.pipeline_params import PipelineParams
from hematovision.core.results import WBC
from hematovision.core.slides import open_slide
from hematovision.devtools.synthetic import make_slide
from hematovision.service.slide_results import build_report
from workers.job_store import store_analysis


class _Spec:
    name, version, classes, input_px, crop_um = "wbc-test", "1.0", ["lymphocyte", "neutrophil"], 64, 24.0


@pytest.fixture
def stored(app, make_job, tmp_path: Path, data_root: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "s.tiff"
    make_slide(path, data_root, 2048, 2048, mpp=0.25, n_wbc=20, seed=4)
    with open_slide(path) as slide:
        analysis = prepare_slide(slide, _Spec(), CropSpool(tmp_path), PipelineParams())
    for i, c in enumerate(c for c in analysis.cells if c.kind == WBC):
        c.label, c.probability = ("neutrophil" if i % 2 else "lymphocyte"), 0.9
    factory, job_id, slide_id = make_job(path, filename="s.tiff", name="night")
    report = build_report(analysis, slide_id=slide_id)
    assert store_analysis(factory, job_id, analysis, report)
    return slide_id, report


def test_report_json_has_sampling_estimates_and_rare_event_limit(client, stored) -> None:  # type: ignore[no-untyped-def]
    slide_id, _ = stored
    r = client.get(f"/api/v1/slides/{slide_id}/report")
    assert r.status_code == 200
    rep = r.get_json()
    s = rep["sampling"]
    assert s["fields_read"] == len(s["fields"]) >= 1 and s["monolayer_area_mm2"] > 0
    assert "field_monolayer_mm2" not in s  # internal to the estimate
    wbc = rep["estimates"]["wbc"]
    assert wbc["unit"] == "10^9/L" and wbc["value"] > 0 and wbc["ci95"][0] < wbc["value"] < wbc["ci95"][1]
    plt = rep["estimates"]["platelets"]
    assert plt["unit"] == "platelets/100 RBC" and plt["rbc"] > 0 and plt["fields"] >= 1
    n = rep["counts"]["wbc"]
    assert rep["rare_event_detection_limit_pct"] == pytest.approx(100 * (1 - 0.05 ** (1 / n)), abs=0.5)


def test_pdf_shows_the_map_the_estimates_and_the_rare_event_limit(client, stored) -> None:  # type: ignore[no-untyped-def]
    slide_id, report = stored
    r = client.get(f"/api/v1/slides/{slide_id}/report?format=pdf")
    assert r.status_code == 200
    reader = PdfReader(io.BytesIO(r.data))
    text = " ".join(" ".join(p.extract_text() for p in reader.pages).split())
    assert "Smear estimates" in text and "WBC estimate" in text and "Platelets per 100 RBC" in text
    assert "Rare populations" in text and f"{report['rare_event_detection_limit_pct']} %" in text
    assert "Fields read" in text and "mm² of evaluable monolayer" in text


def test_sampling_map_png(client, stored) -> None:  # type: ignore[no-untyped-def]
    slide_id, _ = stored
    r = client.get(f"/api/v1/slides/{slide_id}/sampling-map")
    assert r.status_code == 200 and r.content_type == "image/png"
    img = Image.open(io.BytesIO(r.data)).convert("RGB")
    assert 0 < max(img.size) <= 512
    # the field outlines are drawn in the map's blue
    assert (0, 90, 200) in {px for px in img.getdata()}
    missing = client.get("/api/v1/slides/" + "0" * 32 + "/sampling-map")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
