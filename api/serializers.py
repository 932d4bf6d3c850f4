"""JSON shapes of the API's resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hematovision.core.filenames import redact_paths
from hematovision.service.submission import job_options
from hematovision.store.models import Batch, Job


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat(timespec="seconds") + "Z"


def job_json(job: Job) -> dict[str, Any]:
    duration = None
    if job.started_at and job.finished_at:
        duration = round((job.finished_at - job.started_at).total_seconds(), 3)
    return {
        "id": job.id,
        "job_id": job.id,
        "slide_id": job.slide_id,
        "batch_id": job.batch_id,
        "filename": job.slide.filename,
        "state": job.state,
        "progress": round(job.progress, 3),
        "stage": job.stage,
        "stages": job.stages or {},
        "census": bool(job_options(job).get("census")),
        "attempts": job.attempts,
        "error": None if job.error is None else redact_paths(job.error),  # the row keeps the full text
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "duration_s": duration,
        "report_url": f"/api/v1/slides/{job.slide_id}/report" if job.state == "succeeded" else None,
    }


def batch_json(batch: Batch, *, with_jobs: bool = False) -> dict[str, Any]:
    jobs = [s.job for s in batch.slides if s.job is not None]
    states: dict[str, int] = {}
    for j in jobs:
        states[j.state] = states.get(j.state, 0) + 1
    done = all(j.state in ("succeeded", "failed", "cancelled") for j in jobs)
    body: dict[str, Any] = {
        "id": batch.id,
        "batch_id": batch.id,
        "name": batch.name,
        "priority": batch.priority,
        "created_at": iso(batch.created_at),
        "state": "finished" if done else ("running" if states.get("running") or states.get("succeeded") else "queued"),
        "progress": round(sum(j.progress for j in jobs) / len(jobs), 3) if jobs else 0.0,
        "states": states,
        "job_ids": [j.id for j in jobs],
    }
    if with_jobs:
        body["jobs"] = [job_json(j) for j in jobs]
    return body
