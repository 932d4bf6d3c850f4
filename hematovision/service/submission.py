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
) -> tuple[Batch, list[Job]]:
    """Add a batch with one slide and one queued job per entry (flushed, not committed).

    With ``queue`` (the default) each job also gets its outbox row (the message of its first
    stage), in the same transaction: once the caller commits, the slides WILL be queued, whether
    the broker is reachable now or only later (:mod:`hematovision.service.outbox` publishes them).
    ``batch_id`` may be chosen beforehand (the API files uploads under the batch's id before the
    rows exist). An ``idempotency_key`` belongs to ``idempotency_owner`` (the API key that used it).
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
        job = Job(id=new_id(), slide_id=slide.id, batch_id=batch.id)
        session.add(job)
        jobs.append(job)
    session.flush()
    if queue:
        for job in jobs:
            add_message(session, job.id, PREPARE, priority)
    return batch, jobs


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
