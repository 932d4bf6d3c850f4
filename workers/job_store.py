"""The job-row store of the stage tasks: claim a stage, record progress, finish a stage,
store the result, record a failure.

Idempotent under late acknowledgement: the result of a slide (cells, differential, flags, counts) is
written in ONE transaction that first locks the job row and replaces whatever an earlier delivery
stored, and a job already in a final state is never run again. A re-delivered message therefore
never double-counts, and a worker killed half-way leaves no partial rows.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hematovision.core.patient import PatientContext
from hematovision.core.results import SlideAnalysis
from hematovision.service import model_registry
from hematovision.service.outbox import add_message
from hematovision.service.slide_results import replace_result_rows
from hematovision.service.submission import job_options, order_of
from hematovision.store.db import transaction
from hematovision.store.models import FINAL_STATES, Job, ModelVersion, utcnow

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    job_id: str
    slide_id: str
    path: str
    mpp: float | None
    patient: PatientContext
    attempts: int
    priority: int
    stage: str
    started_at: datetime
    #: A whole-smear census was asked for (:func:`hematovision.service.submission.job_options`).
    census: bool = False


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _live_job(s: Session, job_id: str) -> Job | None:
    """The job's row, locked for this transaction; None when it is unknown or already final."""
    job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    return None if job is None or job.state in FINAL_STATES else job


def _record_stage(job: Job, stage: str, **facts: Any) -> dict[str, Any]:
    """Merge ``facts`` into what the job records of ``stage`` (a new dict, so the JSON column is
    seen as changed); returns the stage's record."""
    stages = dict(job.stages or {})
    stages[stage] = {**stages.get(stage, {}), **facts}
    job.stages = stages
    return stages[stage]


def claim_stage(factory: sessionmaker[Session], job_id: str, stage: str) -> Ticket | None:
    """Mark the job running in ``stage``; None when it is unknown or already final (nothing to do).

    ``attempts`` is the most runs any one stage has had (1 when nothing was retried or re-delivered).
    """
    with transaction(factory) as s:
        job = _live_job(s, job_id)
        if job is None:
            return None
        runs = int((job.stages or {}).get(stage, {}).get("runs", 0)) + 1
        run = _record_stage(job, stage, runs=runs, worker=worker_name())
        job.stage = stage
        job.state = "running"
        job.attempts = max(job.attempts, run["runs"])
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        job.worker = run["worker"]
        job.error = None
        slide = job.slide
        return Ticket(
            job.id,
            slide.id,
            slide.path,
            slide.mpp,
            order_of(slide).context(),
            job.attempts,
            slide.batch.priority,
            stage,
            job.started_at,
            census=job_options(job).get("census", False),
        )


def finish_stage(
    factory: sessionmaker[Session],
    job_id: str,
    stage: str,
    next_stage: str,
    progress: float,
    **facts: Any,
) -> int | None:
    """Record a stage's run (``facts`` such as seconds) and leave the job queued for ``next_stage``,
    with the next stage's outbox message written in the same transaction (so it is published even
    if the broker is away right now). Returns the outbox row's id; None when the job ended meanwhile
    (cancelled), so the next stage must not be queued."""
    with transaction(factory) as s:
        job = _live_job(s, job_id)
        if job is None:
            return None
        _record_stage(job, stage, **facts)
        job.stage = next_stage
        job.state = "queued"
        job.progress = round(max(job.progress, progress), 3)
        job.heartbeat_at = utcnow()
        return add_message(s, job.id, next_stage, job.slide.batch.priority).id


def set_progress(factory: sessionmaker[Session], job_id: str, fraction: float) -> None:
    with transaction(factory) as s:
        job = s.get(Job, job_id)
        if job is not None and job.state == "running":
            job.progress = round(max(job.progress, min(0.99, fraction)), 3)
            job.heartbeat_at = utcnow()


def touch_heartbeat(factory: sessionmaker[Session], job_id: str) -> None:
    """Record that the job's running stage is alive (a cheap UPDATE of one row)."""
    with transaction(factory) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(heartbeat_at=utcnow()))


@contextmanager
def heartbeat(factory: sessionmaker[Session], job_id: str, interval_s: float) -> Iterator[None]:
    """Record a heartbeat every ``interval_s`` from a small thread while the block runs, whatever the
    stage is doing (opening a slide, loading the model, a long classification), so the reconciler
    can tell a slow stage from a dead worker."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                touch_heartbeat(factory, job_id)
            except Exception as exc:  # noqa: BLE001 - database away: the next beat tries again
                log.debug("heartbeat of job %s not recorded: %s", job_id, exc.__class__.__name__)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=max(5.0, interval_s))


def job_state(factory: sessionmaker[Session], job_id: str) -> str | None:
    with factory() as s:
        return s.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()


def mark_failed(factory: sessionmaker[Session], job_id: str, error: str, *, final: bool = True) -> None:
    with transaction(factory) as s:
        job = _live_job(s, job_id)
        if job is None:
            return
        job.error = error[:2000]
        if final:
            job.state = "failed"
            job.finished_at = utcnow()
        else:
            job.state = "queued"


@dataclass(frozen=True)
class AssignedModel:
    """The registered model a slide is analysed with (:mod:`hematovision.service.model_registry`)."""

    name: str
    version: str
    sha256: str | None
    model_dir: Path


def assign_model(factory: sessionmaker[Session], job_id: str, fallback_dir: Path) -> AssignedModel | None:
    """Record on the job's slide the model it is analysed with (the promoted one, unless it has one
    already; ``fallback_dir`` is registered and promoted when nothing is) and return it; None when
    the job is unknown or final. Raises :class:`~hematovision.service.model_registry.RegistryError`
    when the model's directory cannot be found here."""
    with transaction(factory) as s:
        job = _live_job(s, job_id)
        if job is None:
            return None
        mv = model_registry.assign_model(s, job.slide, fallback_dir)
        return AssignedModel(mv.name, mv.version, mv.sha256, model_registry.model_dir_of(mv, fallback_dir))


def assigned_model(factory: sessionmaker[Session], job_id: str, fallback_dir: Path) -> AssignedModel | None:
    """The model the job's slide was assigned when it was prepared; None when it has none (prepared
    before the registry) or the job is unknown: the worker's configured model is used then."""
    with factory() as s:
        job = s.get(Job, job_id)
        mv = job.slide.model_version if job is not None else None
        if mv is None or mv.path is None:
            return None
        return AssignedModel(mv.name, mv.version, mv.sha256, model_registry.model_dir_of(mv, fallback_dir))


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
    stage_facts: dict[str, Any] | None = None,
) -> bool:
    """Replace the slide's results and finish the job, in one transaction. False if not stored
    (job cancelled or already finished by another delivery). ``stage_facts`` are recorded for the
    stage that stores (e.g. its seconds)."""
    with transaction(factory) as s:
        job = _live_job(s, job_id)
        if job is None:
            return False
        slide = job.slide
        mv = _model_version(s, analysis.model_name, analysis.model_version, model_sha256)
        replace_result_rows(s, slide, report, cells=analysis.cells, model_version_id=mv.id)
        if stage_facts and job.stage:
            _record_stage(job, job.stage, **stage_facts)
        job.state = "succeeded"
        job.progress = 1.0
        job.finished_at = utcnow()
        job.error = None
        return True
