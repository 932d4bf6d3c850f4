"""The stage tasks: thin, idempotent, each taking only a job id (the work is in ``workers.stages``).

Each task runs its stage (recording a heartbeat on the job every ``heartbeat_s``) and, when the
stage is done, publishes the next stage's message, written to the outbox in the transaction that
ended the stage, before its own message is acknowledged (late ack): a worker that dies at any point
leaves the message to be delivered again (or its job to the reconciler), and the stages' idempotence
keeps the result single. The database engine (and, on classify workers, the model) is created once per worker
process. Database outages are retried without limit (the job stays as it was); a stage that crashes
(or meets data that cannot be decoded, which may be a passing storage fault) is retried up to
``task_max_retries`` times, then its job ends ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from hematovision.core.settings import Settings
from hematovision.service.queueing import CLASSIFY, PREPARE, REPORT, TASK_NAMES

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _session_factory(settings_json: str) -> sessionmaker[Session]:
    from hematovision.store.db import make_engine, make_session_factory

    return make_session_factory(make_engine(Settings.model_validate_json(settings_json)))


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """The worker process's one session factory (one engine) for these settings."""
    return _session_factory(settings.model_dump_json())


def _run_stage(task: Any, stage: str, job_id: str, work: Callable[[Settings, Any], Any]) -> str:
    from hematovision.service.metrics import STAGE_OUTCOMES, STAGE_SECONDS
    from workers.job_store import heartbeat, mark_failed
    from workers.stages import PermanentError, discard

    settings: Settings = task.app.conf.hv_settings
    factory = session_factory(settings)
    ids = {"job_id": job_id, "stage": stage}
    started = time.perf_counter()
    try:
        with heartbeat(factory, job_id, settings.heartbeat_s):
            outcome = work(settings, factory)
        if outcome.outbox_id is not None:
            _publish_next(task.app, factory, outcome.outbox_id, ids)
    except OperationalError as exc:  # database away: retry, the job stays as it was
        STAGE_OUTCOMES.labels(stage, "retry_db").inc()
        log.warning("job %s %s: database unavailable (%s); retrying", job_id, stage, exc.__class__.__name__, extra=ids)
        raise task.retry(exc=exc, countdown=min(60, 5 * (task.request.retries + 1))) from None
    except Exception as exc:  # the stage crashed or could not read this slide
        retries = task.request.retries
        final = isinstance(exc, PermanentError) or retries >= settings.task_max_retries
        reason = (
            str(exc)
            if exc.__class__.__name__ in ("SlideError", "PermanentError")
            else f"{exc.__class__.__name__}: {exc}"
        )
        mark_failed(factory, job_id, f"{stage}: {reason}", final=final)
        STAGE_OUTCOMES.labels(stage, "failed" if final else "retry").inc()
        log.exception("job %s %s failed (attempt %d)", job_id, stage, retries + 1, extra=ids)
        if final:
            discard(settings, job_id)
            return "failed"
        raise task.retry(exc=exc, countdown=2 * (retries + 1)) from None
    STAGE_OUTCOMES.labels(stage, outcome.state).inc()
    STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)
    log.info(
        "job %s %s: %s",
        job_id,
        stage,
        outcome.state,
        extra=ids | ({"slide_id": outcome.slide_id} if outcome.slide_id else {}),
    )
    return outcome.state


def _publish_next(app: Any, factory: sessionmaker[Session], outbox_id: int, ids: dict[str, str]) -> None:
    """Publish the next stage's message (already committed in the outbox) before this message is
    acknowledged. A broker that is away now does not fail the stage: the row stays unsent and the
    dispatchers (this worker's, the API's) publish it when the broker is back."""
    from hematovision.service.outbox import dispatch

    result = dispatch(factory, app, ids=[outbox_id])
    if result.error is not None:
        log.warning("next stage not published yet (%s); it stays in the outbox", result.error, extra=ids)


@shared_task(bind=True, name=TASK_NAMES[PREPARE], max_retries=None, acks_late=True)
def prepare_slide(self: Task, job_id: str) -> str:
    from workers.stages import run_prepare

    return _run_stage(self, PREPARE, job_id, lambda settings, factory: run_prepare(settings, factory, job_id))


def _classifier(settings: Settings, factory: sessionmaker[Session], job_id: str) -> Any:
    """The classifier of the model the slide was assigned when it was prepared (cached by its
    SHA-256), else the configured one (slides prepared before the registry)."""
    from hemato_model.classifier import load_classifier
    from workers.model_cache import classifier_for
    from workers.stages import slide_model

    assigned = slide_model(settings, factory, job_id)
    if assigned is None or assigned.sha256 is None:
        return load_classifier(settings.model_dir)
    return classifier_for(assigned.model_dir, assigned.sha256)


@shared_task(bind=True, name=TASK_NAMES[CLASSIFY], max_retries=None, acks_late=True)
def classify_slide(self: Task, job_id: str) -> str:
    from workers.stages import run_classify

    return _run_stage(
        self,
        CLASSIFY,
        job_id,
        lambda settings, factory: run_classify(settings, factory, _classifier(settings, factory, job_id), job_id),
    )


@shared_task(bind=True, name=TASK_NAMES[REPORT], max_retries=None, acks_late=True)
def report_slide(self: Task, job_id: str) -> str:
    from workers.stages import run_report

    return _run_stage(self, REPORT, job_id, lambda settings, factory: run_report(settings, factory, job_id))
