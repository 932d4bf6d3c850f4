"""``/api/v1/queues``: the load on each stage, for people and for autoscalers (KEDA's metrics-api
scaler reads ``stages.<stage>.demand``: slides waiting in the stage's queue plus slides running in it)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from api.context import db
from hematovision.service.metrics import queue_depths
from hematovision.service.queueing import stage_queues
from hematovision.store.models import Job

bp = Blueprint("queues", __name__, url_prefix="/api/v1")


@bp.get("/queues")
def queues() -> ResponseReturnValue:
    settings = current_app.extensions["hv_settings"]
    names = stage_queues(settings)
    waiting = queue_depths(settings)
    running = dict(
        db().execute(select(Job.stage, func.count()).where(Job.state == "running").group_by(Job.stage)).all()
    )
    stages = {}
    for stage, queue in names.items():
        w, r = waiting[stage], int(running.get(stage, 0))
        stages[stage] = {"queue": queue, "waiting": w, "running": r, "demand": None if w is None else w + r}
    return jsonify({"broker_reachable": all(v is not None for v in waiting.values()), "stages": stages})
