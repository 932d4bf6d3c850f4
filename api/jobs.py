"""Jobs: one per slide; poll state and progress, cancel."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from api.audit import commit_audited
from api.context import db
from api.errors import ApiError
from api.serializers import job_json
from hematovision.store.models import FINAL_STATES, Job, utcnow

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")


@bp.get("/<hexid:job_id>")
def get_job(job_id: str) -> ResponseReturnValue:
    job = db().get(Job, job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return jsonify(job_json(job))


@bp.post("/<hexid:job_id>/cancel")
def cancel_job(job_id: str) -> ResponseReturnValue:
    """Cancel a queued or running job. A running worker sees the state and stops at its next check;
    a queued message is skipped when it is delivered."""
    session = db()
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    if job.state in FINAL_STATES:
        raise ApiError(409, "already_final", f"job {job_id} is already {job.state}")
    job.state = "cancelled"
    job.finished_at = utcnow()
    commit_audited(session, slide_id=job.slide_id, job_id=job.id)
    return jsonify(job_json(job))
