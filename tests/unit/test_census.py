"""Whole-smear census (issue 16, item 2): the pipeline reads every white cell through the two-pass
path with crops streamed in batches; the API's ``census`` option reaches the job; the review UI's
"count all cells" action queues the slide again as a new census job."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from hematovision.store.models import AuditEntry, Job, OutboxMessage, Slide, new_id

# ---------------------------------------------------------------------------------------------
# The pipeline


@pytest.fixture(scope="module")
def census_slide(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6,144² px slide (0.25 µm/px, 1.5 mm a side) with 150 white cells spread over the smear."""
    from hematovision.devtools.synthetic import make_slide

    path = tmp_path_factory.mktemp("census") / "census.tiff"
    manifest = make_slide(path, real_cells, 6144, 6144, mpp=0.25, n_wbc=150, seed=16)
    assert manifest["counts"]["wbc"] >= 140, manifest["notes"]
    return path


def _run(slide_path: Path, folder: Path, *, census: bool) -> tuple[object, object]:
    """``prepare_slide`` down the two-pass path with a small white-cell target, crops spooled to
    ``folder`` (the staged service's sink) 16 at a time."""
    from hemato_model.handoff import CropSpool
    from hemato_model.pipeline import prepare_slide
    from hemato_model.pipeline_params import PipelineParams
    from hematovision.core.slides import open_slide
    from hematovision.devtools.wholeslide_recall import _Spec

    folder.mkdir()
    spool = CropSpool(folder)
    # full_res_max_mpix=0: the two-pass path of whole slides, whatever this slide's size; chunks of
    # 512 µm (9 on this slide) so that a differential stops before the last.
    params = PipelineParams(target_wbc=20, census=census, full_res_max_mpix=0.0, batch_size=16, chunk_um=512.0)
    with open_slide(slide_path) as slide:
        analysis = prepare_slide(slide, _Spec(), spool, params)
    return analysis, spool


@pytest.mark.slow
def test_census_finds_every_white_cell_with_crops_streamed(census_slide: Path, tmp_path: Path) -> None:
    from hematovision.devtools.wholeslide_recall import match_cells, placed_white_cells

    head, placed = placed_white_cells(census_slide)
    analysis, spool = _run(census_slide, tmp_path / "census", census=True)
    wbc = [c for c in analysis.cells if c.kind == "wbc"]  # type: ignore[attr-defined]
    centres = np.array([((c.bbox[0] + c.bbox[2]) / 2, (c.bbox[1] + c.bbox[3]) / 2) for c in wbc]).reshape(-1, 2)
    found = sum(j is not None for j in match_cells(placed, centres, float(head["mpp"])))
    assert found >= 0.95 * len(placed), f"census found {found} of {len(placed)} placed white cells"
    assert not analysis.stopped_early  # type: ignore[attr-defined]
    # Every white cell's crop went to the sink, a batch (16) at a time: never all held at once.
    sizes = [np.load(p, mmap_mode="r").shape[0] for p in sorted((tmp_path / "census").glob("crops-*.npy"))]
    assert sum(sizes) == len(spool.cells) == len(wbc)  # type: ignore[attr-defined]
    assert len(sizes) >= len(wbc) // 16 and max(sizes) <= 16, sizes
    # Red cells and platelets come from the sampled fields only (12 fields of 150 µm: 0.27 mm² of 2.25).
    fields_mm2 = 12 * 0.15**2
    assert analysis.counts()["rbc"] > 0  # type: ignore[attr-defined]
    assert analysis.area_mm2 > 4 * fields_mm2  # type: ignore[attr-defined]
    # Without census the same parameters stop after 1.25 x 20 candidates.
    short, _ = _run(census_slide, tmp_path / "differential", census=False)
    assert short.stopped_early  # type: ignore[attr-defined]
    assert sum(c.kind == "wbc" for c in short.cells) < len(wbc) / 2  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# The API option


def _upload(client, png: bytes, **fields: str):  # type: ignore[no-untyped-def]
    data: dict[str, object] = {"mpp": "0.25", **fields, "files": [(io.BytesIO(png), "s.png")]}
    return client.post("/api/v1/batches", data=data, content_type="multipart/form-data")


def test_census_option_is_stored_and_reaches_the_prepare_stage(app, client, png_bytes) -> None:  # type: ignore[no-untyped-def]
    from workers.job_store import claim_stage

    r = _upload(client, png_bytes(), census="true")
    assert r.status_code == 202, r.get_json()
    job = r.get_json()["jobs"][0]
    assert job["census"] is True
    assert client.get(f"/api/v1/jobs/{job['id']}").get_json()["census"] is True
    plain = _upload(client, png_bytes(), census="false").get_json()["jobs"][0]
    assert plain["census"] is False
    factory = app.extensions["hv_sessions"]
    assert claim_stage(factory, job["id"], "prepare").census is True
    assert claim_stage(factory, plain["id"], "prepare").census is False
    # A JSON submission (server-side paths) takes a JSON boolean.
    settings = app.extensions["hv_settings"]
    (settings.import_root / "p.png").write_bytes(png_bytes())
    r = client.post(
        "/api/v1/batches", json={"paths": [str(settings.import_root / "p.png")], "mpp": 0.25, "census": True}
    )
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["jobs"][0]["census"] is True


@pytest.mark.parametrize("value", ["yes", "2", "on", "true "])
def test_bad_census_value_is_400_and_writes_nothing(app, client, png_bytes, value: str) -> None:  # type: ignore[no-untyped-def]
    r = _upload(client, png_bytes(), census=value)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == "invalid_option"
    assert "census" in r.get_json()["error"]["message"]
    with app.extensions["hv_sessions"]() as s:
        assert s.scalars(select(Job)).all() == []
    assert not any((app.extensions["hv_settings"].upload_dir).glob("*/*")), "an upload was left behind"


@pytest.mark.parametrize("value", [1, "maybe", None, [True]])
def test_bad_census_value_in_json_is_400(app, client, png_bytes, value: object) -> None:  # type: ignore[no-untyped-def]
    settings = app.extensions["hv_settings"]
    (settings.import_root / "p.png").write_bytes(png_bytes())
    r = client.post(
        "/api/v1/batches", json={"paths": [str(settings.import_root / "p.png")], "mpp": 0.25, "census": value}
    )
    if value is None:  # null: the option is not given
        assert r.status_code == 202
        assert r.get_json()["jobs"][0]["census"] is False
        return
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == "invalid_option"


# ---------------------------------------------------------------------------------------------
# "Count all cells" in the review UI


@pytest.fixture
def analysed_slide(app, make_job) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A slide whose job has succeeded and whose report is stored: (slide id, job id)."""
    from hematovision.core.results import CellResult, SlideAnalysis
    from hematovision.service.slide_results import build_report
    from workers.job_store import store_analysis

    cells = [CellResult("wbc", (10 * i, 10, 10 * i + 8, 18), 0.9, "neutrophil", 0.9) for i in range(5)]
    analysis = SlideAnalysis(
        mpp=0.25, width=512, height=512, model_name="wbc-test", model_version="1", classes=["neutrophil"], cells=cells
    )
    factory, job_id, slide_id = make_job("/nonexistent/s.tiff", state="running")
    assert store_analysis(factory, job_id, analysis, build_report(analysis, slide_id=slide_id))
    return slide_id, job_id


def test_count_all_cells_queues_a_new_census_job(app, person, analysed_slide: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    slide_id, old_job = analysed_slide
    tech = person()
    page = tech.get(f"/ui/slides/{slide_id}").get_data(as_text=True)
    assert 'id="census"' in page and "Count all cells" in page
    r = tech.post(f"/api/v1/slides/{slide_id}/census")
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["id"] != old_job and body["census"] is True and body["state"] == "queued"
    factory = app.extensions["hv_sessions"]
    with factory() as s:
        slide = s.get(Slide, slide_id)
        assert slide.job.id == body["id"]
        assert slide.report is not None and slide.n_wbc == 5, "the old results stay until the census stores its own"
        assert s.get(Job, old_job) is None
        assert [m.stage for m in s.scalars(select(OutboxMessage).where(OutboxMessage.job_id == body["id"]))] == [
            "prepare"
        ]
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "census")).one()
        assert entry.actor == f"user:{tech.username}" and entry.slide_id == slide_id and entry.status == 202
    # The job is queued now: a second click is refused, and nothing changes.
    again = tech.post(f"/api/v1/slides/{slide_id}/census")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "job_active"
    # The old report is served until then.
    assert tech.get(f"/api/v1/slides/{slide_id}/report").status_code == 200


def test_count_all_cells_is_a_review_action(app, make_key, person, analysed_slide: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    slide_id, _ = analysed_slide
    anon = app.test_client()
    assert anon.post(f"/api/v1/slides/{slide_id}/census").status_code == 401
    for scope in ("read", "submit"):
        c = app.test_client()
        c.environ_base["HTTP_X_API_KEY"] = make_key(scope, f"k-{scope}")
        r = c.post(f"/api/v1/slides/{slide_id}/census")
        assert r.status_code == 403, (scope, r.get_json())
    tech = person()
    assert tech.post(f"/api/v1/slides/{slide_id}/census", csrf=False).status_code in (400, 403)
    assert tech.post(f"/api/v1/slides/{new_id()}/census").status_code == 404
    reviewer = app.test_client()
    reviewer.environ_base["HTTP_X_API_KEY"] = make_key("review", "middleware")
    assert reviewer.post(f"/api/v1/slides/{slide_id}/census").status_code == 202


def test_count_all_cells_refused_after_signoff(app, person, analysed_slide: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    slide_id, job_id = analysed_slide
    from hematovision.store.models import utcnow

    tech = person()
    with app.extensions["hv_sessions"]() as s, s.begin():  # signed off (the sign-off itself: test_review.py)
        slide = s.get(Slide, slide_id)
        slide.verified_at, slide.verified_by = utcnow(), tech.full_name
    r = tech.post(f"/api/v1/slides/{slide_id}/census")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "signed_off"
    with app.extensions["hv_sessions"]() as s:
        assert s.get(Slide, slide_id).job.id == job_id


def test_openapi_documents_census(client) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/api/v1/openapi.json").get_json()
    assert "post" in doc["paths"]["/api/v1/slides/{slide_id}/census"]
    assert "census" in json.dumps(doc["paths"]["/api/v1/batches"])


def test_process_refuses_census_with_full_count(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hematovision.cli import main as cli

    r = CliRunner().invoke(cli, ["process", "x.tiff", "--out", str(tmp_path), "--census", "--full-count"])
    assert r.exit_code == 2 and "not both" in r.output
    assert not any(tmp_path.iterdir())
