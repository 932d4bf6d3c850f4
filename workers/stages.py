"""The three stages of a slide job as plain functions; ``workers.tasks`` wraps each in a thin task.

``run_prepare`` (CPU)   open the slide, find its cells, write the white-cell crops;
``run_classify`` (GPU)  label the crops with the classifier;
``run_report`` (CPU)    differential, flags and report; store everything in one transaction.

A stage hands its output to the next through the job's folder under ``settings.stage_work_dir``
(shared by all workers, like the slides themselves; format in :mod:`hemato_model.handoff`). Every
stage is idempotent: its output is put in place atomically, a re-delivered stage whose output
already exists does not compute it again, the result is stored once (``store_analysis`` replaces,
never adds), and a stage of a job that has ended does nothing but remove the job's folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from hematovision.core.settings import Settings
from hematovision.service.queueing import CLASSIFY, NEXT_STAGE, PREPARE, REPORT
from hematovision.store.models import utcnow
from workers.job_store import (
    AssignedModel,
    assign_model,
    assigned_model,
    claim_stage,
    finish_stage,
    job_state,
    set_progress,
    store_analysis,
)

log = logging.getLogger(__name__)

#: The share of a job's progress bar at the end of each stage.
PROGRESS_AT_END = {PREPARE: 0.85, CLASSIFY: 0.97, REPORT: 1.0}


class PermanentError(Exception):
    """Retrying cannot help (e.g. the classifier does not match the crops): the job fails now."""


@dataclass
class Outcome:
    """What a stage did: ``state`` is ``done`` (``next_stage`` is queued through the outbox row
    ``outbox_id``), ``succeeded``, ``skipped`` (the job had ended) or ``cancelled``."""

    state: str
    next_stage: str | None = None
    priority: int = 5
    slide_id: str | None = None
    #: The outbox row of the next stage's message (written with the stage's end), to publish now.
    outbox_id: int | None = None


def job_folder(settings: Settings, job_id: str) -> Path:
    return settings.stage_work_dir / job_id


def discard(settings: Settings, job_id: str) -> None:
    """Remove a job's hand-over folder (after its result is stored, or when the job ended)."""
    shutil.rmtree(job_folder(settings, job_id), ignore_errors=True)


def sweep_work_dir(settings: Settings, factory: sessionmaker[Session]) -> int:
    """Remove the hand-over folders of jobs that have ended or no longer exist (left behind only when
    a stage's message was lost); returns how many. Workers call it when they start."""
    from sqlalchemy import select

    from hematovision.store.models import FINAL_STATES, Job

    root = settings.stage_work_dir
    folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if not folders:
        return 0
    with factory() as s:
        live = set(
            s.scalars(select(Job.id).where(Job.id.in_([p.name for p in folders]), Job.state.not_in(FINAL_STATES)))
        )
    stale = [p for p in folders if p.name not in live]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def _prepared_dir(settings: Settings, job_id: str) -> Path:
    return job_folder(settings, job_id) / "prepared"


def _publish(tmp: Path, final: Path) -> None:
    """Put a finished folder in place in one rename; a duplicate delivery that finished first wins."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class _Progress(Protocol):
    """A stage's progress callback: fraction of the stage done, optional message (unused)."""

    def __call__(self, fraction: float, _message: str = "", /) -> None: ...


def _progress_fn(factory: sessionmaker[Session], job_id: str, start: float, end: float) -> _Progress:
    last = [0.0]

    def progress(fraction: float, _message: str = "", /) -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 or fraction >= 0.99:
            last[0] = now
            set_progress(factory, job_id, start + (end - start) * fraction)

    return progress


def _ended(outcome_state: str, settings: Settings, job_id: str) -> Outcome:
    discard(settings, job_id)
    return Outcome(outcome_state)


def _assign_model(settings: Settings, factory: sessionmaker[Session], job_id: str) -> AssignedModel | None:
    """The model the slide is analysed with (the promoted one when it is prepared; see
    :func:`workers.job_store.assign_model`); a model missing on this machine fails the job."""
    from hematovision.service.model_registry import RegistryError

    try:
        return assign_model(factory, job_id, settings.model_dir)
    except RegistryError as exc:
        raise PermanentError(exc.message) from None


def run_prepare(settings: Settings, factory: sessionmaker[Session], job_id: str) -> Outcome:
    """Find the slide's cells and write the white-cell crops for the classify stage."""
    from hemato_model.classifier import read_model_spec
    from hemato_model.handoff import CropSpool, write_prepared
    from hemato_model.pipeline import AnalysisCancelled, prepare_slide
    from hemato_model.pipeline_params import PipelineParams
    from hemato_model.rbc.morphology import load_red_cell_model
    from hematovision.core.slides import open_slide

    ticket = claim_stage(factory, job_id, PREPARE)
    if ticket is None:
        return _ended("skipped", settings, job_id)
    final = _prepared_dir(settings, job_id)
    facts: dict[str, Any] = {}
    if not (final / "meta.json").exists():
        t0 = time.perf_counter()
        assigned = _assign_model(settings, factory, job_id)
        if assigned is None:
            return _ended("skipped", settings, job_id)
        spec = read_model_spec(assigned.model_dir)
        if (spec.name, spec.version) != (assigned.name, assigned.version):
            raise PermanentError(
                f"{assigned.model_dir} now holds {spec.name} {spec.version}, not the registered "
                f"{assigned.name} {assigned.version}: a registered model directory must not be changed"
            )
        # red-cell morphology runs here, in prepare (CPU): the fields are in memory here, and the
        # classify stage's crop handoff stays the white cells' alone
        rbc_model, rbc_off = load_red_cell_model(settings.rbc_model_dir if settings.rbc_morphology else None)
        tmp = job_folder(settings, job_id) / f"prepare.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            spool = CropSpool(tmp)
            params = PipelineParams(
                target_wbc=settings.target_wbc,
                full_count=settings.full_count,
                census=ticket.census,
                platelet_method=settings.platelet_detector,
            )
            with open_slide(ticket.path, mpp=ticket.mpp, default_mpp=settings.default_mpp) as slide:
                analysis = prepare_slide(
                    slide,
                    spec,
                    spool,
                    params,
                    progress=_progress_fn(factory, job_id, 0.0, PROGRESS_AT_END[PREPARE]),
                    should_stop=lambda: job_state(factory, job_id) == "cancelled",
                    rbc_classifier=rbc_model or rbc_off,
                )
            write_prepared(tmp, analysis, spool.cells, spec)
            _publish(tmp, final)
        except AnalysisCancelled:
            return _ended("cancelled", settings, job_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        counts = analysis.counts()
        facts = {
            "seconds": round(time.perf_counter() - t0, 3),
            "wbc": counts["wbc"],
            "rbc": counts["rbc"],
            "platelets": counts["platelets"],
        }
    outbox_id = finish_stage(factory, job_id, PREPARE, CLASSIFY, PROGRESS_AT_END[PREPARE], **facts)
    if outbox_id is None:
        return _ended("cancelled", settings, job_id)
    return Outcome("done", CLASSIFY, ticket.priority, ticket.slide_id, outbox_id)


def run_classify(settings: Settings, factory: sessionmaker[Session], classifier: Any, job_id: str) -> Outcome:
    """Label the prepared crops (``classifier``: a loaded :class:`hemato_model.classifier.Classifier`)."""
    from hemato_model.handoff import read_labels, read_prepared, write_labels
    from hemato_model.quality import model_evidence
    from hematovision.service.metrics import CELLS_CLASSIFIED, CLASSIFY_SECONDS

    ticket = claim_stage(factory, job_id, CLASSIFY)
    if ticket is None:
        return _ended("skipped", settings, job_id)
    folder = _prepared_dir(settings, job_id)
    facts: dict[str, Any] = {}
    if read_labels(folder) is None:
        prepared = read_prepared(folder)
        m = prepared.model
        if (float(m["crop_um"]), int(m["input_px"])) != (classifier.crop_um, classifier.input_px):
            raise PermanentError(
                f"the crops were cut for {m['name']} {m['version']} ({m['crop_um']} µm, {m['input_px']} px) "
                f"but this worker's classifier {classifier.name} {classifier.version} takes "
                f"{classifier.crop_um} µm, {classifier.input_px} px: configure the same model directory "
                "(HEMATOVISION_MODEL_DIR) on every worker"
            )
        progress = _progress_fn(factory, job_id, PROGRESS_AT_END[PREPARE], PROGRESS_AT_END[CLASSIFY])
        total = max(1, len(prepared.crop_cells))
        labels: list[tuple[str, float]] = []
        energies: list[float | None] = []
        scored = getattr(classifier, "classify_scored", None)
        seconds = 0.0
        for chunk in prepared.crop_chunks():
            if job_state(factory, job_id) == "cancelled":
                return _ended("cancelled", settings, job_id)
            t = time.perf_counter()
            if scored is not None:
                got, energy = scored(chunk, mpp=prepared.analysis.mpp)
            else:
                got, energy = classifier.classify(chunk), [None] * len(chunk)
            labels.extend(got)
            energies.extend(energy)
            seconds += time.perf_counter() - t
            progress(len(labels) / total)
        write_labels(
            folder,
            labels,
            {
                "name": classifier.name,
                "version": classifier.version,
                "classes": list(classifier.classes),
                "sha256": getattr(classifier, "meta", {}).get("sha256"),
                **model_evidence(classifier),
            },
            energies,
        )
        CELLS_CLASSIFIED.inc(len(labels))
        CLASSIFY_SECONDS.inc(seconds)
        facts = {
            "seconds": round(seconds, 3),
            "cells": len(labels),
            "cells_per_s": round(len(labels) / seconds, 1) if seconds > 0 else None,
        }
    outbox_id = finish_stage(factory, job_id, CLASSIFY, REPORT, PROGRESS_AT_END[CLASSIFY], **facts)
    if outbox_id is None:
        return _ended("cancelled", settings, job_id)
    return Outcome("done", REPORT, ticket.priority, ticket.slide_id, outbox_id)


def slide_model(settings: Settings, factory: sessionmaker[Session], job_id: str) -> AssignedModel | None:
    """The model the job's slide was assigned when it was prepared (None: prepared before the
    registry, the configured model is used); a model missing on this machine fails the job."""
    from hematovision.service.model_registry import RegistryError

    try:
        return assigned_model(factory, job_id, settings.model_dir)
    except RegistryError as exc:
        raise PermanentError(exc.message) from None


def _model_dir_used(settings: Settings, factory: sessionmaker[Session], job_id: str) -> Path:
    """The directory of the model that labelled the slide (its card states the report's limits)."""
    assigned = slide_model(settings, factory, job_id)
    return assigned.model_dir if assigned is not None else settings.model_dir


def run_report(settings: Settings, factory: sessionmaker[Session], job_id: str) -> Outcome:
    """Build the slide's report from cells and labels and store the whole result at once."""
    from hemato_model.handoff import HandoffError, apply_labels, read_labels, read_prepared
    from hematovision.core.flags import effective_rules
    from hematovision.service.metrics import SLIDE_SECONDS
    from hematovision.service.slide_results import build_report, model_card_limits

    ticket = claim_stage(factory, job_id, REPORT)
    if ticket is None:
        return _ended("skipped", settings, job_id)
    t0 = time.perf_counter()
    folder = _prepared_dir(settings, job_id)
    prepared = read_prepared(folder)
    labels = read_labels(folder)
    if labels is None:
        raise HandoffError(f"{folder}: the classify stage has not written its labels")
    analysis = apply_labels(prepared, labels)
    rules = effective_rules(settings)
    report = build_report(
        analysis,
        slide_id=ticket.slide_id,
        source=os.path.basename(ticket.path),
        patient=ticket.patient,
        rules=rules,
        limits=model_card_limits(_model_dir_used(settings, factory, job_id)),
    )
    stored = store_analysis(
        factory,
        job_id,
        analysis,
        report,
        labels["model"].get("sha256"),
        stage_facts={"seconds": round(time.perf_counter() - t0, 3)},
    )
    discard(settings, job_id)
    if not stored:
        return Outcome(job_state(factory, job_id) or "skipped", slide_id=ticket.slide_id)
    SLIDE_SECONDS.observe((utcnow() - ticket.started_at).total_seconds())
    log.info(
        "job %s: stored %d cells", job_id, len(analysis.cells), extra={"job_id": job_id, "slide_id": ticket.slide_id}
    )
    return Outcome("succeeded", NEXT_STAGE[REPORT], slide_id=ticket.slide_id)
