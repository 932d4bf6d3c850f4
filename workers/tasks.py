"""The slide task: thin, idempotent, taking only a job id.

The model and the database engine are created once per worker process (lazily, on the first task).
Database outages are retried without limit (the job stays as it was); a slide that fails the
pipeline (a crash, or data that cannot be decoded, which may be a passing storage fault) is retried up
to ``task_max_retries`` times, then its job ends ``failed`` with the reason. Intake already rejected
files that cannot be opened at all.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

from celery import shared_task
from sqlalchemy.exc import OperationalError

from hematovision.queueing import PROCESS_SLIDE
from hematovision.settings import Settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _session_factory(settings_json: str):  # type: ignore[no-untyped-def]
    from hematovision.db import make_engine, make_session_factory

    return make_session_factory(make_engine(Settings.model_validate_json(settings_json)))


def _settings(task: Any) -> Settings:
    return task.app.conf.hv_settings


@shared_task(bind=True, name=PROCESS_SLIDE, max_retries=None, acks_late=True)
def process_slide(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    from hemato_model.classifier import load_classifier
    from workers.processing import mark_failed, run_job

    from hematovision.observability import SLIDE_OUTCOMES, SLIDE_SECONDS

    settings = _settings(self)
    factory = _session_factory(settings.model_dump_json())
    started = time.perf_counter()
    try:
        classifier = load_classifier(settings.model_dir)
        state = run_job(settings, factory, classifier, job_id)
        SLIDE_OUTCOMES.labels(state).inc()
        if state == "succeeded":
            SLIDE_SECONDS.observe(time.perf_counter() - started)
        log.info("job %s: %s", job_id, state, extra={"job_id": job_id})
        return state
    except OperationalError as exc:  # database away: retry, the job stays as it was
        SLIDE_OUTCOMES.labels("retry_db").inc()
        log.warning("job %s: database unavailable (%s); retrying", job_id, exc.__class__.__name__,
                    extra={"job_id": job_id})
        raise self.retry(exc=exc, countdown=min(60, 5 * (self.request.retries + 1)))
    except Exception as exc:  # the pipeline crashed or could not read this slide
        retries = self.request.retries
        final = retries >= settings.task_max_retries
        reason = str(exc) if exc.__class__.__name__ == "SlideError" else f"{exc.__class__.__name__}: {exc}"
        mark_failed(factory, job_id, reason, final=final)
        SLIDE_OUTCOMES.labels("failed" if final else "retry").inc()
        log.exception("job %s failed (attempt %d)", job_id, retries + 1, extra={"job_id": job_id})
        if final:
            return "failed"
        raise self.retry(exc=exc, countdown=2 * (retries + 1))
