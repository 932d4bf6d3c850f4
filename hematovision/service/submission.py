"""Batch submission: the rows of one accepted batch (Batch → Slide → Job), written in one place.

The API's intake, the tests' job-row factory and the benchmarks create batches through
:func:`add_batch`, so every slide gets its job and every job its batch the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from hematovision.store.models import Batch, Job, Slide, new_id


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
    wbc_per_l: float | None = None


def add_batch(
    session: Session,
    slides: Sequence[NewSlide],
    *,
    name: str | None = None,
    priority: int = 5,
    idempotency_key: str | None = None,
    batch_id: str | None = None,
) -> tuple[Batch, list[Job]]:
    """Add a batch with one slide and one queued job per entry (flushed, not committed).

    ``batch_id`` may be chosen beforehand (the API files uploads under the batch's id before the
    rows exist). The caller commits, then queues the jobs.
    """
    batch = Batch(id=batch_id or new_id(), name=name, priority=priority, idempotency_key=idempotency_key)
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
            wbc_per_l=entry.wbc_per_l,
        )
        session.add(slide)
        job = Job(id=new_id(), slide_id=slide.id, batch_id=batch.id)
        session.add(job)
        jobs.append(job)
    session.flush()
    return batch, jobs
