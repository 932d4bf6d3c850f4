"""Storing a slide's result is idempotent: a re-delivered task never double-counts."""

from __future__ import annotations

from sqlalchemy import func, select

from hematovision.core.results import CellResult, SlideAnalysis
from hematovision.service.queueing import PREPARE
from hematovision.service.slide_results import build_report
from hematovision.store.models import Cell, DifferentialEntry, FlagRecord, Job, Slide
from workers.job_store import claim_stage, mark_failed, store_analysis


def analysis() -> SlideAnalysis:
    cells = [
        CellResult("wbc", (10 * i, 0, 10 * i + 40, 40), 0.9, "neutrophil" if i % 3 else "lymphocyte", 0.97)
        for i in range(30)
    ]
    cells += [CellResult("rbc", (i, 100, i + 30, 130), 0.8) for i in range(50)]
    return SlideAnalysis(
        mpp=0.25,
        width=1000,
        height=1000,
        model_name="m",
        model_version="1",
        classes=["lymphocyte", "neutrophil"],
        cells=cells,
    )


def count(factory, table) -> int:  # type: ignore[no-untyped-def]
    with factory() as s:
        return s.execute(select(func.count()).select_from(table)).scalar_one()


def test_redelivery_replaces_instead_of_adding(make_job) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, slide_id = make_job("/nonexistent/a.tiff")
    a = analysis()
    report = build_report(a, slide_id=slide_id)
    assert claim_stage(factory, job_id, PREPARE) is not None
    # First delivery stores, then (simulating a worker killed before the ack) the job is claimed
    # and stored again by a second delivery: the rows must equal one run's rows.
    with factory() as s, s.begin():
        s.get(Job, job_id).state = "running"
    assert store_analysis(factory, job_id, a, report)
    first = (count(factory, Cell), count(factory, DifferentialEntry), count(factory, FlagRecord))
    with factory() as s, s.begin():
        s.get(Job, job_id).state = "running"
    assert store_analysis(factory, job_id, a, report)
    assert (count(factory, Cell), count(factory, DifferentialEntry), count(factory, FlagRecord)) == first
    assert first[0] == 80
    # A finished job is not claimed or stored again.
    assert claim_stage(factory, job_id, PREPARE) is None
    assert not store_analysis(factory, job_id, a, report)
    assert count(factory, Cell) == 80
    with factory() as s:
        slide = s.get(Slide, slide_id)
        assert slide.n_wbc == 30 and slide.n_rbc == 50 and slide.report["counts"]["wbc"] == 30


def test_failure_is_recorded_and_final(make_job) -> None:  # type: ignore[no-untyped-def]
    factory, job_id, _ = make_job("/nonexistent/a.tiff")
    claim_stage(factory, job_id, PREPARE)
    mark_failed(factory, job_id, "boom", final=False)
    with factory() as s:
        assert s.get(Job, job_id).state == "queued"
    claim_stage(factory, job_id, PREPARE)
    mark_failed(factory, job_id, "boom again")
    with factory() as s:
        job = s.get(Job, job_id)
        assert job.state == "failed" and job.error == "boom again" and job.attempts == 2
    assert claim_stage(factory, job_id, PREPARE) is None
