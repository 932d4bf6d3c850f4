"""The three stages of a slide job (prepare on CPU, classify on GPU, report), run as plain functions on
a real synthetic slide with the real model: they give what the one-machine pipeline gives, hand over
through the job's folder, survive re-delivery without double work or double rows, and stop for a
cancelled job."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from hemato_model.classifier import load_classifier
from hemato_model.handoff import HandoffError, read_prepared
from hemato_model.pipeline import analyze_slide
from hemato_model.pipeline_params import PipelineParams
from hematovision.core.slides import open_slide
from hematovision.service.queueing import CLASSIFY, REPORT
from hematovision.store.models import Cell, Job
from workers.stages import PermanentError, job_folder, run_classify, run_prepare, run_report


@pytest.fixture(scope="module")
def slide_path(real_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hematovision.devtools.synthetic import make_slide

    p = tmp_path_factory.mktemp("slides") / "s.tiff"
    make_slide(p, real_cells, 1024, 1024, mpp=0.25, n_wbc=8, seed=11, fmt="tiff")
    return p


@pytest.fixture
def job(make_job, slide_path):  # type: ignore[no-untyped-def]
    """(session factory, job id) of a queued job for the slide, in a batch of priority 7."""
    factory, job_id, _ = make_job(slide_path, priority=7)
    return factory, job_id


def _job(factory, job_id) -> Job:  # type: ignore[no-untyped-def]
    with factory() as s:
        j = s.get(Job, job_id)
        s.expunge(j)
        return j


@pytest.mark.slow
def test_stages_hand_over_and_match_the_one_machine_pipeline(settings, job, slide_path) -> None:  # type: ignore[no-untyped-def]
    factory, job_id = job
    clf = load_classifier(settings.model_dir)

    out = run_prepare(settings, factory, job_id)
    assert (out.state, out.next_stage, out.priority) == ("done", CLASSIFY, 7)
    j = _job(factory, job_id)
    assert (j.state, j.stage, j.progress) == ("queued", CLASSIFY, 0.85)
    prepared = read_prepared(job_folder(settings, job_id) / "prepared")
    n_crops = len(prepared.crop_cells)
    assert n_crops == j.stages["prepare"]["wbc"] >= 6
    assert all(c.label is None for c in prepared.analysis.cells)

    out = run_classify(settings, factory, clf, job_id)
    assert (out.state, out.next_stage, out.priority) == ("done", REPORT, 7)
    j = _job(factory, job_id)
    assert (j.state, j.stage) == ("queued", REPORT)
    assert j.stages["classify"]["cells"] == n_crops and j.stages["classify"]["seconds"] > 0

    out = run_report(settings, factory, job_id)
    assert (out.state, out.next_stage) == ("succeeded", None)
    j = _job(factory, job_id)
    assert j.state == "succeeded" and j.attempts == 1
    assert {k: v["runs"] for k, v in j.stages.items()} == {"prepare": 1, "classify": 1, "report": 1}
    assert not job_folder(settings, job_id).exists()  # the hand-over is removed once stored

    with open_slide(slide_path, mpp=0.25) as slide:
        direct = analyze_slide(slide, clf, PipelineParams(target_wbc=settings.target_wbc))
    with factory() as s:
        stored = sorted((c.kind, c.x0, c.y0, c.x1, c.y1, c.label) for c in s.scalars(select(Cell)))
    assert stored == sorted((c.kind, *c.bbox, c.label) for c in direct.cells)


@pytest.mark.slow
def test_redelivered_stages_do_not_redo_or_double_count(settings, job) -> None:  # type: ignore[no-untyped-def]
    factory, job_id = job
    clf = load_classifier(settings.model_dir)
    run_prepare(settings, factory, job_id)
    meta = job_folder(settings, job_id) / "prepared" / "meta.json"
    written = meta.stat().st_mtime_ns
    # A worker died after preparing but before its message was acknowledged: the message comes again.
    assert run_prepare(settings, factory, job_id).state == "done"
    assert meta.stat().st_mtime_ns == written  # not prepared a second time
    run_classify(settings, factory, clf, job_id)
    assert run_classify(settings, factory, clf, job_id).state == "done"
    j = _job(factory, job_id)
    assert j.attempts == 2 and j.stages["prepare"]["runs"] == 2 and j.stages["classify"]["runs"] == 2
    assert run_report(settings, factory, job_id).state == "succeeded"
    with factory() as s:
        n = s.execute(select(func.count()).select_from(Cell)).scalar_one()
    # Every stage delivered again after the result is stored: nothing is done, nothing is added.
    for again in (
        run_prepare(settings, factory, job_id),
        run_classify(settings, factory, clf, job_id),
        run_report(settings, factory, job_id),
    ):
        assert again.state == "skipped" and again.next_stage is None
    with factory() as s:
        assert s.execute(select(func.count()).select_from(Cell)).scalar_one() == n > 0


@pytest.mark.slow
def test_a_cancelled_job_stops_between_stages(settings, job) -> None:  # type: ignore[no-untyped-def]
    factory, job_id = job
    run_prepare(settings, factory, job_id)
    with factory() as s, s.begin():
        s.get(Job, job_id).state = "cancelled"
    out = run_classify(settings, factory, load_classifier(settings.model_dir), job_id)
    assert out.state == "skipped" and out.next_stage is None
    assert not job_folder(settings, job_id).exists()
    assert _job(factory, job_id).state == "cancelled"


def test_classifier_that_does_not_fit_the_crops_fails_for_good(settings, job) -> None:  # type: ignore[no-untyped-def]
    factory, job_id = job
    run_prepare(settings, factory, job_id)

    class Other:
        name, version, classes, crop_um, input_px = "other", "9", ["a"], 30.0, 96

    with pytest.raises(PermanentError, match="HEMATOVISION_MODEL_DIR"):
        run_classify(settings, factory, Other(), job_id)


@pytest.mark.slow
def test_report_without_labels_or_with_missing_crops_is_an_error(settings, job) -> None:  # type: ignore[no-untyped-def]
    factory, job_id = job
    run_prepare(settings, factory, job_id)
    with pytest.raises(HandoffError, match="labels"):
        run_report(settings, factory, job_id)
    folder = job_folder(settings, job_id) / "prepared"
    for f in folder.glob("crops-*.npy"):
        f.unlink()
    with pytest.raises(HandoffError, match="crops on disk"):
        run_classify(settings, factory, load_classifier(settings.model_dir), job_id)


def test_sweep_removes_only_folders_of_ended_or_unknown_jobs(settings, job) -> None:  # type: ignore[no-untyped-def]
    from workers.stages import sweep_work_dir

    factory, job_id = job
    run_prepare(settings, factory, job_id)  # queued for classify: its folder is still needed
    ended = job_folder(settings, "0" * 32)
    (ended / "prepared").mkdir(parents=True)
    assert sweep_work_dir(settings, factory) == 1  # the folder of a job that does not exist
    assert job_folder(settings, job_id).exists() and not ended.exists()
    with factory() as s, s.begin():
        s.get(Job, job_id).state = "cancelled"
    assert sweep_work_dir(settings, factory) == 1
    assert not job_folder(settings, job_id).exists()
    assert sweep_work_dir(settings, factory) == 0


@pytest.mark.slow
def test_red_cell_morphology_runs_in_prepare_and_reaches_the_report(settings, job, slide_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 17: with red-cell morphology on, prepare classifies a sample of red cells, the labels cross
    the hand-over, and the stored cells and report carry them as the one-machine pipeline does."""
    factory, job_id = job
    settings = settings.model_copy(update={"rbc_morphology": True})
    clf, rbc = load_classifier(settings.model_dir), load_classifier(settings.rbc_model_dir)
    run_prepare(settings, factory, job_id)
    prepared = read_prepared(job_folder(settings, job_id) / "prepared")
    red = [c for c in prepared.analysis.cells if c.kind == "rbc" and c.label is not None]
    assert red and prepared.analysis.rbc["cells_classified"] == len(red)
    run_classify(settings, factory, clf, job_id)
    assert run_report(settings, factory, job_id).state == "succeeded"
    with factory() as s:
        stored = sorted((c.kind, c.x0, c.y0, c.x1, c.y1, c.label) for c in s.scalars(select(Cell)))
        from hematovision.store.models import Slide

        report = s.scalars(select(Slide)).one().report
    with open_slide(slide_path, mpp=0.25) as slide:
        direct = analyze_slide(slide, clf, PipelineParams(target_wbc=settings.target_wbc), rbc_classifier=rbc)
    assert stored == sorted((c.kind, *c.bbox, c.label) for c in direct.cells)
    m = report["rbc_morphology"]
    assert m["n_classified"] + m["unidentified"] == len(red) and m["status"] in ("ok", "insufficient", "uncertain")
    assert report["counts"]["rbc"] == sum(1 for c in direct.cells if c.kind == "rbc")
