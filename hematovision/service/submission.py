"""Batch submission: the rows of one accepted batch (Batch → Slide → Job), written in one place.

The API's intake, the tests' job-row factory and the benchmarks create batches through
:func:`add_batch`, so every slide gets its job and every job its batch the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from hematovision.core.patient import OrderInfo
from hematovision.service.outbox import add_message
from hematovision.service.queueing import PREPARE
from hematovision.store.models import Batch, Job, OutboxMessage, Slide, new_id


@dataclass(frozen=True)
class NewSlide:
    """One slide of a submission, validated and in its final place."""

    filename: str
    path: str
    mpp: float | None = None
    mpp_source: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    order: OrderInfo | None = None


#: The slide columns that hold its order (the fields of :class:`OrderInfo`).
ORDER_COLUMNS = (
    "accession",
    "patient_id",
    "assigning_authority",
    "birth_date",
    "age_years",
    "sex",
    "collected_at",
    "wbc_10e9_per_l",
)


def order_of(slide: Slide) -> OrderInfo:
    """The slide's order and patient as stored."""
    return OrderInfo(**{k: getattr(slide, k) for k in ORDER_COLUMNS})


def set_order(slide: Slide, order: OrderInfo) -> None:
    """Store ``order`` on the slide's columns (the caller audits and commits)."""
    for k in ORDER_COLUMNS:
        setattr(slide, k, getattr(order, k))


#: Analysis options of a job, kept in the record of its first stage (``Job.stages["prepare"]``,
#: which claims and re-queues merge into, never replace), so no column is needed: ``census``
#: (bool) asks for a whole-smear census (:attr:`hemato_model.pipeline_params.PipelineParams.census`).
JOB_OPTIONS = ("census",)


def job_stages(*, census: bool = False) -> dict[str, Any] | None:
    """The initial ``Job.stages`` of a new job with these options (None: no options)."""
    return {PREPARE: {"census": True}} if census else None


def job_options(job: Job) -> dict[str, Any]:
    """The options a job was queued with (see :data:`JOB_OPTIONS`)."""
    record = (job.stages or {}).get(PREPARE) or {}
    return {k: record[k] for k in JOB_OPTIONS if k in record}


def add_batch(
    session: Session,
    slides: Sequence[NewSlide],
    *,
    name: str | None = None,
    priority: int = 5,
    idempotency_key: str | None = None,
    idempotency_owner: str | None = None,
    request_sha256: str | None = None,
    batch_id: str | None = None,
    queue: bool = True,
    census: bool = False,
) -> tuple[Batch, list[Job]]:
    """Add a batch with one slide and one queued job per entry (flushed, not committed).

    With ``queue`` (the default) each job also gets its outbox row (the message of its first
    stage), in the same transaction: once the caller commits, the slides WILL be queued, whether
    the broker is reachable now or only later (:mod:`hematovision.service.outbox` publishes them).
    ``batch_id`` may be chosen beforehand (the API files uploads under the batch's id before the
    rows exist). An ``idempotency_key`` belongs to ``idempotency_owner`` (the API key that used it).
    ``census`` queues every slide for a whole-smear census (:func:`job_stages`).
    """
    batch = Batch(
        id=batch_id or new_id(),
        name=name,
        priority=priority,
        idempotency_key=idempotency_key,
        idempotency_owner=idempotency_owner if idempotency_key else None,
        request_sha256=request_sha256 if idempotency_key else None,
    )
    session.add(batch)
    jobs: list[Job] = []
    for entry in slides:
        slide = Slide(
            id=new_id(),
            batch_id=batch.id,
            filename=entry.filename,
            path=entry.path,
            format=entry.format,
            mpp=entry.mpp,
            mpp_source=entry.mpp_source,
            width=entry.width,
            height=entry.height,
        )
        if entry.order is not None:
            set_order(slide, entry.order)
        session.add(slide)
        job = Job(id=new_id(), slide_id=slide.id, batch_id=batch.id, stages=job_stages(census=census))
        session.add(job)
        jobs.append(job)
    session.flush()
    if queue:
        for job in jobs:
            add_message(session, job.id, PREPARE, priority)
    return batch, jobs


class RequeueRefused(Exception):
    """The slide cannot be queued again now; ``code`` says why (``signed_off``, ``job_active``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def requeue_slide(session: Session, slide: Slide, *, census: bool = True) -> Job:
    """Queue ``slide`` again as a new job (by default a whole-smear census), flushed, not committed.

    A slide has one job (``jobs.slide_id`` is unique): the ended job's row and its sent outbox rows
    give way to the new job, whose first stage's message is written in the same transaction. The
    slide's results (cells, differential, flags, report) stay as they are until the new job stores
    its own in one transaction (:func:`workers.job_store.store_analysis`); reclassifications of the
    old cells are replaced with them (the audit log keeps them). Refused while the slide's job is
    still queued or running, and once the slide is signed off (its results are read-only).
    """
    from sqlalchemy import delete

    from hematovision.store.models import FINAL_STATES

    if slide.verified_at is not None:
        raise RequeueRefused("signed_off", "the slide is signed off: its results are read-only")
    old = slide.job
    if old is not None and old.state not in FINAL_STATES:
        raise RequeueRefused("job_active", f"the slide's job is still {old.state}: wait for it or cancel it first")
    if old is not None:
        session.execute(delete(OutboxMessage).where(OutboxMessage.job_id == old.id))
        session.delete(old)
        session.flush()  # the old row is gone before the new one takes its slide
    job = Job(id=new_id(), slide_id=slide.id, batch_id=slide.batch_id, stages=job_stages(census=census))
    session.add(job)
    session.flush()
    session.expire(slide, ["job"])
    add_message(session, job.id, PREPARE, slide.batch.priority)
    return job


def outbox_ids(session: Session, jobs: Sequence[Job]) -> list[int]:
    """The unsent outbox rows of these jobs (what to publish after the commit)."""
    from sqlalchemy import select

    if not jobs:
        return []
    q = select(OutboxMessage.id).where(OutboxMessage.job_id.in_([j.id for j in jobs]), OutboxMessage.sent_at.is_(None))
    return list(session.scalars(q))


def upload_storage(upload_dir: Path) -> dict[str, Any]:
    """Whether uploads can be stored now: ``{"writable": bool, "free_mb": int | None}`` (a file is
    created and removed in the folder; free space is what an unprivileged writer may use)."""
    import tempfile

    writable = False
    try:
        upload_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".probe-", dir=upload_dir)
        os.close(fd)
        os.unlink(name)
        writable = True
    except OSError:
        pass
    try:
        st = os.statvfs(upload_dir)
        free_mb: int | None = int(st.f_bavail * st.f_frsize // 2**20)
    except OSError:
        free_mb = None
    return {"writable": writable, "free_mb": free_mb}
