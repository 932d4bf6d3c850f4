"""The reconciler: jobs the database shows queued or running, checked against what the broker holds
and against the workers' heartbeats; and the operators' re-queue and fail.

Two kinds of job would otherwise wait for ever:

- a job **running** whose worker died (killed, out of memory, machine lost): its stage stops
  recording heartbeats. Redis would re-deliver the message after the visibility timeout (hours);
  the filesystem queue never would. A running job whose heartbeat is older than
  ``settings.stale_after_s`` is put back to ``queued`` in the same stage, with a new outbox
  message; the stage restarts idempotently.
- a job **queued** whose message is gone (a Redis restarted without persistence, a message lost
  between two stages): no unsent outbox row, its last message (or activity) older than
  ``stale_after_s``, and no message for it in the broker's queues nor delivered-unacknowledged.
  It gets a new outbox message. When the broker cannot be read, nothing is concluded.

Every worker runs :func:`reconcile` when it starts and every ``reconcile_interval_s``;
``hematovision jobs reconcile`` runs it on demand. Re-queues are idempotent (a job already
re-queued has an unsent outbox row or a fresh heartbeat, and is left alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from hematovision.core.settings import Settings
from hematovision.service.outbox import add_message
from hematovision.service.queueing import PREPARE, STAGES, pending_job_ids
from hematovision.store.db import transaction
from hematovision.store.models import FINAL_STATES, Batch, Job, OutboxMessage, utcnow

log = logging.getLogger(__name__)


class JobActionError(ValueError):
    """An operator's action that cannot be carried out (unknown job, wrong state)."""


@dataclass
class ReconcileResult:
    """Job ids re-queued because their worker stopped (``stale``) or their message was lost
    (``lost``); ``broker_checked`` is False when the broker could not be read."""

    stale: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    broker_checked: bool = True


def _last_activity(job: Job) -> datetime:
    return job.heartbeat_at or job.started_at or job.created_at


def _unsent_exists(job_id: Any) -> Any:
    return exists().where(OutboxMessage.job_id == job_id, OutboxMessage.sent_at.is_(None))


def _sent_since(job_id: Any, cutoff: datetime) -> Any:
    return exists().where(OutboxMessage.job_id == job_id, OutboxMessage.sent_at >= cutoff)


def requeue(session: Session, job: Job, stage: str, note: str) -> int:
    """Put ``job`` back to ``queued`` in ``stage`` and add the stage's outbox message; returns the
    outbox row id. The caller holds the job row (locked) and commits."""
    priority = session.execute(select(Batch.priority).where(Batch.id == job.batch_id)).scalar_one()
    stages = dict(job.stages or {})
    record = dict(stages.get(stage, {}))
    record["requeued"] = int(record.get("requeued", 0)) + 1
    stages[stage] = record
    job.stages = stages
    job.stage = stage
    job.state = "queued"
    job.heartbeat_at = utcnow()
    job.finished_at = None
    log.warning("job %s re-queued in %s: %s", job.id, stage, note, extra={"job_id": job.id, "stage": stage})
    return add_message(session, job.id, stage, priority).id


def reconcile(factory: sessionmaker[Session], settings: Settings, *, now: datetime | None = None) -> ReconcileResult:
    """Re-queue stale running jobs and queued jobs whose message is lost (see the module doc)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.stale_after_s)
    result = ReconcileResult()
    with transaction(factory) as s:
        stale = s.scalars(
            select(Job)
            .where(Job.state == "running", func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at) < cutoff)
            .with_for_update(skip_locked=True)
        ).all()
        for job in stale:
            since = _last_activity(job).isoformat(timespec="seconds")
            requeue(s, job, job.stage or PREPARE, f"no heartbeat from worker {job.worker} since {since}Z")
            result.stale.append(job.id)
    with factory() as s:
        candidates = list(
            s.scalars(
                select(Job.id).where(
                    Job.state == "queued",
                    func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at) < cutoff,
                    ~_unsent_exists(Job.id),
                    ~_sent_since(Job.id, cutoff),
                )
            )
        )
    if not candidates:
        return result
    pending = pending_job_ids(settings)
    if pending is None:
        result.broker_checked = False
        log.warning("reconciler: the broker could not be read; %d queued job(s) not checked", len(candidates))
        return result
    missing = [j for j in candidates if j not in pending]
    if not missing:
        return result
    with transaction(factory) as s:
        for job in s.scalars(select(Job).where(Job.id.in_(missing)).with_for_update(skip_locked=True)):
            # Looked at again under the row lock: another reconciler or a worker may have moved it.
            if job.state != "queued" or _last_activity(job) >= cutoff:
                continue
            busy = select(OutboxMessage.id).where(
                OutboxMessage.job_id == job.id, or_(OutboxMessage.sent_at.is_(None), OutboxMessage.sent_at >= cutoff)
            )
            if s.execute(busy.limit(1)).first() is not None:
                continue
            requeue(s, job, job.stage or PREPARE, "its message is not in the broker (lost)")
            result.lost.append(job.id)
    return result


def requeue_job(session: Session, job_id: str, *, actor: str) -> tuple[Job, int]:
    """An operator's re-queue: a queued or running job restarts its current stage; a failed or
    cancelled one restarts from the first stage (its hand-over files are gone). A succeeded job is
    not re-run. Returns the job and its outbox row id (the caller commits, then publishes)."""
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise JobActionError(f"no job {job_id}")
    if job.state == "succeeded":
        raise JobActionError(f"job {job_id} has succeeded; its result stands (submit the slide again to re-analyse)")
    if job.state in FINAL_STATES:
        stage, job.progress, job.error = PREPARE, 0.0, None
    else:
        stage = job.stage or PREPARE
    row_id = requeue(session, job, stage, f"by {actor}")
    return job, row_id


def fail_job(session: Session, job_id: str, reason: str, *, actor: str) -> Job:
    """An operator ends a job as failed (a slide that must not be retried). Final jobs are refused."""
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise JobActionError(f"no job {job_id}")
    if job.state in FINAL_STATES:
        raise JobActionError(f"job {job_id} is already {job.state}")
    job.state = "failed"
    job.error = f"failed by an operator ({actor}): {reason}"[:2000]
    job.finished_at = utcnow()
    return job


def stage_load(
    session: Session, settings: Settings, waiting: dict[str, int | None], *, now: datetime | None = None
) -> dict[str, dict[str, Any]]:
    """The load of each stage for ``/api/v1/queues``.

    Per stage: ``waiting`` (messages in the broker), ``running`` (jobs with a fresh heartbeat),
    ``stale`` (running, heartbeat older than ``stale_after_s``: their worker is gone), ``queued``
    (jobs the database shows waiting for the stage), ``stranded`` (jobs no worker holds and no
    message stands for: the stale ones plus the queued ones beyond the messages waiting, e.g.
    accepted while the broker was down or lost by it) and ``demand`` = waiting + running + stranded,
    None when the broker cannot be asked.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=settings.stale_after_s)
    is_stale = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at) < cutoff
    running: dict[tuple[str, bool], int] = {}
    for stage, stale, n in session.execute(
        select(Job.stage, is_stale, func.count()).where(Job.state == "running").group_by(Job.stage, is_stale)
    ):
        key = (stage or PREPARE, bool(stale))
        running[key] = running.get(key, 0) + int(n)
    queued: dict[str, int] = {}
    for stage, n in session.execute(select(Job.stage, func.count()).where(Job.state == "queued").group_by(Job.stage)):
        queued[stage or PREPARE] = queued.get(stage or PREPARE, 0) + int(n)
    out: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        w = waiting.get(stage)
        r, st, q = running.get((stage, False), 0), running.get((stage, True), 0), queued.get(stage, 0)
        stranded = st + max(0, q - (w or 0))
        out[stage] = {
            "waiting": w,
            "running": r,
            "stale": st,
            "queued": q,
            "stranded": stranded,
            "demand": None if w is None else w + r + stranded,
        }
    return out
