"""Plain functions behind the slide task: claim a job, run the pipeline, store the result.

Idempotent under late acknowledgement: the result of a slide (cells, differential, flags, counts) is
written in ONE transaction that first locks the job row and replaces whatever an earlier delivery
stored, and a job already in a final state is never run again. A re-delivered message therefore
never double-counts, and a worker killed half-way leaves no partial rows.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hematovision.db import transaction
from hematovision.models import (
    FINAL_STATES,
    Cell,
    DifferentialEntry,
    FlagRecord,
    Job,
    ModelVersion,
    utcnow,
)
from hematovision.reports import build_report
from hematovision.results import SlideAnalysis
from hematovision.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    job_id: str
    slide_id: str
    path: str
    mpp: float | None
    wbc_per_l: float | None
    attempts: int


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_job(factory: sessionmaker[Session], job_id: str) -> Ticket | None:
    """Mark the job running; None when it is unknown or already final (nothing to do)."""
    with transaction(factory) as s:
        job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.state in FINAL_STATES:
            return None
        job.state = "running"
        job.attempts += 1
        job.started_at = job.started_at or utcnow()
        job.worker = worker_name()
        job.error = None
        slide = job.slide
        return Ticket(job.id, slide.id, slide.path, slide.mpp, slide.wbc_per_l, job.attempts)


def set_progress(factory: sessionmaker[Session], job_id: str, fraction: float) -> None:
    with transaction(factory) as s:
        job = s.get(Job, job_id)
        if job is not None and job.state == "running":
            job.progress = round(max(job.progress, min(0.99, fraction)), 3)


def job_state(factory: sessionmaker[Session], job_id: str) -> str | None:
    with factory() as s:
        return s.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()


def mark_failed(factory: sessionmaker[Session], job_id: str, error: str, *, final: bool = True) -> None:
    with transaction(factory) as s:
        job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.state in FINAL_STATES:
            return
        job.error = error[:2000]
        if final:
            job.state = "failed"
            job.finished_at = utcnow()
        else:
            job.state = "queued"


def _model_version(s: Session, name: str, version: str, sha256: str | None) -> ModelVersion:
    mv = s.execute(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    ).scalar_one_or_none()
    if mv is None:
        # Two workers may register the same model at once: the unique constraint decides, and the
        # loser reads the winner's row (a savepoint keeps the slide's transaction usable).
        try:
            with s.begin_nested():
                mv = ModelVersion(name=name, version=version, sha256=sha256)
                s.add(mv)
        except IntegrityError:
            mv = s.execute(
                select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
            ).scalar_one()
    return mv


def store_analysis(
    factory: sessionmaker[Session],
    job_id: str,
    analysis: SlideAnalysis,
    report: dict[str, Any],
    model_sha256: str | None = None,
) -> bool:
    """Replace the slide's results and finish the job, in one transaction. False if not stored
    (job cancelled or already finished by another delivery)."""
    with transaction(factory) as s:
        job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None or job.state in FINAL_STATES:
            return False
        slide = job.slide
        mv = _model_version(s, analysis.model_name, analysis.model_version, model_sha256)
        for table in (Cell, DifferentialEntry, FlagRecord):
            s.execute(delete(table).where(table.slide_id == slide.id))
        s.add_all(
            Cell(
                slide_id=slide.id, kind=c.kind, x0=int(c.bbox[0]), y0=int(c.bbox[1]), x1=int(c.bbox[2]),
                y1=int(c.bbox[3]), score=float(c.score), label=c.label,
                probability=None if c.probability is None else float(c.probability),
                model_version_id=mv.id if c.label else None,
            )
            for c in analysis.cells
        )
        for cls, d in report["differential"].items():
            s.add(DifferentialEntry(slide_id=slide.id, class_name=cls, count=d["count"],
                                    percent=d["percent"], ci_low=d["ci95"][0], ci_high=d["ci95"][1]))
        now = utcnow()
        for f in report["flags"]:
            s.add(FlagRecord(slide_id=slide.id, code=f["code"], severity=f["severity"],
                             message=f["message"], evidence=f["evidence"],
                             rules_version=str(report.get("rules_version")), created_at=now))
        slide.model_version_id = mv.id
        slide.n_wbc = report["counts"]["wbc"]
        slide.n_rbc = report["counts"]["rbc"]
        slide.n_platelets = report["counts"]["platelets"]
        slide.max_severity = report.get("max_severity")
        slide.analysed_at = now
        slide.report = report
        job.state = "succeeded"
        job.progress = 1.0
        job.finished_at = now
        job.error = None
        return True


def run_job(
    settings: Settings,
    factory: sessionmaker[Session],
    classifier: Any,
    job_id: str,
) -> str:
    """Process one job end to end; returns the job's final state (or 'skipped').

    Raises whatever the pipeline raised (after recording it), so the task can decide to retry.
    """
    from hemato_model.pipeline import AnalysisCancelled, PipelineParams, analyze_slide
    from hematovision.flags import load_rules
    from hematovision.slides import open_slide

    ticket = claim_job(factory, job_id)
    if ticket is None:
        return "skipped"
    last = [0.0]

    def progress(fraction: float, _message: str) -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 or fraction >= 0.99:
            last[0] = now
            set_progress(factory, job_id, fraction)

    def should_stop() -> bool:
        return job_state(factory, job_id) == "cancelled"

    params = PipelineParams(target_wbc=settings.target_wbc, full_count=settings.full_count)
    try:
        with open_slide(ticket.path, mpp=ticket.mpp, default_mpp=settings.default_mpp) as slide:
            analysis = analyze_slide(slide, classifier, params, progress=progress, should_stop=should_stop)
    except AnalysisCancelled:
        return "cancelled"
    rules = load_rules(settings.flag_rules)
    rules["insufficient"]["min_wbc"] = settings.min_wbc
    report = build_report(analysis, slide_id=ticket.slide_id, source=os.path.basename(ticket.path),
                          wbc_per_l=ticket.wbc_per_l, rules=rules)
    stored = store_analysis(factory, job_id, analysis, report, getattr(classifier, "sha256", None))
    if stored:
        from hematovision.observability import CELLS_CLASSIFIED, CLASSIFY_SECONDS

        CELLS_CLASSIFIED.inc(sum(1 for c in analysis.cells if c.label is not None))
        CLASSIFY_SECONDS.inc(analysis.timings_s.get("classify", 0.0))
    return "succeeded" if stored else (job_state(factory, job_id) or "skipped")
